"""Side-by-side benchmark of denoisekit's U-Net and diffusers' ``UNet2DModel``.

Measures, in one process, with warm-up and the median (min–max) of repeated runs:

* the training step (noise, forward, loss, backward, AdamW step, EMA update) in images/s;
* sampling: milliseconds per network evaluation per image;
* for every variant (eager fp32, foreach AdamW, channels-last, bf16 autocast, compile,
  compile + channels-last, compile + bf16), with compile time reported apart and the
  number of steps after which compiling pays for itself;
* the machine's fp32 / bf16 matrix-product GFLOP/s, and each variant's achieved GFLOP/s
  and fraction of that ceiling (FLOPs from ``torch.utils.flop_counter``);
* a full DDIM loop (50 steps, batch 64) against the network time inside it;
* denoisekit's own ``train()`` loop (data loader, hooks) against its bare step;
* each variant's forward output against eager fp32 (correctness).

diffusers is optional (``pip install -e '.[bench]'``); without it its side is skipped
with a note. Usage::

    python benchmarks/bench.py                  # everything (tens of minutes on 2 cores)
    python benchmarks/bench.py --quick          # tiny sizes, seconds: the CI smoke test
    python benchmarks/bench.py --variants eager,channels_last --json out.json

See docs/performance.md for the measured numbers and how to read them.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_measure as bm
import bench_models as models
import torch

#: Targets of issue 7 (checked and printed; never asserted).
TARGETS = {
    "best_vs_diffusers_eager": 1.5,
    "best_vs_diffusers_best": 1.15,
    "eager_vs_diffusers_eager": 1.0,
    "sampler_fraction_in_network": 0.95,
}
DEFAULT_VARIANTS = (
    "eager",
    "foreach",
    "channels_last",
    "bf16",
    "bf16_cl",
    "compile",
    "compile_cl",
    "compile_bf16",
    "regional",
    "regional_bf16",
)
#: A compiled variant's eager twin, for the break-even step count.
EAGER_TWIN = {
    "compile": "eager",
    "compile_cl": "channels_last",
    "compile_bf16": "bf16",
    "regional": "eager",
    "regional_bf16": "bf16",
}


# --------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (CI)")
    p.add_argument("--json", type=Path, help="write every number to this JSON file")
    p.add_argument("--models", default="denoisekit,diffusers", help="comma-separated")
    p.add_argument(
        "--variants",
        help=f"comma-separated, from {', '.join(models.VARIANTS)} "
        f"(default: {', '.join(DEFAULT_VARIANTS)}; --quick: no compile)",
    )
    p.add_argument("--compile", action="store_true", help="with --quick: add compile variants")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--batch", type=int, help="training batch (default 32; --quick 4)")
    p.add_argument("--sample-batch", type=int, help="sampling batch (default 64; --quick 4)")
    p.add_argument("--ddim-steps", type=int, help="DDIM loop steps (default 50; --quick 3)")
    p.add_argument("--warmup", type=int, help="unmeasured calls first (default 2; --quick 1)")
    p.add_argument("--repeats", type=int, help="measured calls (default 9; --quick 3)")
    p.add_argument("--loop-repeats", type=int, help="measured DDIM loops (default 3; --quick 2)")
    p.add_argument(
        "--budget",
        type=float,
        default=90.0,
        help="seconds of measured calls per variant, after which repeats stop (min 2)",
    )
    p.add_argument(
        "--sections",
        default="check,train,sample,loop,trainloop",
        help="which parts to run: check, train, sample, loop (DDIM), trainloop",
    )
    p.add_argument(
        "--warm-compile-cache",
        action="store_true",
        help="reuse torch inductor's on-disk cache (default: a fresh one, so compile times are "
        "cold-start times)",
    )
    p.add_argument(
        "--force-bf16",
        action="store_true",
        help="run compile_bf16 even where bf16 is emulated (minutes of compiling)",
    )
    args = p.parse_args(argv)
    q = args.quick
    defaults = {
        "batch": 4 if q else 32,
        "sample_batch": 4 if q else 64,
        "ddim_steps": 3 if q else 50,
        "warmup": 1 if q else 2,
        "repeats": 3 if q else 9,
        "loop_repeats": 2 if q else 3,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.variants is None:
        compiled = {v for v in DEFAULT_VARIANTS if models.VARIANTS[v].compile}
        chosen = [v for v in DEFAULT_VARIANTS if not (q and not args.compile and v in compiled)]
    else:
        chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in models.VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; the variants are {', '.join(models.VARIANTS)}")
    args.variant_list = chosen
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in args.model_list if m not in models.MODELS]
    if bad:
        p.error(f"unknown models {bad}; the models are {', '.join(models.MODELS)}")
    args.section_list = [s.strip() for s in args.sections.split(",") if s.strip()]
    return args


def log(message: str) -> None:
    """Progress, on stderr (the tables go to stdout)."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- sections


def measure_ceiling(device: torch.device, quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    max_size = 512 if quick else 2048
    names = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if device.type == "cuda":
        names["fp16"] = torch.float16
    for name, dtype in names.items():
        out[name] = bm.matmul_gflops(
            dtype, device, max_size=max_size, budget_s=1.0 if quick else 4.0
        )
        log(f"ceiling {name}: {out[name]['gflops']:.1f} GFLOP/s (n = {out[name]['n']})")
    # bf16 without bf16 instructions (AVX2-only CPUs) is emulated, far below fp32.
    out["bf16_native"] = out["bf16"]["gflops"] >= 0.5 * out["fp32"]["gflops"]
    return out


def describe_models(names: list[str], layout: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in names:
        model = models.build_model(kind, layout)
        out[kind] = {
            "params": models.parameter_count(model),
            "forward_gflop_per_image": models.forward_flops_per_image(kind, layout) / 1e9,
            "train_gflop_per_image": models.train_flops_per_image(kind, layout) / 1e9,
        }
        log(
            f"{kind}: {out[kind]['params']:,} parameters, "
            f"{out[kind]['forward_gflop_per_image']:.3f} GFLOP forward per image"
        )
    if "denoisekit" in out and "diffusers" in out:
        a, b = out["denoisekit"], out["diffusers"]
        p_ratio = a["params"] / b["params"]
        f_ratio = a["forward_gflop_per_image"] / b["forward_gflop_per_image"]
        out["match"] = {
            "params_ratio": p_ratio,
            "flops_ratio": f_ratio,
            "params_within_5pct": abs(p_ratio - 1) <= 0.05,
            "flops_within_10pct": abs(f_ratio - 1) <= 0.10,
        }
    return out


def _ceiling_for(variant: models.Variant, ceiling: dict[str, Any]) -> float:
    return float(ceiling.get(variant.dtype, ceiling["fp32"])["gflops"])


def _skip_reason(variant: models.Variant, args: argparse.Namespace, ceiling: dict) -> str | None:
    device = torch.device(args.device)
    if variant.dtype == "fp16" and device.type != "cuda":
        return "fp16 autocast + GradScaler is a GPU variant"
    if (
        variant.dtype == "bf16"
        and variant.compile
        and not ceiling["bf16_native"]
        and not args.force_bf16
    ):
        return (
            f"bf16 is emulated on this CPU ({ceiling['bf16']['gflops']:.1f} vs "
            f"{ceiling['fp32']['gflops']:.0f} GFLOP/s fp32); --force-bf16 to compile it anyway"
        )
    return None


def _compile_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"mode": args.compile_mode} if args.compile_mode != "default" else {}


def _reset_compiler() -> None:
    # Every compiled variant wraps a new module of the same classes; without a reset,
    # dynamo's per-code-object cache limit would silently send later ones to eager.
    torch._dynamo.reset()


def run_train(args, layout, names, ceiling, flops) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    rows = []
    for vname in args.variant_list:
        variant = models.VARIANTS[vname]
        reason = _skip_reason(variant, args, ceiling)
        if reason:
            rows += [{"model": k, "variant": vname, "skipped": reason} for k in names]
            log(f"train {vname}: skipped ({reason})")
            continue
        if variant.compile:
            _reset_compiler()
        slow = variant.dtype == "bf16" and not ceiling["bf16_native"]
        steps, first = {}, {}
        for kind in names:
            log(f"train {vname} {kind}: building" + (" and compiling" if variant.compile else ""))
            step = models.make_train_step(
                kind, variant, layout, batch=args.batch, device=device,
                compile_kwargs=_compile_kwargs(args),
            )  # fmt: skip
            start = time.perf_counter()
            step()
            bm.synchronize(device)
            first[kind] = time.perf_counter() - start
            for _ in range(1 if slow else args.warmup):
                step()
            steps[kind] = step
        repeats = min(args.repeats, 3) if slow else args.repeats
        times = bm.time_interleaved(steps, repeats=repeats, device=device, budget_s=args.budget)
        for kind in names:
            st = bm.stats(times[kind])
            ips = [args.batch / t for t in times[kind]]
            row: dict[str, Any] = {
                "model": kind,
                "variant": vname,
                "batch": args.batch,
                "step_ms": {k: v * 1e3 if k != "n" else v for k, v in st.items()},
                "images_per_s": bm.stats(ips),
                "first_step_s": first[kind],
            }
            gflops = flops[kind]["train_gflop_per_image"] * row["images_per_s"]["median"]
            row["gflops"] = gflops
            row["fraction_of_ceiling"] = gflops / _ceiling_for(variant, ceiling)
            if variant.compile:
                row["compile_s"] = max(first[kind] - st["median"], 0.0)
            rows.append(row)
            log(
                f"train {vname} {kind}: {row['images_per_s']['median']:.1f} images/s "
                f"({row['images_per_s']['min']:.1f}-{row['images_per_s']['max']:.1f})"
            )
        del steps
    _add_break_even(rows)
    return rows


def _add_break_even(rows: list[dict[str, Any]]) -> None:
    """Steps after which a compiled variant has saved its compile time (None: never)."""
    by_key = {(r["model"], r["variant"]): r for r in rows if "step_ms" in r}
    for row in by_key.values():
        twin = EAGER_TWIN.get(row["variant"])
        if twin is None or (row["model"], twin) not in by_key:
            continue
        saved_s = (
            by_key[(row["model"], twin)]["step_ms"]["median"] - row["step_ms"]["median"]
        ) / 1e3
        row["break_even_steps"] = row["compile_s"] / saved_s if saved_s > 0 else None


def run_sample(args, layout, names, ceiling, flops) -> tuple[list[dict], list[dict]]:
    """Sampling forward timings, and each variant's output against eager fp32."""
    device = torch.device(args.device)
    rows, checks = [], []
    reference: dict[str, torch.Tensor] = {}
    variants = [v for v in args.variant_list if v in models.SAMPLING_VARIANTS]
    if "eager" in variants:  # the reference for the correctness check comes first
        variants.remove("eager")
    variants.insert(0, "eager")
    for vname in variants:
        variant = models.VARIANTS[vname]
        reason = _skip_reason(variant, args, ceiling)
        if reason:
            rows += [{"model": k, "variant": vname, "skipped": reason} for k in names]
            continue
        if variant.compile:
            _reset_compiler()
        slow = variant.dtype == "bf16" and not ceiling["bf16_native"]
        fns, first = {}, {}
        for kind in names:
            f, _ = models.make_forward(
                kind, variant, layout, batch=args.sample_batch, device=device, perturb=True,
                compile_kwargs=_compile_kwargs(args),
            )  # fmt: skip
            start = time.perf_counter()
            out = f().float()
            bm.synchronize(device)
            first[kind] = time.perf_counter() - start
            if vname == "eager":
                reference[kind] = out
            elif "check" in args.section_list:
                checks.append(_compare(kind, variant, out, reference[kind]))
            for _ in range(1 if slow else args.warmup):
                f()
            fns[kind] = f
        repeats = min(args.repeats, 3) if slow else args.repeats
        times = bm.time_interleaved(fns, repeats=repeats, device=device, budget_s=args.budget)
        for kind in names:
            per_image_ms = [t / args.sample_batch * 1e3 for t in times[kind]]
            st = bm.stats(per_image_ms)
            gflops = flops[kind]["forward_gflop_per_image"] / (st["median"] / 1e3)
            row = {
                "model": kind,
                "variant": vname,
                "batch": args.sample_batch,
                "ms_per_eval_per_image": st,
                "gflops": gflops,
                "fraction_of_ceiling": gflops / _ceiling_for(variant, ceiling),
                "first_call_s": first[kind],
            }
            if variant.compile:
                row["compile_s"] = max(first[kind] - st["median"] * args.sample_batch / 1e3, 0.0)
            rows.append(row)
            log(f"sample {vname} {kind}: {st['median']:.3f} ms per evaluation per image")
        del fns
    if "eager" not in args.variant_list:
        rows = [r for r in rows if r["variant"] != "eager"]
    return rows, checks


def _compare(kind: str, variant: models.Variant, out: torch.Tensor, ref: torch.Tensor) -> dict:
    row = models.compare_outputs(kind, variant, out, ref)
    log(
        f"check {variant.name} {kind}: relative error {row['rel_err']:.2e} "
        f"(tolerance {row['tolerance']:.0e}) " + ("ok" if row["ok"] else "FAIL")
    )
    return row


def run_loop(args, layout, names) -> list[dict[str, Any]]:
    """The full DDIM loop against the time spent inside the network."""
    device = torch.device(args.device)
    rows = []
    for kind in names:
        loop, timed = models.make_sampler_loop(
            kind, layout, steps=args.ddim_steps, batch=args.sample_batch, device=device
        )
        # Warm up the kernels at this batch size with a few evaluations, not a whole loop.
        x = models.data_batch(layout, args.sample_batch, device)
        t = torch.full((args.sample_batch,), 10, device=device)
        with torch.no_grad():
            for _ in range(args.warmup):
                timed.module(x, t if kind == "diffusers" else t.float())
        loops, nets = [], []
        for _ in range(args.loop_repeats):
            timed.seconds, timed.calls = 0.0, 0
            start = time.perf_counter()
            loop()
            bm.synchronize(device)
            loops.append(time.perf_counter() - start)
            nets.append(timed.seconds)
        fractions = [n / total for n, total in zip(nets, loops, strict=True)]
        overhead_ms = [
            (total - n) / args.ddim_steps * 1e3 for n, total in zip(nets, loops, strict=True)
        ]
        row = {
            "model": kind,
            "steps": args.ddim_steps,
            "batch": args.sample_batch,
            "evaluations": timed.calls,
            "loop_s": bm.stats(loops),
            "network_s": bm.stats(nets),
            "fraction_in_network": bm.stats(fractions),
            "overhead_ms_per_step": bm.stats(overhead_ms),
        }
        rows.append(row)
        log(
            f"DDIM loop {kind}: {row['loop_s']['median']:.2f} s, "
            f"{100 * row['fraction_in_network']['median']:.2f}% in the network"
        )
    return rows


def run_trainloop(args, layout, step_rows) -> list[dict[str, Any]]:
    """denoisekit's real ``train()`` loop against its bare step (same variant)."""
    device = torch.device(args.device)
    rows = []
    for vname in args.variant_list:
        variant = models.VARIANTS[vname]
        if variant.channels_last or variant.dtype == "fp16" or variant.compile:
            continue  # no recipe switch for channels-last; compile: minutes more
        if variant.dtype == "bf16":
            continue  # emulated on many CPUs; the step rows show bf16
        warm = max(args.warmup, 1)
        with tempfile.TemporaryDirectory() as tmp:
            times = models.time_train_loop(
                layout, batch=args.batch, steps=warm + args.repeats, device=device,
                variant=variant, out_dir=tmp,
            )  # fmt: skip
        times = times[warm:]
        ips = [args.batch / t for t in times]
        row: dict[str, Any] = {
            "model": "denoisekit",
            "variant": vname,
            "batch": args.batch,
            "images_per_s": bm.stats(ips),
        }
        bare = [r for r in step_rows if r["model"] == "denoisekit" and r["variant"] == vname]
        if bare and "images_per_s" in bare[0]:
            row["vs_bare_step"] = row["images_per_s"]["median"] / bare[0]["images_per_s"]["median"]
        rows.append(row)
        log(f"train() loop {vname}: {row['images_per_s']['median']:.1f} images/s")
    return rows


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Best configurations and the issue's target ratios."""
    rows = [r for r in result.get("train", []) if "images_per_s" in r]
    out: dict[str, Any] = {}

    def best(kind: str) -> dict[str, Any] | None:
        mine = [r for r in rows if r["model"] == kind]
        return max(mine, key=lambda r: r["images_per_s"]["median"]) if mine else None

    def get(kind: str, variant: str) -> dict[str, Any] | None:
        return next((r for r in rows if r["model"] == kind and r["variant"] == variant), None)

    ours, theirs = best("denoisekit"), best("diffusers")
    ours_eager, theirs_eager = get("denoisekit", "eager"), get("diffusers", "eager")
    if ours:
        out["best_denoisekit"] = {
            "variant": ours["variant"],
            "images_per_s": ours["images_per_s"]["median"],
        }
    if theirs:
        out["best_diffusers"] = {
            "variant": theirs["variant"],
            "images_per_s": theirs["images_per_s"]["median"],
        }
    ratios: dict[str, float] = {}
    if ours and theirs_eager:
        ratios["best_vs_diffusers_eager"] = (
            ours["images_per_s"]["median"] / theirs_eager["images_per_s"]["median"]
        )
    if ours and theirs:
        ratios["best_vs_diffusers_best"] = (
            ours["images_per_s"]["median"] / theirs["images_per_s"]["median"]
        )
    if ours_eager and theirs_eager:
        ratios["eager_vs_diffusers_eager"] = (
            ours_eager["images_per_s"]["median"] / theirs_eager["images_per_s"]["median"]
        )
    loop = next((r for r in result.get("sampler_loop", []) if r["model"] == "denoisekit"), None)
    if loop:
        ratios["sampler_fraction_in_network"] = loop["fraction_in_network"]["median"]
    out["ratios"] = ratios
    if result["config"]["quick"]:  # tiny sizes: the targets are about the real layout
        out["targets"] = {}
        return out
    out["targets"] = {
        k: {"target": v, "met": ratios[k] >= v} for k, v in TARGETS.items() if k in ratios
    }
    return out


# --------------------------------------------------------------------------- printing


def _fmt_stat(st: dict[str, float], digits: int = 1) -> str:
    return f"{st['median']:.{digits}f} ({st['min']:.{digits}f}-{st['max']:.{digits}f})"


def _skipped_line(row: dict[str, Any]) -> str:
    return f"{row['variant']:<14} {row['model']:<11} skipped: {row['skipped']}"


def _compile_cell(row: dict[str, Any]) -> str:
    return f"{row['compile_s']:.1f}" if "compile_s" in row else ""


def _break_even_cell(row: dict[str, Any]) -> str:
    if "break_even_steps" not in row:  # not a compiled variant
        return ""
    steps = row["break_even_steps"]
    return "never" if steps is None else f"{steps:.0f}"


def render(result: dict[str, Any]) -> str:
    """The printed report: a few plain-text tables."""
    lines: list[str] = []
    meta = result["meta"]
    mach = meta["machine"]
    lines.append("== denoisekit benchmark ==")
    lines.append(
        f"machine: {mach['cpu']} ({mach['logical_cpus']} logical CPUs, "
        f"{mach['torch_threads']} torch threads, {mach['torch_cpu_capability']}); "
        f"device {mach['device']}"
    )
    lines.append(
        f"torch {mach['torch']}, diffusers {mach['diffusers'] or 'not installed'}; "
        f"load average before {meta['load_before']} after {meta.get('load_after')}"
    )
    lines.append(f"command: {meta['command']}")
    for note in meta.get("notes", []):
        lines.append(f"note: {note}")
    if result["config"]["quick"]:
        lines.append("note: --quick: tiny sizes, a smoke test; the targets are not judged")
    c = result["ceiling"]
    lines.append(
        f"ceiling (matmul): fp32 {c['fp32']['gflops']:.1f} GFLOP/s, "
        f"bf16 {c['bf16']['gflops']:.1f} GFLOP/s"
        + ("" if c["bf16_native"] else " (bf16 emulated: no native bf16 on this CPU)")
    )
    lines.append("")
    lines.append(f"{'model':<11} {'params':>10} {'fwd GFLOP/img':>14} {'train GFLOP/img':>16}")
    for kind in models.MODELS:
        m = result["models"].get(kind)
        if m:
            lines.append(
                f"{kind:<11} {m['params']:>10,} {m['forward_gflop_per_image']:>14.3f} "
                f"{m['train_gflop_per_image']:>16.3f}"
            )
    match = result["models"].get("match")
    if match:
        lines.append(
            f"layout match: params ratio {match['params_ratio']:.4f} "
            f"({'within' if match['params_within_5pct'] else 'OUTSIDE'} 5%), forward FLOPs ratio "
            f"{match['flops_ratio']:.4f} "
            f"({'within' if match['flops_within_10pct'] else 'OUTSIDE'} 10%)"
        )
    if result.get("train"):
        lines.append("")
        lines.append(
            f"training step (batch {result['config']['batch']}): images/s median (min-max)"
        )
        lines.append(
            f"{'variant':<14} {'model':<11} {'images/s':>22} {'step ms':>8} {'GFLOP/s':>8} "
            f"{'of peak':>8} {'compile s':>10} {'break-even':>11}"
        )
        for r in result["train"]:
            if "skipped" in r:
                lines.append(_skipped_line(r))
                continue
            lines.append(
                f"{r['variant']:<14} {r['model']:<11} {_fmt_stat(r['images_per_s']):>22} "
                f"{r['step_ms']['median']:>8.0f} {r['gflops']:>8.1f} "
                f"{100 * r['fraction_of_ceiling']:>7.1f}% {_compile_cell(r):>10} "
                f"{_break_even_cell(r):>11}"
            )
    if result.get("sample"):
        lines.append("")
        lines.append(
            f"sampling forward (batch {result['config']['sample_batch']}): ms per network "
            "evaluation per image, median (min-max)"
        )
        lines.append(
            f"{'variant':<14} {'model':<11} {'ms/eval/image':>24} {'GFLOP/s':>8} "
            f"{'of peak':>8} {'compile s':>10}"
        )
        for r in result["sample"]:
            if "skipped" in r:
                lines.append(_skipped_line(r))
                continue
            lines.append(
                f"{r['variant']:<14} {r['model']:<11} "
                f"{_fmt_stat(r['ms_per_eval_per_image'], 3):>24} "
                f"{r['gflops']:>8.1f} {100 * r['fraction_of_ceiling']:>7.1f}% "
                f"{_compile_cell(r):>10}"
            )
    if result.get("sampler_loop"):
        lines.append("")
        lines.append("DDIM sampler loop (eager fp32): whole loop vs time inside the network")
        lines.append(
            f"{'model':<11} {'steps':>5} {'batch':>5} {'loop s':>20} {'network s':>20} "
            f"{'in network':>11} {'overhead ms/step':>17}"
        )
        for r in result["sampler_loop"]:
            lines.append(
                f"{r['model']:<11} {r['steps']:>5} {r['batch']:>5} {_fmt_stat(r['loop_s'], 2):>20} "
                f"{_fmt_stat(r['network_s'], 2):>20} "
                f"{100 * r['fraction_in_network']['median']:>10.2f}% "
                f"{r['overhead_ms_per_step']['median']:>17.2f}"
            )
    if result.get("train_loop"):
        lines.append("")
        lines.append("denoisekit train() loop (data loader, EMA hook, logging) vs the bare step")
        for r in result["train_loop"]:
            vs = f", {100 * r['vs_bare_step']:.1f}% of the bare step" if "vs_bare_step" in r else ""
            lines.append(f"{r['variant']:<14} {_fmt_stat(r['images_per_s'])} images/s{vs}")
    if result.get("correctness"):
        lines.append("")
        lines.append("correctness: forward output vs eager fp32 (same weights), relative L2 error")
        for r in result["correctness"]:
            lines.append(
                f"{r['variant']:<14} {r['model']:<11} {r['rel_err']:.2e} "
                f"(tolerance {r['tolerance']:.0e}) {'ok' if r['ok'] else 'FAIL'}"
            )
    s = result.get("summary", {})
    if s.get("ratios"):
        lines.append("")
        lines.append("summary")
        if "best_denoisekit" in s:
            lines.append(
                f"best denoisekit: {s['best_denoisekit']['variant']} "
                f"({s['best_denoisekit']['images_per_s']:.1f} images/s)"
            )
        if "best_diffusers" in s:
            lines.append(
                f"best diffusers:  {s['best_diffusers']['variant']} "
                f"({s['best_diffusers']['images_per_s']:.1f} images/s)"
            )
        for key, value in s["ratios"].items():
            target = s["targets"].get(key)
            verdict = (
                f" (target >= {target['target']}: {'met' if target['met'] else 'NOT met'})"
                if target
                else ""
            )
            lines.append(f"{key}: {value:.3f}{verdict}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.quick:
        # Tiny tensors: one thread. OpenMP workers spinning on a shared, busy CPU make
        # small ops 10-100x slower, and --quick is a smoke test, not a measurement.
        torch.set_num_threads(1)
    device = torch.device(args.device)
    layout = models.QUICK_LAYOUT if args.quick else models.LAYOUT
    notes: list[str] = []
    if not args.warm_compile_cache:
        # Inductor keeps compiled graphs on disk across processes: a second run would report
        # cache hits (seconds) as compile times. Compile into a fresh folder instead.
        fresh = tempfile.mkdtemp(prefix="denoisekit-bench-inductor-")
        atexit.register(shutil.rmtree, fresh, ignore_errors=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = fresh
        os.environ["TRITON_CACHE_DIR"] = os.path.join(fresh, "triton")
    names = list(args.model_list)
    if "diffusers" in names and not models.diffusers_available():
        names.remove("diffusers")
        notes.append("diffusers is not installed: its side is skipped (pip install -e '.[bench]')")
        log(f"note: {notes[-1]}")
    result: dict[str, Any] = {
        "meta": {
            "command": " ".join(
                ["python", "benchmarks/bench.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "machine": bm.machine_info(device),
            "load_before": bm.load_average(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "notes": notes,
        },
        "config": {
            "quick": args.quick,
            "layout": {k: list(v) if isinstance(v, tuple) else v for k, v in layout.items()},
            "models": names,
            "variants": args.variant_list,
            "batch": args.batch,
            "sample_batch": args.sample_batch,
            "ddim_steps": args.ddim_steps,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "loop_repeats": args.loop_repeats,
            "compile_mode": args.compile_mode,
            "compile_cache": "warm" if args.warm_compile_cache else "cold (fresh inductor cache)",
        },
    }
    torch.manual_seed(0)
    result["ceiling"] = measure_ceiling(device, args.quick)
    if not result["ceiling"]["bf16_native"]:
        notes.append(
            "bf16 is emulated on this CPU (no bf16 instructions): bf16 variants run with at most "
            "3 repeats, and oneDNN's bf16 convolutions can beat the emulated bf16 matmul ceiling"
        )
    result["models"] = describe_models(names, layout)
    flops = result["models"]
    if "train" in args.section_list:
        result["train"] = run_train(args, layout, names, result["ceiling"], flops)
    if "sample" in args.section_list or "check" in args.section_list:
        sample_rows, checks = run_sample(args, layout, names, result["ceiling"], flops)
        if "sample" in args.section_list:
            result["sample"] = sample_rows
        result["correctness"] = checks
    if "loop" in args.section_list:
        result["sampler_loop"] = run_loop(args, layout, names)
    if "trainloop" in args.section_list and "denoisekit" in names:
        result["train_loop"] = run_trainloop(args, layout, result.get("train", []))
    result["meta"]["load_after"] = bm.load_average()
    result["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    result["summary"] = summarize(result)
    print(render(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
        log(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
