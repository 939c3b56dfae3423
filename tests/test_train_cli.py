"""`denoisekit train` end to end: the run folder, SIGTERM on a real process, resume, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from denoisekit import testing
from denoisekit.cli import main
from denoisekit.engine import build

RECIPE = """
name = "e2e"
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
[schedule]
type = "cosine"
num_timesteps = 50
[sampler]
type = "ddim"
steps = 3
[train]
steps = 4
batch_size = 8
log_every = 2
[hooks.ema]
decay = 0.9
[hooks.checkpoint]
every = 2
[hooks.tensorboard]
[hooks.preview]
every = 2
num_images = 4
[hooks.progress]
[hooks.nan-guard]
"""


def write_recipe(folder: Path, text: str = RECIPE) -> Path:
    path = folder / "e2e.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_run_folder_has_every_artefact(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    out = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(out)]) == 0
    assert (out / "recipe.toml").is_file()
    versions = json.loads((out / "versions.json").read_text())
    assert versions["torch"] == torch.__version__
    assert "builtin:unet" in versions["plugins"]
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [2, 4]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "checkpoints" / "last.pt").is_file()
    assert (out / "checkpoints" / "step-00000004.pt").is_file()
    assert sorted(p.name for p in (out / "samples").glob("*.png"))
    assert "trained 4 steps" in capsys.readouterr().out


def test_sigterm_to_a_real_process_then_resume(tmp_path):
    recipe = write_recipe(
        tmp_path,
        RECIPE.replace("steps = 4", "steps = 100000").replace(
            "every = 2\n[hooks.tensorboard]", "every = 1\n[hooks.tensorboard]"
        ),
    )
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "denoisekit", "train", str(recipe), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    last = out / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no checkpoint appeared: {process.communicate()}")
        time.sleep(0.2)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "resume with" in err
    assert "Traceback" not in err
    state = torch.load(last, weights_only=True)
    stopped_at = state["step"]
    assert stopped_at >= 1
    status = main(
        [
            "train",
            str(recipe),
            "--out",
            str(out),
            "--resume",
            "--set",
            f"train.steps={stopped_at + 2}",
        ]
    )
    assert status == 0
    assert torch.load(last, weights_only=True)["step"] == stopped_at + 2


def test_bad_data_folder_is_one_line(tmp_path, capsys):
    # 1×8×8 images, as the backbone expects: the missing folder is the only problem.
    folder = '[data]\ntype = "image-folder"\npath = "nope"\nimage_size = 8\nmode = "L"'
    text = RECIPE.replace('[data]\ntype = "digits"', folder)
    status = main(["train", str(write_recipe(tmp_path, text)), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and "nope" in err


def test_corrupt_checkpoint_is_one_line_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"\x80\x02garbage")
    status = main(
        ["train", str(write_recipe(tmp_path)), "--out", str(tmp_path / "r"), "--resume", str(bad)]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and str(bad) in err


def train_tiny_run(folder: Path) -> tuple[Path, Path]:
    """A 2-step tiny run with a checkpoint per step: ``(recipe, run folder)``."""
    recipe = testing.write_recipe(folder, {"hooks": {"checkpoint": {"every": 1}}})
    out = folder / "run"
    out.mkdir()  # an existing empty folder holds no run
    with testing.single_thread():
        assert main(["train", str(recipe), "--out", str(out)]) == 0
    return recipe, out


def test_training_into_a_folder_holding_a_run_is_refused_before_any_work(
    tmp_path, capsys, monkeypatch
):
    recipe, out = train_tiny_run(tmp_path)
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()

    def no_work(*args, **kwargs):
        raise AssertionError("the run was built")

    monkeypatch.setattr(build, "build_run", no_work)
    assert main(["train", str(recipe), "--out", str(out), "--set", "seed=1"]) == 2
    assert capsys.readouterr().err == (
        f"denoisekit: error: {out}: already holds a run (recipe.toml, versions.json, "
        "metrics.jsonl, checkpoints/); continue it with --resume, replace it with "
        "--overwrite, or pick a new folder with --out DIR\n"
    )
    assert main(["train", str(recipe), "--out", str(out), "--resume", "--overwrite"]) == 2
    assert "pass one" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files


def test_overwrite_replaces_the_run_and_keeps_other_files(tmp_path, capsys):
    recipe, out = train_tiny_run(tmp_path)
    (out / "notes.txt").write_text("mine")
    (out / "checkpoints" / "step-00000099.pt").write_bytes(b"the old run's")
    with testing.single_thread():
        status = main(["train", str(recipe), "--out", str(out), "--overwrite", "--set", "seed=1"])
    assert status == 0
    assert "replaced the previous run's recipe.toml, versions.json" in capsys.readouterr().out
    assert (out / "notes.txt").read_text() == "mine"
    assert "seed = 1" in (out / "recipe.toml").read_text()
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]  # the new run's alone, nothing appended
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["last.pt", "step-00000001.pt", "step-00000002.pt"]
