"""Training progress on the console (``[hooks.progress]``).

On a terminal: a tqdm bar counting steps, with the loss, learning rate and images/s of the
last logging interval. Elsewhere (a log file, CI, a notebook's captured output): one plain
line per logging interval (``train.log_every``)::

    step 100/1000 loss 0.0512 lr 2.0e-04 312 img/s

Both read the scalars the core computes at logging intervals, so they add no host sync.

Recipe example::

    [hooks.progress]
    bar = "auto"
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import attrs

from denoisekit import ComponentSpec, hookimpl
from denoisekit.config import option
from denoisekit.hookspecs import Run

BAR_CHOICES = ("auto", "always", "never")


@attrs.frozen(kw_only=True)
class ProgressConfig:
    """Options of ``[hooks.progress]``."""

    bar: str = option(
        "auto",
        "tqdm bar: auto (when stdout is a terminal), always, never (plain lines)",
        validator=attrs.validators.in_(BAR_CHOICES),
    )


def format_line(step: int, total: int, scalars: dict[str, float]) -> str:
    """``step 100/1000 loss 0.0512 lr 2.0e-04 312 img/s`` (missing scalars left out)."""
    parts = [f"step {step}/{total}"]
    if "loss" in scalars:
        parts.append(f"loss {scalars['loss']:.4f}")
    if "lr" in scalars:
        parts.append(f"lr {scalars['lr']:.1e}")
    if "images_per_sec" in scalars:
        parts.append(f"{scalars['images_per_sec']:.0f} img/s")
    return " ".join(parts)


class ProgressHook:
    """The run hook.

    Args:
        config: the options.
        stream: where to write (default: ``sys.stdout`` at train start).
    """

    #: Writes files or the console: rank 0 only under torchrun.
    rank_zero_only = True

    def __init__(self, config: ProgressConfig, stream: TextIO | None = None) -> None:
        self.config = config
        self._stream = stream
        self.bar: Any = None

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stdout

    def use_bar(self) -> bool:
        """Whether to draw a tqdm bar (else plain lines)."""
        if self.config.bar != "auto":
            return self.config.bar == "always"
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    @hookimpl
    def denoisekit_train_start(self, run: Run) -> None:
        if self.use_bar():
            from tqdm import tqdm

            self.bar = tqdm(
                total=run.total_steps,
                initial=run.step,
                unit="step",
                file=self.stream,
                dynamic_ncols=True,
            )

    @hookimpl
    def denoisekit_train_step_end(self, step: int) -> None:
        # Only a counter: tqdm redraws at most a few times a second.
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    @hookimpl
    def denoisekit_log_scalars(self, run: Run, step: int, scalars: dict[str, float]) -> None:
        if self.bar is not None:
            postfix = {}
            if "loss" in scalars:
                postfix["loss"] = f"{scalars['loss']:.4f}"
            if "lr" in scalars:
                postfix["lr"] = f"{scalars['lr']:.1e}"
            if "images_per_sec" in scalars:
                postfix["img/s"] = f"{scalars['images_per_sec']:.0f}"
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(step - self.bar.n)
            return
        self.stream.write(format_line(step, run.total_steps, scalars) + "\n")
        self.stream.flush()

    @hookimpl
    def denoisekit_train_end(self) -> None:
        self._close()

    @hookimpl
    def denoisekit_train_error(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    """Register ``progress``."""
    return [
        ComponentSpec(
            kind="hook",
            name="progress",
            config=ProgressConfig,
            build=ProgressHook,
            summary="a tqdm bar on a terminal, plain periodic lines otherwise.",
        )
    ]
