"""Checkpoints: atomic writes, safe loads (``weights_only=True``), clear errors.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(weights_only=True)`` and never unpickles arbitrary objects.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch

from denoisekit.errors import CheckpointError

#: Format version stored in every checkpoint.
FORMAT_VERSION = 1

_UMASK = os.umask(0)  # read the process umask once (setting it is the only way to read it)
os.umask(_UMASK)


@contextmanager
def atomic_write(path: Path | str) -> Iterator[BinaryIO]:
    """Write ``path`` atomically: yield a binary handle on a temporary file in the same
    folder; on success fsync it, rename it over ``path`` and fsync the folder. On an
    exception the temporary file is removed and ``path`` keeps its previous content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp's 0600 → what open() would have given
            os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_checkpoint(path: Path | str, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: temporary file, fsync, rename.

    A crash mid-write leaves the previous file at ``path`` intact.
    """
    path = Path(path)
    with atomic_write(path) as handle:
        torch.save({"format_version": FORMAT_VERSION, **state}, handle)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


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
            f"{reason[:200]}); pick another file from the run's checkpoints/ folder"
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
