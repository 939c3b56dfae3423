"""RePaint (Lugmayr et al. 2022, Algorithm 1 with the time-travel schedule of their code).

Inpainting by ancestral DDPM steps on ``steps`` respaced timesteps: each reverse step
draws the unknown pixels from the posterior ``q(x_s | x_t, x0^)`` and the known ones by
noising the input to ``s``; every ``jump_length`` steps the chain is sent back up by
``jump_length`` steps (``x_t ~ q(x_t | x_s)``), ``resample - 1`` times, so that the
generated part harmonizes with the known part. ``resample = 1`` is the plain replacement
method with DDPM steps.

Given a denoiser that corrects the ``x0`` estimate itself (``ddnm``, ``pigdm``, ``mmps`` of
:mod:`denoisekit.engine.inpainting`; ``replace_known=False``), the same loop is DDNM's time
travel (Wang et al. 2023, section 3.3): every pixel takes the posterior step and the known
pixels of ``x`` are not reset.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch

from denoisekit.denoiser import clip_to_range
from denoisekit.diffusion import DiscreteSchedule, q_posterior, q_sample, randn, spaced_timesteps


def repaint_schedule(steps: int, jump_length: int, resample: int) -> list[int]:
    """Positions on the respaced chain (``steps - 1`` = noisiest .. ``-1`` = the data), in
    visiting order; a rise is a jump back."""
    jumps = {j: resample - 1 for j in range(0, steps - jump_length, jump_length)}
    t, out = steps, []
    while t >= 1:
        t -= 1
        out.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                out.append(t)
    out.append(-1)
    return out


def num_evaluations(steps: int, jump_length: int, resample: int) -> int:
    """Network evaluations of one RePaint run: one per reverse step."""
    path = repaint_schedule(steps, jump_length, resample)
    return sum(1 for a, b in itertools.pairwise(path) if b < a)


@torch.no_grad()
def repaint(
    denoiser: Any,
    x_T: torch.Tensor,
    known: torch.Tensor,
    mask: torch.Tensor,
    *,
    steps: int,
    jump_length: int = 10,
    resample: int = 10,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    cond: torch.Tensor | None = None,
    replace_known: bool = True,
) -> torch.Tensor:
    """Inpaint ``known`` where ``mask == 1`` (``0`` = keep), starting from ``x_T``.

    Args:
        steps: respaced timesteps of the chain (``linspace`` spacing, from ``T - 1`` to 0).
        generator: per-image generators for every draw (as samplers get them).
        replace_known: reset the known pixels of ``x`` to the noised input at each step
            (RePaint); False for a denoiser that corrects its ``x0`` (DDNM's time travel).
    """
    schedule = DiscreteSchedule.of(denoiser.schedule)
    ts = spaced_timesteps(schedule.alphas_cumprod, steps, "linspace")
    # The respaced chain: its index is a position (ascending), its posterior and forward
    # process are the chain's steps (Improved DDPM, section 4).
    chain, t_of = schedule.respace(ts)
    ab = chain.alphas_cumprod.tolist()
    mask = mask.to(x_T.dtype)
    batch, shape = x_T.shape[0], tuple(x_T.shape)
    t_of, position = t_of.to(x_T.device), torch.arange(len(ts), device=x_T.device)

    def noise() -> torch.Tensor:
        return randn(shape, generator, device=x_T.device, dtype=x_T.dtype)

    path = repaint_schedule(len(ts), jump_length, resample)
    x = x_T
    for here, there in itertools.pairwise(path):
        if there > here:  # jump back: x_there ~ q(x_there | x_here), one step of the chain
            a = ab[there] / ab[here]
            x = math.sqrt(a) * x + math.sqrt(1.0 - a) * noise()
            continue
        _, x0 = denoiser.predict(x, t_of[here].expand(batch), cond)
        x0 = clip_to_range(x0, denoiser)
        if there < 0:
            return clip_to_range(torch.lerp(known, x0, mask), denoiser)
        mean, variance, _ = q_posterior(chain, x0, x, position[here].expand(batch))
        unknown = mean + variance.sqrt() * noise()
        if not replace_known:
            x = unknown
            continue
        known_s = q_sample(chain, known, position[there].expand(batch), noise())
        x = torch.lerp(known_s, unknown, mask)
    return clip_to_range(x, denoiser)  # pragma: no cover (the path always ends at -1)
