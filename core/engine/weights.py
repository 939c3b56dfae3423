"""Weights in and out of runs: safetensors files, ``weights_only`` loads, and a run's
weights as the start of another (``train.init_from``).

Nothing here unpickles: weights load with safetensors or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from denoisekit.engine.checkpoint import load_checkpoint, strip_compile_prefix
from denoisekit.engine.run import Run
from denoisekit.engine.run_folder import find_checkpoint
from denoisekit.engine.weights_fit import load_fitting
from denoisekit.errors import CheckpointError
from denoisekit.files import load_safetensors, split_weights_file

log = logging.getLogger(__name__)

#: The weight files of a diffusers model folder, in the order they are looked for.
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A weights file: ``.safetensors``, or a ``.bin``/``.pt`` read with ``weights_only``."""
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: not a readable weights file ({line[:200]})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    return state


def load_weights(
    run: Run, model: Mapping[str, Any], *, sampling: Mapping[str, Any] | None, source: str
) -> None:
    """Set the trained weights and, when given, the sampling weights (EMA where on)."""
    target = run.pm.hook.denoisekit_sampling_model(run=run)
    pairs = [(run.model, model)]
    if sampling is not None and target is not run.model:
        pairs.append((target, sampling))
    for module, weights in pairs:
        load_fitting(module, strip_compile_prefix(weights), source=source)


def init_from(run: Run, path: Path) -> None:
    """Start ``run`` from the weights of a run folder or checkpoint (``train.init_from``):
    the trained weights, and the hooks' state (the EMA weights) where the source has it;
    the optimizer, schedule, data order and step stay fresh. A ``.safetensors`` file of the
    checkpoint hook gives ``model.*`` and ``ema.*`` (the sampling weights; else ``model.*``)."""
    if path.suffix == ".safetensors":  # the checkpoint hook's: model.* and ema.* weights
        model, sampling = split_weights_file(read_weights(path))
        load_weights(run, model, sampling=sampling, source=str(path))
        return
    checkpoint = find_checkpoint(path)
    state = load_checkpoint(checkpoint, map_location=run.device)
    load_weights(run, state["model"], sampling=None, source=str(checkpoint))
    try:
        run.pm.hook.denoisekit_load_state_dict(run=run, state=state.get("hooks", {}))
    except (KeyError, RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [repr(exc)])[0]
        raise CheckpointError(
            f"{checkpoint}: the hooks' state does not fit this recipe's run ({first[:200]})"
        ) from exc
    log.info("initialized from %s", checkpoint)
