"""DPS against the exact conditional on the Gaussian problem of tests/core/test_inpainting.py
(docs/steering.md, "Checked on Gaussian data"): the largest error of an unknown coordinate's
mean and the ratio of each variance to the exact one, for several samplers and steps
``zeta'``, beside replacement. Usage (from the repository root)::

    python benchmarks/dps_gaussian.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "core"))

from test_inpainting import (
    KNOWN,
    UNKNOWN,
    D,
    Y,
    exact_conditional,
    problem,
)

from denoisekit.denoiser import Denoiser
from denoisekit.engine.inpainting import inpainting_denoiser
from denoisekit.plugins.samplers.ddim import DDIMConfig, DDIMSampler
from denoisekit.plugins.samplers.dpmpp_2m import DPMSolverConfig, DPMSolverSampler
from denoisekit.testing.conformance import toy_schedule

SAMPLERS = {
    "ddim-eta1-1000": DDIMSampler(DDIMConfig(steps=1000, eta=1.0, clip_denoised=False)),
    "ddim-eta1-100": DDIMSampler(DDIMConfig(steps=100, eta=1.0, clip_denoised=False)),
    "dpmpp-2m-20": DPMSolverSampler(DPMSolverConfig(steps=20, clip_denoised=False)),
}


def main(n: int = 2000) -> None:
    mean, cov = exact_conditional()
    print("exact conditional: mean", mean.tolist(), "variance", cov.diag().tolist())
    sched = toy_schedule(1000)
    model, known, mask = problem(n, sched)
    x_T = torch.randn(n, 1, 1, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name, sampler in SAMPLERS.items():
        for method, scale in (("dps", 1.0), ("dps", 0.3), ("dps", 0.1), ("replacement", None)):
            den = inpainting_denoiser(method, Denoiser(model, sched), known, mask, x_T, scale=scale)
            out = sampler.sample(den, x_T, generator=torch.Generator().manual_seed(1)).reshape(n, D)
            unknown = out[:, UNKNOWN]
            error = float((unknown.mean(0) - mean).abs().max())
            ratio = (torch.cov(unknown.T).diag() / cov.diag()).tolist()
            drift = float((out[:, KNOWN] - Y).abs().max())  # before the edit re-imposes them
            print(
                f"{name:15s} {method:11s} zeta'={scale}: mean error {error:.3f}, variance "
                f"ratios {', '.join(f'{r:.2f}' for r in ratio)}, known-pixel drift {drift:.2f}"
            )


if __name__ == "__main__":
    main()
