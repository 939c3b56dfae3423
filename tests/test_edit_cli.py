"""`denoisekit edit` and `denoisekit sample --class` through the real command line."""

from __future__ import annotations

import numpy as np
import pytest

from denoisekit.cli import main
from denoisekit.testing import train_tiny, write_recipe


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("edit")
    hooks = {"hooks": {"checkpoint": {"every": 2}}}
    plain = train_tiny(write_recipe(folder, hooks), out_dir=folder / "plain")
    classes = write_recipe(folder, {**hooks, "backbone": {"num_classes": 10}}, name="classes")
    conditional = train_tiny(classes, out_dir=folder / "classes")
    return folder, plain.out_dir, conditional.out_dir


@pytest.fixture
def inputs(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "in.npz", images)
    return tmp_path / "in.npz", images


def edited(path):
    with np.load(path) as data:
        return data["arr_0"], data.get("arr_1")


def test_strength_zero_returns_the_inputs(runs, inputs, tmp_path):
    _, run, _ = runs
    path, images = inputs
    out = tmp_path / "out.npz"
    assert main(["edit", str(run), "--input", str(path), "--strength", "0", "--out", str(out)]) == 0
    assert np.array_equal(edited(out)[0], images)


def test_an_all_known_mask_returns_the_inputs_and_a_grid_shows_them(runs, inputs, tmp_path):
    _, run, _ = runs
    path, images = inputs
    np.save(tmp_path / "keep.npy", np.zeros((8, 8)))
    out, grid = tmp_path / "out.npz", tmp_path / "grid.png"
    for repaint in ([], ["--repaint", "10", "2", "2"]):
        args = ["edit", str(run), "--input", str(path), "--mask", str(tmp_path / "keep.npy")]
        assert main([*args, *repaint, "--out", str(out), "--grid", str(grid), "--overwrite"]) == 0
        assert np.array_equal(edited(out)[0], images)
    assert grid.stat().st_size > 0


def test_inpainting_the_top_half_keeps_the_bottom_half(runs, inputs, tmp_path):
    _, run, _ = runs
    path, images = inputs
    from PIL import Image

    mask = np.zeros((8, 8), np.uint8)
    mask[:4] = 255
    Image.fromarray(mask).save(tmp_path / "top.png")
    out = tmp_path / "out.npz"
    assert (
        main(
            [
                "edit",
                str(run),
                "--input",
                str(path),
                "--mask",
                str(tmp_path / "top.png"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = edited(out)[0]
    assert np.array_equal(result[:, 4:], images[:, 4:])
    assert not np.array_equal(result[:, :4], images[:, :4])
    args = ["edit", str(run), "--input", str(path), "--mask", str(tmp_path / "top.png")]
    for method in (["replacement"], ["ddnm"], ["pigdm"], ["mmps", "--cg-iterations", "2"]):
        assert main([*args, "--inpaint", *method, "--out", str(out), "--overwrite"]) == 0
        other = edited(out)[0]
        assert np.array_equal(other[:, 4:], images[:, 4:]), method
        assert not np.array_equal(other[:, :4], images[:, :4]), method
    # --repaint alone is RePaint: replacement on its schedule; with --inpaint ddnm, DDNM's
    repaint = []
    for method in ([], ["--inpaint", "replacement"], ["--inpaint", "ddnm"]):
        extra = [*method, "--repaint", "10", "2", "2", "--overwrite"]
        assert main([*args, *extra, "--out", str(out)]) == 0
        repaint.append(edited(out)[0])
    assert np.array_equal(repaint[0], repaint[1]) and not np.array_equal(repaint[0], repaint[2])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--strength", "1.5"], "--strength 1.5 is outside [0, 1]"),
        (["--mask", "WRONG"], "does not fit 3 inputs of 8×8"),
        (["--strength", "0.5", "--class", "3"], "this model is unconditional"),
        ([], "give --mask (inpainting) and/or --strength (img2img)"),
        (["--mask", "KEEP", "--inpaint", "magic"], "--inpaint magic: unknown method"),
        (["--mask", "KEEP", "--cg-iterations", "0"], "--cg-iterations 0: must be >= 1"),
    ],
)
def test_bad_edits_end_in_one_line(runs, inputs, tmp_path, capsys, extra, message):
    _, run, _ = runs
    path, _ = inputs
    np.save(tmp_path / "wrong.npy", np.zeros((5, 5)))
    np.save(tmp_path / "keep.npy", np.zeros((8, 8)))
    files = {"WRONG": str(tmp_path / "wrong.npy"), "KEEP": str(tmp_path / "keep.npy")}
    extra = [files.get(e, e) for e in extra]
    code = main(["edit", str(run), "--input", str(path), *extra, "--out", str(tmp_path / "o.npz")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o.npz").exists()


def test_sample_class_draws_those_classes_and_keeps_the_labels(runs, tmp_path, capsys):
    _, _, run = runs
    out = tmp_path / "s.npz"
    assert main(["sample", str(run), "-n", "6", "--class", "7", "--out", str(out)]) == 0
    assert edited(out)[1].tolist() == [7] * 6
    assert (
        main(
            [
                "sample",
                str(run),
                "-n",
                "20",
                "--class",
                "all",
                "--out",
                str(out),
                "--grid",
                str(tmp_path / "g.png"),
                "--overwrite",
            ]
        )
        == 0
    )
    assert edited(out)[1].tolist() == [i % 10 for i in range(20)]
    capsys.readouterr()
    assert (
        main(["sample", str(run), "-n", "2", "--class", "10", "--out", str(tmp_path / "x.npz")])
        == 2
    )
    err = capsys.readouterr().err
    assert "class 10 is out of range; this model has classes 0 to 9" in err


def test_guided_sampling_through_the_cli_and_its_errors(runs, tmp_path, capsys):
    _, plain, conditional = runs
    out = tmp_path / "g.npz"
    assert (
        main(
            [
                "sample",
                str(conditional),
                "-n",
                "4",
                "--class",
                "3",
                "--guidance",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert edited(out)[1].tolist() == [3] * 4
    capsys.readouterr()
    assert (
        main(["sample", str(plain), "-n", "2", "--guidance", "2", "--out", str(out), "--overwrite"])
        == 2
    )
    err = capsys.readouterr().err
    assert "guidance.scale: 2.0 needs a class-conditional backbone" in err
    assert len(err.strip().splitlines()) == 1


def test_label_dropout_trains_the_null_class(tmp_path):
    import torch

    from denoisekit import hookimpl
    from denoisekit.engine.build import build_run
    from denoisekit.engine.loop import train
    from denoisekit.host.recipe import load_recipe

    class Seen:
        def __init__(self):
            self.labels = []

        @hookimpl(tryfirst=True)
        def denoisekit_train_forward(self, cond):
            self.labels.append(cond.clone())

    def labels_seen(dropout):
        recipe = write_recipe(
            tmp_path,
            {
                "backbone": {"num_classes": 10},
                "train": {"steps": 6, "batch_size": 64, "label_dropout": dropout},
            },
            name=f"d{dropout}",
        )
        seen = Seen()
        train(build_run(load_recipe(recipe), out_dir=tmp_path / f"r{dropout}", extra_hooks=[seen]))
        return torch.cat(seen.labels)

    kept, half, none = labels_seen(0.0), labels_seen(0.5), labels_seen(1.0)
    assert (kept >= 0).all() and (none == -1).all()
    fraction = (half == -1).float().mean().item()
    assert 0.4 < fraction < 0.6, fraction  # 384 labels: 5 standard errors is ±0.13
    assert torch.equal(half[half >= 0], kept[half >= 0])  # the others keep their label


def test_label_dropout_needs_a_conditional_backbone(tmp_path, capsys):
    recipe = write_recipe(tmp_path, {"train": {"label_dropout": 0.1}})
    assert main(["recipe", "check", str(recipe)]) == 2
    assert "train.label_dropout: needs a class-conditional backbone" in capsys.readouterr().err


def test_compare_varies_guidance_on_a_trained_run(runs, tmp_path):
    import io

    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, conditional = runs
    out = tmp_path / "cmp"
    args = ["compare", "--run", str(conditional), "--vary", "guidance.scale=0,1,1.0,3"]
    assert main([*args, "-n", "4", "--out", str(out)]) == 0
    pictures = {}
    for variant in (out / "variants").iterdir():
        acc = EventAccumulator(str(variant))
        acc.Reload()
        png = acc.Images("samples")[0].encoded_image_string
        with Image.open(io.BytesIO(png)) as picture:  # the 4 samples, right of the label
            pictures[variant.name] = np.asarray(picture)[:, -(4 * 48 + 3 * 2) :].tobytes()
    by_scale = {name.split("=")[1]: pixels for name, pixels in pictures.items()}
    assert by_scale["1"] == by_scale["1.0"]  # the same variant twice: the same samples
    assert len({by_scale["0"], by_scale["1"], by_scale["3"]}) == 3
    assert "guidance.scale" in (out / "compare.csv").read_text().splitlines()[0]
