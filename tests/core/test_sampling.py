"""`denoisekit sample`: the .npz format, per-image seeds, swapping the sampler."""

from __future__ import annotations

import errno
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from denoisekit.cli import main
from denoisekit.engine import build, run_folder, sampling
from denoisekit.engine.build import build_run, load_trained
from denoisekit.engine.image_files import to_uint8
from denoisekit.engine.loop import train
from denoisekit.engine.sampling import sample_images
from denoisekit.errors import CheckpointError, OutputError
from denoisekit.host.recipe import load_recipe

RECIPE = """
name = "tiny-sample"
[data]
type = "digits"
[backbone]
type = "unet"
in_channels = 1
image_size = 8
channels = 16
channel_mults = [1, 2]
num_res_blocks = 1
attention_resolutions = [4]
groups = 8
num_classes = 10
[schedule]
type = "cosine"
num_timesteps = 50
[sampler]
type = "ddpm"
steps = 5
[train]
steps = 2
batch_size = 8
log_every = 1
[hooks.ema]
decay = 0.5
[hooks.checkpoint]
every = 2
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sample")
    path = folder / "r.toml"
    path.write_text(textwrap.dedent(RECIPE))
    run = build_run(load_recipe(path), out_dir=folder / "run")
    train(run)
    return folder / "run"


def test_npz_format_and_labels(trained, tmp_path, capsys):
    out = tmp_path / "s.npz"
    grid = tmp_path / "g.png"
    status = main(
        [
            "sample",
            str(trained),
            "-n",
            "12",
            "--batch-size",
            "5",
            "--out",
            str(out),
            "--grid",
            str(grid),
            "--trajectory",
            str(tmp_path / "t.gif"),
        ]
    )
    assert status == 0
    with np.load(out) as data:
        images, labels = data["arr_0"], data["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (12, 8, 8, 1)
    assert labels.tolist() == [i % 10 for i in range(12)]
    assert grid.stat().st_size > 0
    from PIL import Image

    with Image.open(tmp_path / "t.gif") as gif:
        assert gif.n_frames == 5 + 1  # one x0 estimate per step, then the result


def test_image_i_does_not_depend_on_batch_size(trained):
    run = load_trained(trained)
    a, _ = sample_images(run, 6, seed=3, batch_size=6)
    b, _ = sample_images(run, 6, seed=3, batch_size=4)
    c, _ = sample_images(run, 6, seed=4, batch_size=6)
    # Bit for bit where the kernels split work the same way; with several threads, oneDNN's
    # CPU kernels may split a batch of 4 and of 6 differently (3e-8 measured on an AMX CPU
    # with 2 threads, 0 with one), so the claim is equality to float32 rounding.
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not torch.equal(a, c)


def test_uses_ema_weights(trained):
    run = load_trained(trained)
    ema_model = run.sampling_denoiser().model
    assert ema_model is not run.model
    raw = dict(run.model.named_parameters())
    assert any(not torch.equal(p, raw[n]) for n, p in ema_model.named_parameters())


def test_swap_sampler_at_sampling_time(trained, tmp_path):
    ddim = tmp_path / "ddim.npz"
    ddpm = tmp_path / "ddpm.npz"
    assert main(["sample", str(trained), "-n", "4", "--out", str(ddpm)]) == 0
    assert (
        main(
            [
                "sample",
                str(trained),
                "-n",
                "4",
                "--sampler",
                "ddim",
                "--set",
                "sampler.steps=3",
                "--out",
                str(ddim),
            ]
        )
        == 0
    )
    run = load_trained(trained, overrides=["sampler.type=ddim", "sampler.steps=3"])
    assert run.recipe.sampler.type == "ddim" and run.sampler.num_evaluations(50) == 3
    with np.load(ddim) as a, np.load(ddpm) as b:
        assert not np.array_equal(a["arr_0"], b["arr_0"])


def test_uint8_rounding():
    x = torch.tensor([-1.0, -0.5, 0.0, 1.0]).view(1, 1, 1, 4)
    assert to_uint8(x).ravel().tolist() == [0, 64, 128, 255]


def test_missing_checkpoint_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoints/last\.pt"):
        load_trained(tmp_path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["sample", str(bad)]) == 2


EXISTS = "the file exists; pass --overwrite to replace it, or name another"
IN_A_FILE = "{file} is a file, not a folder"
OUTPUT_PROBLEMS = [
    pytest.param(["--out", "folder"], "--out {folder}: is a folder; name a file in it",
                 id="out-is-a-folder"),
    pytest.param(["--out", "file/s.npz"], "--out {file}/s.npz: " + IN_A_FILE,
                 id="out-under-a-file"),
    pytest.param(["--grid", "folder"], "--grid {folder}: is a folder; name a file in it",
                 id="grid-is-a-folder"),
    pytest.param(["--trajectory", "file/t.gif"], "--trajectory {file}/t.gif: " + IN_A_FILE,
                 id="trajectory-under-a-file"),
    pytest.param(["--out", "old.npz"], "--out {old}: " + EXISTS, id="out-exists"),
    pytest.param(["--out", "g.png", "--grid", "g.png"], "--grid {g}: is also --out; name two "
                 "different files", id="grid-is-out"),
]  # fmt: skip


@pytest.mark.parametrize(("flags", "problem"), OUTPUT_PROBLEMS)
def test_sample_outputs_are_checked_before_any_work(
    trained, tmp_path, capsys, monkeypatch, flags, problem
):
    paths = {name: tmp_path / name for name in ("folder", "file", "old.npz", "g.png")}
    paths["folder"].mkdir()
    paths["file"].write_text("a file")
    paths["old.npz"].write_bytes(b"old")

    def no_work(*args, **kwargs):
        raise AssertionError("sampling started")

    monkeypatch.setattr(build, "load_trained", no_work)
    argv = [str(tmp_path / f) if i % 2 else f for i, f in enumerate(flags)]
    assert main(["sample", str(trained), "-n", "2", *argv]) == 2
    names = {"folder": paths["folder"], "file": paths["file"], "old": paths["old.npz"]}
    expected = problem.format(**names, g=paths["g.png"])
    assert capsys.readouterr().err == f"denoisekit: error: {expected}\n"
    assert paths["old.npz"].read_bytes() == b"old"


def test_overwrite_replaces_an_existing_sample_file(trained, tmp_path):
    out = tmp_path / "s.npz"
    out.write_bytes(b"old")
    assert main(["sample", str(trained), "-n", "2", "--out", str(out), "--overwrite"]) == 0
    with np.load(out) as data:
        assert data["arr_0"].shape == (2, 8, 8, 1)


def test_a_failed_grid_write_keeps_the_previous_grid(tmp_path, monkeypatch):
    import torchvision.utils

    grid = tmp_path / "grid.png"
    grid.write_bytes(b"old grid")

    def full_disk(tensor, fp, **kwargs):
        if hasattr(fp, "write"):
            fp.write(b"part")
        else:
            Path(fp).write_bytes(b"part")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torchvision.utils, "save_image", full_disk)
    with pytest.raises(OutputError, match=r"grid\.png: cannot write \(No space left on device\)"):
        sampling.save_grid(grid, torch.zeros(4, 1, 8, 8))
    assert grid.read_bytes() == b"old grid"
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_the_host_draws_x_T_per_image_and_leaves_a_given_one_alone(trained):
    from denoisekit.diffusion import randn

    run = load_trained(trained)
    drawn = run.sample(3, generator=sampling.image_generators(7, 0, 3))
    # x_T is image i's first draw from its generator, which then draws the DDPM noise.
    gens = sampling.image_generators(7, 0, 3)
    x_T = randn((3, *run.image_shape), gens)
    expected = torch.cat(
        [torch.randn(1, *run.image_shape, generator=g) for g in sampling.image_generators(7, 0, 3)]
    )
    assert x_T.dtype == torch.float32 and torch.equal(x_T, expected)
    kept = x_T.clone()
    given = run.sample(3, generator=gens, x_T=x_T)
    assert torch.equal(x_T, kept) and torch.equal(given, drawn)


def test_a_stored_recipe_from_before_a_rename_is_migrated():
    old = {"name": "r", "schedule": {"type": "cosine", "timesteps": 1000}, "seed": 0}
    assert run_folder.migrated(old)["schedule"] == {"type": "cosine", "num_timesteps": 1000}
    both = {"schedule": {"timesteps": 5, "num_timesteps": 7}}  # never overwrite the new key
    assert run_folder.migrated(both)["schedule"] == {"timesteps": 5, "num_timesteps": 7}
    metrics = {"metrics": {"nll": {"timesteps": 4}}, "sampler": {"timesteps": 3}}
    # renamed per kind: the nll metric's option, not a sampler's key of the same name
    assert run_folder.migrated(metrics) == {
        "metrics": {"nll": {"steps": 4}},
        "sampler": {"timesteps": 3},
    }
