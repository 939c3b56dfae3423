"""``loss-by-sigma``: the training loss per noise-level band (a run hook component).

Karras et al. 2022 (section 5, figure 5a) look at the loss as a function of sigma to see
which noise levels a model learns. This hook splits the schedule's ``log sigma`` range,
``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)``, into ``bins`` equal bands and, at
every logging step, adds the mean per-sample loss of each band since the last log as
``loss_sigma/<lo>-<hi>`` to the logged scalars (``metrics.jsonl``, TensorBoard).

It shows the three parts of a hook component: a config class, an object whose methods are
hook implementations (registered into the run's own plugin manager), and no host
synchronization in the step hook: sums stay on the device until the log step.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from denoisekit import ComponentSpec, hookimpl, option


def _bins(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 32:
        raise ValueError(f"'bins' must be an integer in [1, 32]: {value!r}")


@attrs.frozen(kw_only=True)
class LossBySigmaConfig:
    """Options of the ``loss-by-sigma`` hook."""

    bins: int = option(4, "equal bands of log sigma over the schedule's range", validator=_bins)


class LossBySigmaHook:
    """Accumulates per-band loss sums on the device; logs their means."""

    def __init__(self, config: LossBySigmaConfig) -> None:
        self.config = config
        self.band_of_t: torch.Tensor | None = None  # (T,) band index of each timestep
        self.labels: list[str] = []
        self.sums: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None

    @hookimpl
    def denoisekit_configure(self, run: Any) -> None:
        """Compute each timestep's band once, on the run's device."""
        ab = run.schedule.alphas_cumprod  # float64, CPU
        log_sigma = 0.5 * (torch.log1p(-ab) - torch.log(ab))
        lo, hi = float(log_sigma.min()), float(log_sigma.max())
        k = self.config.bins
        edges = torch.linspace(lo, hi, k + 1, dtype=torch.float64)
        band = torch.bucketize(log_sigma, edges[1:-1], right=True)
        self.band_of_t = band.to(run.device)
        self.labels = [
            f"loss_sigma/{edges[i].exp().item():.3g}-{edges[i + 1].exp().item():.3g}"
            for i in range(k)
        ]
        self.sums = torch.zeros(k, device=run.device)
        self.counts = torch.zeros(k, device=run.device)

    @hookimpl
    def denoisekit_train_step_end(self, loss_per_sample: torch.Tensor, t: torch.Tensor) -> None:
        """Add the step's per-sample losses to their bands (on the device, no sync)."""
        if self.sums is None:
            return
        band = self.band_of_t[t]
        losses = loss_per_sample.float()
        self.sums.index_add_(0, band, losses)
        self.counts.index_add_(0, band, torch.ones_like(losses))

    @hookimpl(tryfirst=True)
    def denoisekit_log_scalars(self, scalars: dict[str, float]) -> None:
        """Add each band's mean loss (tryfirst: before the writers consume the dict)."""
        if self.sums is None or "loss" not in scalars:
            return  # only the loop's own log lines: evaluation logs its own scalars too
        counts = self.counts.tolist()  # the one sync, at logging steps only
        means = (self.sums / self.counts.clamp(min=1)).tolist()
        for label, mean, count in zip(self.labels, means, counts, strict=True):
            if count > 0:
                scalars[label] = mean
        self.sums.zero_()
        self.counts.zero_()


def build_loss_by_sigma(config: LossBySigmaConfig) -> LossBySigmaHook:
    """Build the hook."""
    return LossBySigmaHook(config)


SPECS: list[ComponentSpec] = [
    ComponentSpec(
        kind="hook",
        name="loss-by-sigma",
        config=LossBySigmaConfig,
        build=build_loss_by_sigma,
        summary="log the training loss per band of noise levels (EDM figure 5a)",
        probe={},  # cheap to build: the registry checks that it registers cleanly
    )
]
