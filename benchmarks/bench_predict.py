"""Micro-benchmark of ``Denoiser.predict``'s own cost (issue 20): integer and fractional
timesteps, around a backbone that costs next to nothing, so the conversions and the
schedule lookups/interpolation are what is timed.

    python benchmarks/bench_predict.py [--device cuda] [--batch 64] [--size 32]

Run it in two trees (this one and the previous release's, e.g. with ``PYTHONPATH`` set to
its package) on an idle machine to compare the integer path; a tree without fractional
timesteps reports only the integer rows. No number here is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils import benchmark

import denoisekit
from denoisekit import Denoiser, DiscreteSchedule


class Cheap(torch.nn.Module):
    """A backbone of one multiply: the rest of ``predict`` dominates."""

    def __init__(self, time_input: str) -> None:
        super().__init__()
        self.time_input = time_input

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x_t * 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-run-time", type=float, default=2.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    schedule = DiscreteSchedule.from_betas(torch.linspace(1e-4, 0.02, 1000))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device)
    t_int = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
    t_frac = (t_int.double() + 0.37).clamp(max=999).to(device)
    rows = []
    for prediction in ("eps", "v"):
        for time_input in ("timestep", "log_snr"):
            den = Denoiser(Cheap(time_input), schedule, prediction)
            cases = {"integer": t_int}
            try:
                den.predict(x, t_frac)
                cases["fractional"] = t_frac
            except TypeError:  # a tree without fractional timesteps
                pass
            for name, t in cases.items():
                den.predict(x, t)  # tables cached on the device
                timer = benchmark.Timer(
                    stmt="den.predict(x, t)",
                    globals={"den": den, "x": x, "t": t},
                    num_threads=args.threads,
                )
                m = timer.blocked_autorange(min_run_time=args.min_run_time)
                rows.append(
                    {
                        "prediction": prediction,
                        "time_input": time_input,
                        "t": name,
                        "median_us": round(m.median * 1e6, 2),
                        "iqr_us": round(m.iqr * 1e6, 2),
                    }
                )
    print(json.dumps({"denoisekit": denoisekit.__file__, "device": str(device), "rows": rows}))
    for r in rows:
        print(
            f"{r['prediction']:>4} {r['time_input']:>9} {r['t']:>10}: "
            f"{r['median_us']:9.2f} us (IQR {r['iqr_us']:.2f})"
        )


if __name__ == "__main__":
    main()
