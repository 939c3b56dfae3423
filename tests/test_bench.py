"""The benchmark script (``benchmarks/bench.py``): its ``--quick`` smoke run and output
format, its bookkeeping, and the correctness of every variant it times.

No timing is asserted anywhere: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import bench  # noqa: E402
import bench_measure as bm  # noqa: E402
import bench_models as models  # noqa: E402

HAS_DIFFUSERS = models.diffusers_available()
KINDS = ["denoisekit", "diffusers"] if HAS_DIFFUSERS else ["denoisekit"]
#: A still smaller layout than --quick's, for the in-process checks.
TINY = {**models.QUICK_LAYOUT, "image_size": 8, "attention_resolutions": (4,)}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _run(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH_DIR / "bench.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


# --------------------------------------------------------------------------- --quick


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One ``--quick`` run (all sections, every non-compile variant): stdout and JSON."""
    tmp = tmp_path_factory.mktemp("bench")
    out = _run(["--quick", "--json", str(tmp / "out.json")], tmp)
    return out, json.loads((tmp / "out.json").read_text())


def test_quick_json_has_every_section_with_median_min_max(quick):
    _, data = quick
    assert {"meta", "config", "ceiling", "models", "train", "sample", "sampler_loop"} <= set(data)
    assert {"train_loop", "correctness", "summary"} <= set(data)
    meta = data["meta"]
    assert meta["machine"]["torch"] == str(torch.__version__)
    assert len(meta["load_before"]) == 3 and meta["command"].startswith(
        "python benchmarks/bench.py"
    )
    assert data["ceiling"]["fp32"]["gflops"] > 0 and data["ceiling"]["bf16"]["gflops"] > 0
    assert data["config"]["variants"]  # --quick: no compiled variant (regional ones too)
    assert not any(models.VARIANTS[v].compile for v in data["config"]["variants"])
    assert data["config"]["compile_cache"].startswith("cold")  # compile times are cold starts
    timed = [r for r in data["train"] if "skipped" not in r]
    assert {(r["model"], r["variant"]) for r in timed} == {
        (k, v) for k in KINDS for v in data["config"]["variants"]
    }
    for row in timed:
        st = row["images_per_s"]
        assert st["min"] <= st["median"] <= st["max"] and st["n"] >= 2
        assert row["gflops"] > 0 and row["fraction_of_ceiling"] > 0
    for row in data["sample"]:
        st = row["ms_per_eval_per_image"]
        assert st["min"] <= st["median"] <= st["max"]
    for row in data["sampler_loop"]:
        assert row["evaluations"] == data["config"]["ddim_steps"]
        assert 0 < row["fraction_in_network"]["median"] <= 1
        assert row["network_s"]["median"] <= row["loop_s"]["median"]


def test_quick_reports_the_layout_match_and_every_variant_is_correct(quick):
    _, data = quick
    for kind in KINDS:
        assert data["models"][kind]["params"] > 0
        # A training step costs about three forward passes (backward: two products each).
        ratio = (
            data["models"][kind]["train_gflop_per_image"]
            / data["models"][kind]["forward_gflop_per_image"]
        )
        assert 2.5 < ratio < 3.5
    if HAS_DIFFUSERS:
        match = data["models"]["match"]
        assert match["params_within_5pct"] and match["flops_within_10pct"]
    checked = {(r["model"], r["variant"]) for r in data["correctness"]}
    sampled = {(r["model"], r["variant"]) for r in data["sample"] if r["variant"] != "eager"}
    assert checked == sampled
    assert all(r["ok"] for r in data["correctness"]), data["correctness"]


def test_quick_prints_the_tables(quick):
    out, _ = quick
    for heading in (
        "== denoisekit benchmark ==",
        "ceiling (matmul): fp32",
        "training step (batch 4): images/s median (min-max)",
        "sampling forward (batch 4): ms per network evaluation per image",
        "DDIM sampler loop",
        "denoisekit train() loop",
        "correctness: forward output vs eager fp32",
        "summary",
    ):
        assert heading in out, heading
    assert "targets are not judged" in out
    if HAS_DIFFUSERS:
        assert "layout match: params ratio 1.0000 (within 5%)" in out


def test_without_diffusers_the_bench_runs_its_own_side_with_a_note(tmp_path):
    # A diffusers that fails to import stands for one that is not installed.
    fake = tmp_path / "fake" / "diffusers"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('not installed (test)')\n")
    out = _run(
        ["--quick", "--sections", "train", "--variants", "eager", "--repeats", "2"],
        tmp_path,
        env={"PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])},
    )
    assert "diffusers is not installed: its side is skipped" in out
    assert "eager          denoisekit" in out
    assert "eager          diffusers" not in out


def test_bad_variant_names_are_refused():
    with pytest.raises(SystemExit):
        bench.parse_args(["--variants", "eager,warp_speed"])


# --------------------------------------------------------------------------- bookkeeping


def test_stats_are_median_min_max():
    assert bm.stats([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0, "n": 4}
    with pytest.raises(ValueError):
        bm.stats([])


def test_flop_counter_matches_closed_forms():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 5, 5)
    # 2 FLOPs per multiply-add: 2 * B * C_out * H * W * C_in * k * k.
    assert bm.count_flops(lambda: conv(x)) == 2 * 2 * 6 * 5 * 5 * 4 * 3 * 3
    lin = torch.nn.Linear(7, 3)
    assert bm.count_flops(lambda: lin(torch.randn(5, 7))) == 2 * 5 * 7 * 3


def test_break_even_is_compile_time_over_time_saved_per_step():
    rows = [
        {"model": "m", "variant": "eager", "step_ms": {"median": 500.0}},
        {"model": "m", "variant": "compile", "step_ms": {"median": 400.0}, "compile_s": 30.0},
        {"model": "m", "variant": "channels_last", "step_ms": {"median": 400.0}},
        {"model": "m", "variant": "compile_cl", "step_ms": {"median": 450.0}, "compile_s": 9.0},
    ]
    bench._add_break_even(rows)
    assert rows[1]["break_even_steps"] == pytest.approx(300.0)  # 30 s / 0.1 s per step
    assert rows[3]["break_even_steps"] is None  # slower than its eager twin: never pays


def test_summary_ratios_and_targets():
    def row(model, variant, ips):
        return {"model": model, "variant": variant, "images_per_s": {"median": ips}}

    result = {
        "config": {"quick": False},
        "train": [
            row("denoisekit", "eager", 50.0),
            row("denoisekit", "channels_last", 60.0),
            row("diffusers", "eager", 40.0),
            row("diffusers", "bf16", 48.0),
        ],
        "sampler_loop": [{"model": "denoisekit", "fraction_in_network": {"median": 0.99}}],
    }
    s = bench.summarize(result)
    assert s["best_denoisekit"]["variant"] == "channels_last"
    assert s["ratios"]["best_vs_diffusers_eager"] == pytest.approx(1.5)
    assert s["ratios"]["best_vs_diffusers_best"] == pytest.approx(1.25)
    assert s["ratios"]["eager_vs_diffusers_eager"] == pytest.approx(1.25)
    assert all(t["met"] for t in s["targets"].values())
    result["train"][1]["images_per_s"]["median"] = 52.0
    assert not bench.summarize(result)["targets"]["best_vs_diffusers_best"]["met"]


@pytest.mark.skipif(not HAS_DIFFUSERS, reason="diffusers (the bench extra) is not installed")
def test_diffusers_model_is_built_to_the_ddpm_cifar10_layout():
    ours = models.build_model("denoisekit", models.LAYOUT)
    theirs = models.build_model("diffusers", models.LAYOUT)
    # The figures: 2.25M parameters, 0.76 GFLOP per 32×32 image.
    assert models.parameter_count(ours) == pytest.approx(2.25e6, rel=0.01)
    assert abs(models.parameter_count(theirs) / models.parameter_count(ours) - 1) <= 0.05
    f_ours = models.forward_flops_per_image("denoisekit", models.LAYOUT)
    f_theirs = models.forward_flops_per_image("diffusers", models.LAYOUT)
    assert f_ours == pytest.approx(0.76e9, rel=0.01)
    assert abs(f_theirs / f_ours - 1) <= 0.10


# --------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", ["channels_last", "bf16", "bf16_cl"])
def test_eager_variants_match_fp32_within_tolerance(kind, variant):
    result = models.check_variant(kind, models.VARIANTS[variant], TINY)
    assert result["ok"], result
    assert result["rel_err"] > 0 or variant == "channels_last"  # bf16 really was used


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", ["compile", "compile_cl", "regional"])
def test_compiled_variants_match_fp32(kind, variant):
    # aot_eager traces forward and backward like inductor but runs aten ops: the graph
    # capture is what is checked here; the slow test below runs inductor's code.
    result = models.check_variant(
        kind, models.VARIANTS[variant], TINY, compile_kwargs={"backend": "aot_eager"}
    )
    assert result["ok"], result


@pytest.mark.parametrize("kind", KINDS)
def test_compiled_training_step_matches_eager(kind):
    layout = {**TINY, "dropout": 0.0}  # dropout draws differ between eager and compiled
    torch._dynamo.reset()
    eager = models.make_train_step(
        kind, models.VARIANTS["eager"], layout, batch=2, device=torch.device("cpu")
    )
    compiled = models.make_train_step(
        kind,
        models.VARIANTS["compile"],
        layout,
        batch=2,
        device=torch.device("cpu"),
        compile_kwargs={"backend": "aot_eager"},
    )
    for _ in range(2):
        torch.testing.assert_close(compiled(), eager(), rtol=1e-4, atol=1e-6)
    for a, b in zip(compiled.model.parameters(), eager.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", ["eager", "foreach", "channels_last", "bf16"])
def test_every_training_variant_steps_and_learns(kind, variant):
    step = models.make_train_step(
        kind, models.VARIANTS[variant], TINY, batch=2, device=torch.device("cpu")
    )
    before = [p.detach().clone() for p in step.model.parameters()]
    losses = [float(step()) for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(losses)))
    changed = [not torch.equal(a, b) for a, b in zip(before, step.model.parameters(), strict=True)]
    assert any(changed)


def test_sampler_loops_agree_between_denoisekit_and_diffusers():
    if not HAS_DIFFUSERS:
        pytest.skip("diffusers (the bench extra) is not installed")
    # Both loops run DDIM (eta 0, leading spacing) on the same schedule: fed the same
    # network and noise they must give the same samples. (Unclipped: with clipping,
    # denoisekit recomputes eps from the clipped x0 and diffusers does not.)
    loop_ours, timed_ours = models.make_sampler_loop(
        "denoisekit", TINY, steps=4, batch=2, device=torch.device("cpu"), clip=False
    )
    loop_theirs, timed_theirs = models.make_sampler_loop(
        "diffusers", TINY, steps=4, batch=2, device=torch.device("cpu"), clip=False
    )
    net = models.perturb_(models.build_model("denoisekit", TINY), scale=0.01).eval()

    class AsDiffusers(torch.nn.Module):
        def forward(self, x, t):
            t = torch.as_tensor(t).expand(x.shape[0]).float()
            return type("Out", (), {"sample": net(x, t)})()

    timed_ours.module, timed_theirs.module = net, AsDiffusers()
    # denoisekit's samplers return images clamped to [-1, 1]; diffusers' scheduler does not.
    torch.testing.assert_close(loop_ours(), loop_theirs().clamp(-1, 1), rtol=1e-4, atol=1e-5)
    assert timed_ours.calls == timed_theirs.calls == 4


@pytest.mark.parametrize("kind", KINDS)
def test_regional_compile_compiles_each_residual_and_attention_block(kind):
    if kind == "diffusers" and not HAS_DIFFUSERS:
        pytest.skip("diffusers (the bench extra) is not installed")
    model = models.build_model(kind, TINY)
    blocks = models.repeated_blocks(model)
    names = {type(b).__name__ for b in blocks}
    expected = (
        {"ResBlock", "AttentionBlock"}
        if kind == "denoisekit"
        else {
            "ResnetBlock2D",
            "Attention",
        }
    )
    assert names == expected
    # The layouts match block for block, so both sides compile as many regions.
    assert len(blocks) == len(models.repeated_blocks(models.build_model("denoisekit", TINY)))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["compile", "compile_cl", "regional", "regional_bf16"])
def test_inductor_compiled_variants_match_fp32(variant):
    torch._dynamo.reset()
    result = models.check_variant("denoisekit", models.VARIANTS[variant], TINY)
    assert result["ok"], result


def test_shard_benchmark_quick_run_reports_every_reader(tmp_path):
    """``bench_shards.py --quick``: both readers, the fields the docs quote (no timing
    is asserted)."""
    import bench_shards

    out = tmp_path / "rows.json"
    assert bench_shards.main(["--quick", "--root", str(tmp_path / "data"), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["reader"], r["ranks"]) for r in rows] == [
        ("image-folder", 1),
        ("shards order=random", 1),  # --orders' default
    ]
    assert all(r["images_per_s"] > 0 and r["first_batch_s"] > 0 for r in rows)
    assert len(list((tmp_path / "data" / "shards").glob("*.tar"))) == 1  # 96 images, 500 a shard
