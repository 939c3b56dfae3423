"""The equal-time benchmark on Fashion-MNIST (``benchmarks/fashion_vs_diffusers.py``): its
plumbing, at tiny sizes on generated idx files. No timing is asserted."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

from tests.plugins.test_data_idx import fake

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_models  # noqa: E402
import fashion_vs_diffusers as fvd  # noqa: E402

CONTENDERS = ["denoisekit", "naive"] + (["diffusers"] if bench_models.diffusers_available() else [])


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_every_contender_trains_samples_and_is_scored(tmp_path: Path) -> None:
    fake(tmp_path / "data", gz=True, n_train=16, n_test=8)
    out = tmp_path / "results.json"
    rows = fvd.main(
        [
            "--tiny",
            "--minutes=0.002",
            "--calibrate=2",
            "-n=6",
            "--nfe=3",
            "--batch-size=4",
            "--classifier-steps=2",
            "--diffusers-bf16",
            f"--data-root={tmp_path / 'data'}",
            f"--out={tmp_path / 'runs'}",
            f"--contenders={','.join(CONTENDERS)}",
            f"--json={out}",
        ]
    )
    assert list(rows) == CONTENDERS
    assert (tmp_path / "runs" / "denoisekit").is_dir()
    saved = json.loads(out.read_text())
    for name, row in saved.items():
        assert row["steps"] >= 1 and row["train_seconds"] > 0 and row["parameters"] > 0
        assert row["nfe"] == 3
        assert sum(row[f"class_count/{c}"] for c in range(10)) == 6, name
        for key in fvd.KEYS:
            assert key in row, (name, key)


def test_the_naive_recipe_is_the_quickstart_at_28px(tmp_path: Path) -> None:
    ns = argparse.Namespace(data_root=tmp_path, nfe=20, classifier_steps=None, tiny=False)
    naive, ours = fvd.recipe_data("naive", ns), fvd.recipe_data("denoisekit", ns)
    assert naive["backbone"]["image_size"] == 28 and naive["loss"]["prediction"] == "eps"
    assert naive["backbone"]["num_res_blocks"] == 2 and naive["train"]["batch_size"] == 128
    assert naive["sampler"] == {"type": "ddim", "steps": 20, "eta": 1.0}
    assert ours["sampler"]["steps"] == 20 and ours["data"]["root"] == str(tmp_path)
    assert set(naive["hooks"]) <= set(fvd.KEPT_HOOKS) and set(ours["hooks"]) <= set(fvd.KEPT_HOOKS)
    with pytest.raises(SystemExit):
        fvd.main(["--contenders=denoisekit,keras"])


def test_several_budgets_give_one_row_each(tmp_path: Path) -> None:
    fake(tmp_path / "data", gz=False, n_train=8, n_test=6)
    rows = fvd.main(
        [
            "--tiny",
            "--minutes=0.001,0.002",
            "--calibrate=1",
            "-n=4",
            "--nfe=2",
            "--batch-size=4",
            "--classifier-steps=1",
            f"--data-root={tmp_path / 'data'}",
            f"--out={tmp_path / 'runs'}",
            "--contenders=naive",
        ]
    )
    assert list(rows) == ["naive@0.001min", "naive@0.002min"]


def test_the_latent_contender_trains_on_an_autoencoder_run_and_scores_decoded_images(
    tmp_path: Path, monkeypatch
) -> None:
    from denoisekit.files import CACHE_ENV
    from tests.test_latent_runs import make_ae_run
    from tests.test_recipes import FASHION_AE

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    fake(tmp_path / "data", gz=True, n_train=16, n_test=8)
    ae = make_ae_run(tmp_path / "fashion-ae", table=FASHION_AE)
    rows = fvd.main(
        [
            "--tiny",
            "--minutes=0.002",
            "--calibrate=2",
            "-n=6",
            "--nfe=3",
            "--batch-size=4",
            "--classifier-steps=2",
            f"--data-root={tmp_path / 'data'}",
            f"--out={tmp_path / 'runs'}",
            "--contenders=latent",
            f"--autoencoder={ae}",
        ]
    )
    row = rows["latent"]
    assert row["steps"] >= 1 and row["nfe"] == 3
    assert sum(row[f"class_count/{c}"] for c in range(10)) == 6  # 28×28 decoded images scored
    assert (tmp_path / "cache").is_dir()  # stage 2 trained on cached latents
