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
