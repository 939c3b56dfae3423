"""The inpainting benchmark (``benchmarks/inpaint.py``) end to end on a tiny run: its rows,
its anchors and its masks. No figure is asserted (they depend on the model)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from denoisekit.testing import train_tiny, write_recipe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import inpaint


def test_nearest_paste_matches_a_brute_force_search_with_a_mask_per_image():
    g = torch.Generator().manual_seed(0)
    train = torch.rand(50, 1, 5, 5, generator=g)
    test = torch.rand(7, 1, 5, 5, generator=g)
    mask = (torch.rand(7, 1, 5, 5, generator=g) < 0.5).float()
    out = inpaint.nearest_paste(test, train, mask, chunk=16)  # across chunks
    for i in range(7):
        d = (((train - test[i]) * (1 - mask[i])) ** 2).flatten(1).sum(1)
        expected = test[i] * (1 - mask[i]) + train[int(d.argmin())] * mask[i]
        torch.testing.assert_close(out[i], expected, rtol=0, atol=0)


def test_method_specs_count_their_passes():
    options, _, forwards, backward = inpaint.parse_method("model-100")
    assert (options.scale, forwards, backward) == (None, 100, 0)  # the run's guidance
    options, overrides, forwards, backward = inpaint.parse_method("model-50@eta0@w2")
    assert (options.method, options.scale, forwards, backward) == ("model", 2.0, 100, 0)
    assert "sampler.eta=0.0" in overrides
    options, _, forwards, backward = inpaint.parse_method("dps-50")
    assert (options.method, forwards, backward) == ("dps", 50, 50)
    assert inpaint.parse_method("mmps2-25")[2:] == (25, 75)
    with pytest.raises(SystemExit, match="bad method"):
        inpaint.parse_method("repl-10@w2")


def test_validation_needs_a_run_trained_on_the_fit_digits(tmp_path, monkeypatch):
    hooks = {"hooks": {"checkpoint": {"every": 2}}}
    run = train_tiny(write_recipe(tmp_path, hooks), out_dir=tmp_path / "run").out_dir
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"--validation: this run trained on data\.split = None"):
        inpaint.main([str(run), "--validation", "--methods", "repl-2", "-n", "4"])


def test_nearest_paste_takes_the_nearest_training_image():
    train = torch.stack([torch.full((1, 2, 2), v) for v in (-1.0, 0.0, 1.0)])
    test = torch.tensor([[[[0.9, 0.1], [0.0, 0.0]]]])
    mask = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])  # keep the top-left pixel
    out = inpaint.nearest_paste(test, train, mask)
    assert torch.equal(out, torch.tensor([[[[0.9, 1.0], [1.0, 1.0]]]]))


@pytest.mark.slow  # trains a run and the digits classifier: about a minute
def test_benchmark_rows(tmp_path, monkeypatch):
    hooks = {"hooks": {"checkpoint": {"every": 2}}}
    run = train_tiny(write_recipe(tmp_path, hooks), out_dir=tmp_path / "run").out_dir
    out = tmp_path / "rows.jsonl"
    monkeypatch.chdir(tmp_path)
    methods = "repl-2,mmps1-2,repaint-3-1-2"
    code = inpaint.main(
        [str(run), "--masks", "top,pixels", "--methods", methods, "-n", "6", "--json", str(out)]
    )
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["mask"], r["method"]) for r in rows] == [
        ("none", "real digits"),
        *[
            (m, s)
            for m in ("top", "pixels")
            for s in ["nearest-neighbour paste", *methods.split(",")]
        ],
    ]
    assert all(r["known_error"] == 0.0 and 0 <= r["accuracy"] <= 1 for r in rows)
    assert [r["passes"] for r in rows if r["mask"] == "top" and "passes" in r] == [2, 6, 5]


def test_fashion_plumbing_on_generated_idx_files(tmp_path, monkeypatch):
    """Labelled data other than the digits (Fashion-MNIST's layout, generated): the judge is
    class-quality's classifier, the paste's bank the training split; an [inpainting] run."""
    from tests.plugins.test_data_idx import fake

    fake(tmp_path / "data", gz=True, n_train=24, n_test=12)
    data = {"type": "torchvision", "name": "FashionMNIST", "root": str(tmp_path / "data")}
    overrides = {
        "data": {**data, "image_size": 8},
        "backbone": {"in_channels": 3, "out_channels": 1},
        "inpainting": {"masks": ["top", "boxes"]},
        "hooks": {"checkpoint": {"every": 2}},
    }
    run = train_tiny(write_recipe(tmp_path, overrides), out_dir=tmp_path / "run").out_dir
    out = tmp_path / "rows.jsonl"
    monkeypatch.chdir(tmp_path)
    methods = "model-2,model-2@w2,mmps1-2"
    argv = [str(run), "--masks", "top,boxes", "--methods", methods, "-n", "6"]
    assert inpaint.main([*argv, "--classifier-steps", "2", "--json", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["mask"], r["method"]) for r in rows] == [
        ("none", "real images"),
        *[
            (m, s)
            for m in ("top", "boxes")
            for s in ["nearest-neighbour paste", *methods.split(",")]
        ],
    ]
    assert all(r["n"] == 6 and r["known_error"] == 0.0 and 0 <= r["accuracy"] <= 1 for r in rows)
    assert [r["passes"] for r in rows if r["mask"] == "top" and "passes" in r] == [2, 4, 6]
