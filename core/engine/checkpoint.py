"""Checkpoints: atomic writes, safe loads (``weights_only=True``), clear errors.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(weights_only=True)`` and never unpickles arbitrary objects.

Atomic writes go through a temporary file beside the target, named
``.<name>.denoisekit-<host>-<pid>.<random>.tmp``. A process killed mid-write (``kill -9``)
leaves it behind; the next write into that folder (and a training run's start, for its
checkpoints) removes the ones of this host whose process is gone
(:func:`remove_stale_temporaries`). A full disk or a file-size limit is a one-line
:class:`~denoisekit.engine.outputs.OutputError` naming the file, and leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch

from denoisekit.engine.outputs import OutputError
from denoisekit.errors import CheckpointError

log = logging.getLogger(__name__)

#: Format version stored in every checkpoint.
FORMAT_VERSION = 1

_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
_TEMP_RE = re.compile(r"^\..+\.denoisekit-(?P<host>[A-Za-z0-9]*)-(?P<pid>\d+)\.\w+\.tmp$")

_UMASK = os.umask(0)  # read the process umask once (setting it is the only way to read it)
os.umask(_UMASK)


def temporary_prefix(path: Path | str) -> str:
    """The name prefix of this process's temporary files for ``path``:
    ``.<name>.denoisekit-<host>-<pid>.`` (complete it with ``<random>.tmp``)."""
    return f".{Path(path).name}.denoisekit-{_HOST}-{os.getpid()}."


def remove_stale_temporaries(folder: Path | str) -> list[Path]:
    """Remove the temporary files that killed writers on this host left in ``folder``.

    Only files named by :func:`temporary_prefix` whose process no longer runs are
    removed: a live writer's file, and files of other hosts (a shared file system), stay.

    Returns:
        The removed files.
    """
    try:
        entries = list(Path(folder).iterdir())
    except OSError:  # no such folder (yet), or not a folder
        return []
    removed = []
    for path in entries:
        match = _TEMP_RE.match(path.name)
        if match and match["host"] == _HOST and not _process_alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
            log.warning("removed %s, left by an interrupted write (process %s)", path, match["pid"])
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill would terminate it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


@contextmanager
def atomic_write(path: Path | str) -> Iterator[BinaryIO]:
    """Write ``path`` atomically: yield a binary handle on a temporary file in the same
    folder; on success fsync it, rename it over ``path`` and fsync the folder. On an
    exception the temporary file is removed and ``path`` keeps its previous content.

    Stale temporary files of killed writers in the folder are removed first.

    Raises:
        OutputError: the file cannot be written (no space left, a file-size limit, a file
            where a folder should be, no permission); nothing is left behind.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)
        fd, tmp_name = tempfile.mkstemp(
            prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent
        )
    except OSError as exc:
        raise OutputError(f"{path}: cannot write here ({exc.strerror or exc})") from exc
    try:
        if hasattr(os, "fchmod"):  # mkstemp's 0600 → what open() would have given
            os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        interrupt = _interrupt(exc)
        if interrupt is not None and interrupt is not exc:
            # Ctrl-C or SIGTERM inside torch.save's writer comes out as a RuntimeError
            # ("unexpected pos"): give the interrupt back, so the run stops as interrupted.
            raise interrupt from None
        cause = _os_error(exc)
        if cause is not None:
            raise OutputError(
                f"{path}: cannot write ({cause.strerror or cause}); the file is unchanged: "
                "free some space (or raise the file-size limit) and run again"
            ) from exc
        raise
    _fsync_dir(path.parent)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it was raised from or during (``__cause__`` / ``__context__``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        yield current
        seen.add(id(current))
        current = current.__cause__ or current.__context__


def _interrupt(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (Ctrl-C, or the loop's SIGTERM) behind an exception, if any."""
    return next((e for e in _chain(exc) if isinstance(e, KeyboardInterrupt)), None)


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind a failed write, if any (torch wraps it in a RuntimeError)."""
    for cause in _chain(exc):
        if not isinstance(cause, Exception):  # an interrupt or exit: not a write failure
            return None
        if isinstance(cause, OSError) and cause.errno is not None:
            return cause
    return None


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
