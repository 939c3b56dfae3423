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


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--strength", "1.5"], "--strength 1.5 is outside [0, 1]"),
        (["--mask", "WRONG"], "does not fit 3 inputs of 8×8"),
        (["--strength", "0.5", "--class", "3"], "this model is unconditional"),
        ([], "give --mask (inpainting) and/or --strength (img2img)"),
    ],
)
def test_bad_edits_end_in_one_line(runs, inputs, tmp_path, capsys, extra, message):
    _, run, _ = runs
    path, _ = inputs
    np.save(tmp_path / "wrong.npy", np.zeros((5, 5)))
    extra = [str(tmp_path / "wrong.npy") if e == "WRONG" else e for e in extra]
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
