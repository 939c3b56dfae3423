"""`denoisekit compare`: variants, shared training, TensorBoard hparams and scalars."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from denoisekit.cli import main
from denoisekit.engine import compare, loop
from denoisekit.engine.compare import parse_vary, plan, run_compare, split_values, training_groups
from denoisekit.errors import DataError

RECIPE = """
name = "cmp"
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
num_timesteps = 40
[sampler]
steps = 4  # at most the schedule's 40 timesteps (checked when the recipe loads)
[train]
steps = 2
batch_size = 8
log_every = 1
[metrics.nll]
num_images = 8
steps = 5
[metrics.fd]
num_reference = 64
"""


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cmp") / "cmp.toml"
    path.write_text(textwrap.dedent(RECIPE))
    return path


@pytest.fixture(scope="module")
def compared(recipe_path, tmp_path_factory):
    """Four variants: two samplers × two step counts on one model, plus another schedule."""
    out = tmp_path_factory.mktemp("cmp-out")
    calls = []
    original = loop.train

    def counting_train(run):
        calls.append(run.out_dir.name)
        return original(run)

    loop.train = counting_train
    try:
        variants = plan(
            [recipe_path],
            ["sampler.type=ddpm,ddim", "sampler.steps=2,3", "schedule.type=cosine,linear"],
        )
        rows = run_compare(
            variants,
            out_dir=out,
            num_samples=4,
            batch_size=4,
            row_images=3,
            metrics=["nll", "fd"],
            log=lambda _: None,
        )
    finally:
        loop.train = original
    return out, rows, calls


def test_split_values_respects_brackets_and_quotes():
    assert split_values("1,[1,2],'a,b',x") == ["1", "[1,2]", "'a,b'", "x"]
    assert parse_vary("sampler.steps=10, 20") == ("sampler.steps", ["10", "20"])


def test_sampling_only_variants_train_once(compared):
    out, rows, calls = compared
    assert len(rows) == 8
    assert sorted(calls) == ["schedule.type=cosine", "schedule.type=linear"]  # 2 trainings
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(calls)


def test_dry_run_lists_variants(recipe_path, capsys):
    assert main(["compare", str(recipe_path), "--vary", "sampler.steps=2,3", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 variant(s), 1 training run(s)" in out


def test_metrics_per_variant_nll_once_per_model(compared):
    _, rows, _ = compared
    for row in rows:
        assert row["fd"] >= 0 and row["nll_bpd"] > 0
    for group in {r["train_group"] for r in rows}:
        nlls = {r["nll_bpd"] for r in rows if r["train_group"] == group}
        assert len(nlls) == 1  # the model's NLL, computed once, whatever the sampler
    assert len({r["nll_bpd"] for r in rows}) == 2


def test_outputs_table_csv_png(compared):
    out, rows, _ = compared
    table = (out / "compare.md").read_text()
    assert table.count("\n| sampler.type=") == 8
    csv_lines = (out / "compare.csv").read_text().splitlines()
    assert len(csv_lines) == 9 and "nfe_per_image" in csv_lines[0]
    from PIL import Image

    from denoisekit.engine.figures import PAD

    with Image.open(out / "compare.png") as picture:
        # 8 labelled rows of 3 images, 8×8 digits scaled ×6 to 48×48 pixels
        assert picture.height == 8 * (48 + PAD) + PAD
        assert picture.width > 3 * 48 + 200  # the label column is there
    by_name = {r["variant"]: r for r in rows}
    assert by_name["sampler.type=ddim,sampler.steps=3,schedule.type=linear"]["nfe_per_image"] == 3


def test_variant_event_files_hold_hparams_metrics_and_samples(compared):
    from denoisekit.engine.figures import PAD

    out, rows, _ = compared
    variant_dir = out / "variants" / rows[0]["variant"]
    acc = EventAccumulator(str(variant_dir))
    acc.Reload()
    assert "metrics/sec_per_image" in acc.Tags()["scalars"]
    assert acc.Tags()["images"] == ["samples"]  # the variant's same-noise samples
    image = acc.Images("samples")[0]
    assert image.height == 48 + 2 * PAD and image.width > 3 * 48
    plugin_tags = acc.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugin_tags
    train_acc = EventAccumulator(str(out / "train" / rows[0]["train_group"] / "tensorboard"))
    train_acc.Reload()
    assert any("loss" in tag for tag in train_acc.Tags()["scalars"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, data: bytes | None = None) -> object:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_tensorboard_server_shows_hparams_and_scalars(compared):
    out, rows, _ = compared
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(out),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--load_fast",
            "false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                runs = _get(f"{base}/data/runs")
                if any(r.startswith("variants/") for r in runs):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail("tensorboard did not come up on loopback")
            time.sleep(0.5)
        experiment = _get(
            f"{base}/data/plugin/hparams/experiment", json.dumps({"experimentName": ""}).encode()
        )
        hparam_names = {h["name"] for h in experiment["hparamInfos"]}
        assert {"sampler", "sampler.steps", "schedule"} <= hparam_names
        metric_tags = {m["name"]["tag"] for m in experiment["metricInfos"]}
        assert {"metrics/nfe_per_image", "metrics/fd", "metrics/nll_bpd"} <= metric_tags
        run = f"variants/{rows[0]['variant']}"
        points = _get(
            f"{base}/data/plugin/scalars/scalars?run={urllib.parse.quote(run)}"
            "&tag=metrics/nfe_per_image"
        )
        assert points[0][2] == pytest.approx(rows[0]["nfe_per_image"])
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_training_groups_named_by_training_keys(recipe_path):
    variants = plan([recipe_path], ["sampler.steps=2,3"])
    assert list(training_groups(variants)) == ["base"]


def test_compare_from_a_trained_run_trains_nothing(recipe_path, tmp_path, capsys):
    run_dir = tmp_path / "trained"
    assert (
        main(
            ["train", str(recipe_path), "--out", str(run_dir), "--set", "hooks.checkpoint.every=2"]
        )
        == 0
    )
    out = tmp_path / "cmp"
    assert (
        main(
            [
                "compare",
                "--run",
                str(run_dir),
                "--vary",
                "sampler.type=ddpm,ddim",
                "--vary",
                "sampler.steps=2,3",
                "-n",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert not (out / "train").exists()
    assert len((out / "compare.csv").read_text().splitlines()) == 1 + 4
    assert "sampler.type=ddim,sampler.steps=3" in (out / "compare.md").read_text()
    status = main(["compare", "--run", str(run_dir), "--vary", "schedule.type=linear", "--dry-run"])
    assert status == 2
    assert "may vary only [sampler] and [metrics]" in capsys.readouterr().err


def test_compare_into_an_earlier_comparison_is_refused_before_any_work(
    recipe_path, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "cmp"
    (out / "variants").mkdir(parents=True)
    (out / "compare.md").write_text("earlier")

    def no_work(*args, **kwargs):
        raise AssertionError("the comparison started")

    monkeypatch.setattr(compare, "plan", no_work)
    argv = ["compare", str(recipe_path), "--vary", "sampler.steps=2,3", "--out", str(out)]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"denoisekit: error: {out}: already holds a comparison (compare.md, variants/); "
        "replace it with --overwrite, or pick a new folder with --out DIR\n"
    )
    assert (out / "compare.md").read_text() == "earlier"


def test_compare_overwrite_replaces_the_earlier_comparison_only_when_complete(
    recipe_path, tmp_path, monkeypatch
):
    out = tmp_path / "cmp"
    (out / "variants" / "old").mkdir(parents=True)
    (out / "compare.md").write_text("earlier")
    (out / "notes.txt").write_text("mine")
    seen = []

    def build(variants, *, out_dir, **kwargs):  # the new comparison, built beside the old
        seen.extend(sorted(os.listdir(out)))
        (out_dir / "compare.md").write_text("new")

    monkeypatch.setattr(compare, "run_compare", build)
    argv = ["compare", str(recipe_path), "--vary", "sampler.steps=2,3", "--out", str(out)]
    assert main([*argv, "--overwrite"]) == 0
    assert seen == [".denoisekit.lock", "compare.md", "notes.txt", "variants"]
    assert sorted(os.listdir(out)) == ["compare.md", "notes.txt"]
    assert (out / "compare.md").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["cmp"]  # no staging folder left beside it


def test_a_failed_compare_keeps_the_earlier_comparison(recipe_path, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    (out / "variants" / "old").mkdir(parents=True)
    (out / "compare.md").write_text("earlier")

    def fail(variants, *, out_dir, **kwargs):
        (out_dir / "compare.md").write_text("half")
        raise DataError("the data went away")

    monkeypatch.setattr(compare, "run_compare", fail)
    argv = ["compare", str(recipe_path), "--vary", "sampler.steps=2,3", "--out", str(out)]
    assert main([*argv, "--overwrite"]) == 2
    assert sorted(os.listdir(out)) == ["compare.md", "variants"]
    assert (out / "compare.md").read_text() == "earlier"
    assert sorted(os.listdir(tmp_path)) == ["cmp"]
