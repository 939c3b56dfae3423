"""diffusers scheduler configs (``scheduler_config.json``) ↔ ``linear``/``cosine`` schedules.

Pure functions on dicts. A schedule table is what a recipe's ``[schedule]`` holds:
``{"type": "linear", "num_timesteps": T, "beta_start": ..., "beta_end": ...}`` or
``{"type": "cosine", "num_timesteps": T, "s": 0.008, "max_beta": 0.999}``.

Conventions: diffusers' ``linear`` betas run from ``beta_start`` to ``beta_end`` whatever
``T``; ours scale both by ``1000 / T``, so the table holds ``beta * T / 1000``. diffusers'
``squaredcos_cap_v2`` is our ``cosine`` with ``s = 0.008`` and ``max_beta = 0.999``.
diffusers builds its tables in float32, ours in float64 (they agree to float32 rounding).
"""

from __future__ import annotations

from typing import Any

from denoisekit.plugins.backbones.diffusers_layout import UnsupportedLayoutError

#: Defaults of the fields read here (the same in every diffusers noise scheduler).
SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "rescale_betas_zero_snr": False,
    "prediction_type": "epsilon",
}
_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
_COSINE = {"s": 0.008, "max_beta": 0.999}


def _scale(num_timesteps: int) -> float:
    return num_timesteps / 1000.0


def schedule_from_scheduler_config(config: dict[str, Any]) -> dict[str, Any]:
    """The schedule table of a diffusers scheduler config."""
    c = {**SCHEDULER_DEFAULTS, **config}
    if c["trained_betas"] is not None:
        raise UnsupportedLayoutError("trained_betas (a list) is not supported")
    if c["rescale_betas_zero_snr"]:
        raise UnsupportedLayoutError("rescale_betas_zero_snr = True is not supported")
    steps = c["num_train_timesteps"]
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise UnsupportedLayoutError(f"num_train_timesteps = {steps!r} is not supported")
    kind = c["beta_schedule"]
    if kind == "squaredcos_cap_v2":
        return {"type": "cosine", "num_timesteps": steps, **_COSINE}
    if kind != "linear":
        raise UnsupportedLayoutError(
            f"beta_schedule = {kind!r} is not supported (only 'linear' or 'squaredcos_cap_v2')"
        )
    start, end = float(c["beta_start"]), float(c["beta_end"])
    if steps != 1000:  # ours multiply by 1000 / T (exact as is for T = 1000)
        start, end = start * _scale(steps), end * _scale(steps)
    return {"type": "linear", "num_timesteps": steps, "beta_start": start, "beta_end": end}


def prediction_from_scheduler_config(config: dict[str, Any]) -> str:
    """The ``mse`` loss's ``prediction`` (``eps``, ``v``, ``x0``) of a scheduler config."""
    kind = config.get("prediction_type", SCHEDULER_DEFAULTS["prediction_type"])
    if kind not in _PREDICTIONS:
        raise UnsupportedLayoutError(
            f"prediction_type = {kind!r} is not supported (only {', '.join(_PREDICTIONS)})"
        )
    return _PREDICTIONS[kind]


def scheduler_config_from_schedule(
    schedule: dict[str, Any], *, class_name: str = "DDPMScheduler", prediction: str = "eps"
) -> dict[str, Any]:
    """A ``DDPMScheduler``/``DDIMScheduler`` config with the betas of a schedule table.

    The table may name T ``num_timesteps`` or (older recipes) ``timesteps``; sampling
    fields (``clip_sample``, spacing) are left to diffusers' defaults or the caller.
    """
    kind = schedule.get("type")
    steps = schedule.get("num_timesteps", schedule.get("timesteps", 1000))
    by_prediction = {ours: theirs for theirs, ours in _PREDICTIONS.items()}
    if prediction not in by_prediction:
        raise UnsupportedLayoutError(f"prediction = {prediction!r} is not supported")
    out: dict[str, Any] = {"_class_name": class_name, "num_train_timesteps": steps}
    if kind == "cosine":
        for key, value in _COSINE.items():
            if schedule.get(key, value) != value:
                raise UnsupportedLayoutError(
                    f"schedule {key} = {schedule[key]!r} is not supported "
                    f"(diffusers' squaredcos_cap_v2 has {key} = {value})"
                )
        out["beta_schedule"] = "squaredcos_cap_v2"
    elif kind == "linear":
        start = float(schedule.get("beta_start", 1e-4))
        end = float(schedule.get("beta_end", 0.02))
        if steps != 1000:
            start, end = start / _scale(steps), end / _scale(steps)
        out.update(beta_schedule="linear", beta_start=start, beta_end=end)
    else:
        raise UnsupportedLayoutError(
            f"schedule type = {kind!r} is not supported (only 'linear' or 'cosine')"
        )
    out["prediction_type"] = by_prediction[prediction]
    return out
