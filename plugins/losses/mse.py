"""Mean-squared-error denoising loss with eps, x0 or v targets and optional min-SNR weighting.

*Notation*: ``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps``,
``snr_t = alpha_bar_t / (1 - alpha_bar_t)``. Targets: ``eps`` (Ho et al. 2020, L_simple),
``x0``, or ``v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0`` (Salimans & Ho 2022).

Min-SNR-gamma weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
Weighting Strategy", section 3.4) weights every timestep as the x0-space loss clipped at
``gamma``: ``min(snr, gamma)`` for an x0 target, which is ``min(snr, gamma) / snr`` for an
eps target and ``min(snr, gamma) / (snr + 1)`` for a v target.
"""

from __future__ import annotations

import attrs
import torch

from denoisekit import ComponentSpec, hookimpl
from denoisekit.config import option, positive_finite
from denoisekit.denoiser import PREDICTION_TYPES as PREDICTIONS
from denoisekit.diffusion import DiscreteSchedule, v_from_eps_x0


@attrs.frozen(kw_only=True)
class MSELossConfig:
    """Options of the MSE loss."""

    prediction: str = option(
        "eps",
        "what the backbone predicts: eps (noise), x0 (clean data) or v",
        validator=attrs.validators.in_(PREDICTIONS),
    )
    min_snr_gamma: float | None = option(
        None,
        "min-SNR-gamma weighting (Hang et al. 2023; 5 is the paper's choice); None: unweighted",
        validator=attrs.validators.optional(positive_finite),
    )


class MSELoss:
    """Per-sample MSE between the backbone output and the target of its prediction type.

    Args:
        schedule: the training schedule (gives ``alpha_bar`` and the SNR).
        prediction_type: ``"eps"``, ``"x0"`` or ``"v"``.
        min_snr_gamma: ``gamma`` of min-SNR weighting, or ``None`` for weight 1.
    """

    def __init__(
        self,
        schedule: DiscreteSchedule,
        prediction_type: str = "eps",
        min_snr_gamma: float | None = None,
    ) -> None:
        if prediction_type not in PREDICTIONS:
            raise ValueError(
                f"prediction_type must be one of {', '.join(PREDICTIONS)}: {prediction_type!r}"
            )
        schedule = DiscreteSchedule.of(schedule)
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.min_snr_gamma = min_snr_gamma
        self._weights = (
            None
            if min_snr_gamma is None
            else _min_snr_weights(schedule.snr, prediction_type, min_snr_gamma)
        )
        self._weight_cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def target(self, *, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The regression target for a batch noised with ``noise`` at timesteps ``t``."""
        if self.prediction_type == "eps":
            return noise
        if self.prediction_type == "x0":
            return x0
        return v_from_eps_x0(self.schedule, t, noise, x0)

    def weights(self, t: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        """Per-sample weights at timesteps ``t`` (``None`` when unweighted)."""
        if self._weights is None:
            return None
        key = (t.device, dtype)
        table = self._weight_cache.get(key)
        if table is None:
            table = self._weight_cache[key] = self._weights.to(t.device, dtype)
        return table[t]

    def __call__(
        self,
        model_output: torch.Tensor,
        *,
        x0: torch.Tensor,
        noise: torch.Tensor,
        t: torch.Tensor,
    ) -> torch.Tensor:
        """Return the unreduced loss, shape ``(B,)``: mean over every non-batch dimension.

        Computed in at least float32 (half-precision outputs under autocast are upcast).
        """
        dtype = torch.promote_types(model_output.dtype, torch.float32)
        target = self.target(x0=x0.to(dtype), noise=noise.to(dtype), t=t)
        err = (model_output.to(dtype) - target).square()
        loss = err.reshape(err.shape[0], -1).mean(dim=1)
        w = self.weights(t, dtype)
        return loss if w is None else loss * w

    def __repr__(self) -> str:
        return (
            f"MSELoss(prediction_type={self.prediction_type!r}, "
            f"min_snr_gamma={self.min_snr_gamma!r})"
        )


def _min_snr_weights(snr: torch.Tensor, prediction_type: str, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights per timestep, float64 (Hang et al. 2023, eq. 9 and appendix)."""
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "eps":
        return clipped / snr
    if prediction_type == "x0":
        return clipped
    return clipped / (snr + 1.0)


def build_mse(config: MSELossConfig, *, schedule: DiscreteSchedule) -> MSELoss:
    """Build the MSE loss for ``schedule``."""
    return MSELoss(schedule, config.prediction, config.min_snr_gamma)


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            kind="loss",
            name="mse",
            config=MSELossConfig,
            build=build_mse,
            summary="MSE to the eps, x0 or v target, optional min-SNR-gamma weighting.",
        )
    ]
