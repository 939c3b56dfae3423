"""Checkpoints: atomic writes, safe loads (``weights_only=True``), clear errors.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(weights_only=True)`` and never unpickles arbitrary objects.

Writes go through :func:`denoisekit.files.atomic_write` (temporary file, fsync, rename):
a process killed mid-write leaves the previous file intact, and a full disk is one
:class:`~denoisekit.errors.OutputError` line naming the file.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from denoisekit.errors import CheckpointError, OutputError
from denoisekit.files import atomic_write, temporary_prefix

log = logging.getLogger(__name__)

#: Format version stored in every checkpoint.
FORMAT_VERSION = 1


def save_checkpoint(path: Path | str, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: temporary file, fsync, rename.

    A crash mid-write leaves the previous file at ``path`` intact.
    """
    path = Path(path)
    with atomic_write(path) as handle:
        torch.save({"format_version": FORMAT_VERSION, **state}, handle)
    return path


def link_checkpoint(target: Path | str, link: Path | str) -> Path:
    """Make ``link`` name ``target``'s bytes: a hard link (else a copy, fsynced), swapped in
    atomically, so ``link`` is always a complete checkpoint."""
    target, link = Path(target), Path(link)
    tmp = link.with_name(temporary_prefix(link) + "link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(target, tmp)
        except OSError:
            shutil.copyfile(target, tmp)
            with tmp.open("rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, link)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        reason = exc.strerror or exc
        raise OutputError(f"{link}: cannot write ({reason}); {target} is intact") from exc
    return link


def load_checkpoint(
    path: Path | str, map_location: str | torch.device = "cpu", *, mmap: bool = False
) -> dict[str, Any]:
    """Load a checkpoint safely; a missing or corrupt file is a one-line CheckpointError.

    ``mmap`` maps the tensors instead of reading them (cheap when only the metadata, e.g.
    the stored recipe, is wanted).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable denoisekit checkpoint ({type(exc).__name__}: "
            f"{reason[:200]}); pick another checkpoint (a step file beside it)"
        ) from exc
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path}: not a denoisekit checkpoint (no format_version key)")
    if state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {state['format_version']} is newer than this "
            f"denoisekit reads ({FORMAT_VERSION}); upgrade denoisekit"
        )
    return state


def strip_compile_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove ``torch.compile``'s ``_orig_mod.`` prefixes from state-dict keys."""
    return {key.replace("_orig_mod.", ""): value for key, value in state_dict.items()}
