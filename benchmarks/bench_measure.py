"""Measurement helpers of ``benchmarks/bench.py``: timing statistics, the machine's
matrix-product ceiling, FLOP counts and a description of the machine.

Nothing here knows about U-Nets: the model side is ``bench_models.py``.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

# --------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (a no-op on the CPU, where every op is synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stats(samples: list[float]) -> dict[str, float]:
    """``{"median", "min", "max", "n"}`` of a non-empty list of numbers."""
    if not samples:
        raise ValueError("stats() needs at least one sample")
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "n": len(samples),
    }


def time_calls(
    fn: Callable[[], Any],
    *,
    warmup: int,
    repeats: int,
    device: torch.device,
    budget_s: float | None = None,
) -> list[float]:
    """Seconds per call of ``fn`` for ``repeats`` calls after ``warmup`` unmeasured ones.

    With ``budget_s``, stop early once the measured calls took that long (at least two
    are always measured), so that a very slow variant (bfloat16 emulated on a CPU without
    bfloat16 instructions) cannot take the whole benchmark's time.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    gc.collect()
    times: list[float] = []
    spent = 0.0
    for i in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        spent += times[-1]
        if budget_s is not None and i >= 1 and spent > budget_s:
            break
    return times


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    repeats: int,
    device: torch.device,
    budget_s: float | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each function, measured round-robin (A, B, A, B, ...).

    Interleaving spreads slow drifts of a shared machine's load over every contender
    instead of over whichever ran last. Warm-up is the caller's.
    """
    gc.collect()
    times: dict[str, list[float]] = {k: [] for k in fns}
    spent = 0.0
    for i in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
            spent += times[name][-1]
        if budget_s is not None and i >= 1 and spent > budget_s:
            break
    return times


# --------------------------------------------------------------------------- ceiling


def matmul_gflops(
    dtype: torch.dtype,
    device: torch.device,
    *,
    max_size: int = 2048,
    repeats: int = 5,
    budget_s: float = 3.0,
) -> dict[str, Any]:
    """The best GFLOP/s of square matrix products ``n × n @ n × n`` in ``dtype``.

    Starts at ``n = 256`` and doubles up to ``max_size`` while one product takes under a
    tenth of ``budget_s`` (so an emulated dtype is measured small rather than for
    minutes). Reports the best (median over ``repeats``) size: the ceiling convolutions
    and linear layers can at most reach.
    """
    best: dict[str, Any] = {"gflops": 0.0, "n": 0}
    n = 256
    while n <= max_size:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        first = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        first = time.perf_counter() - first
        times = time_calls(
            lambda a=a, b=b: torch.mm(a, b),
            warmup=1,
            repeats=repeats,
            device=device,
            budget_s=budget_s / 2,
        )
        gflops = 2 * n**3 / statistics.median(times) / 1e9
        if gflops > best["gflops"]:
            best = {"gflops": gflops, "n": n}
        if first > budget_s / 10:
            break
        n *= 2
    return best


# --------------------------------------------------------------------------- FLOPs


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the matrix products, convolutions and attention ``fn`` runs (torch's count).

    ``torch.utils.flop_counter`` counts a multiply-add as two FLOPs, for forward and
    backward ops alike; element-wise ops are not counted (they are memory-bound).
    """
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# --------------------------------------------------------------------------- machine


def cpu_model() -> str:
    """The CPU's model name (``lscpu``'s "Model name"), or ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The vector-extension flags of the CPU that matter to torch kernels."""
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (``uptime``), where the OS has them."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info(device: torch.device) -> dict[str, Any]:
    """Where the numbers come from: CPU / GPU, core and thread counts, versions."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        info["diffusers"] = None
    return info
