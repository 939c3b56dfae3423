"""File I/O a plugin may need, so no plugin keeps a copy: :func:`atomic_write` (temporary
names ``.<name>.denoisekit-<host>-<pid>.<random>.tmp``, removed by the next write into the
folder when their writer was killed), safetensors, the weights-file format of the
checkpoint hook and ``train.init_from`` (:func:`weights_file`), and :class:`RunPaths`, a
run folder's layout: the one place its paths are spelled (hooks: ``run.paths``). torch and
safetensors are imported where they are used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from denoisekit.errors import CheckpointError, OutputError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: This host, as temporary names spell it (letters and digits).
HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
#: A temporary file or folder of a denoisekit writer: ``.<name>.denoisekit-<host>-<pid>.<tag>``.
TEMPORARY_NAME = re.compile(
    r"^\.(?P<name>.+)\.denoisekit-(?P<host>[A-Za-z0-9]*)-(?P<pid>\d+)\.(?P<tag>[\w.]+)$"
)
#: Key prefixes of a weights file: the trained weights and the sampling (EMA) weights.
MODEL_PREFIX, SAMPLING_PREFIX = "model.", "ema."

#: What a run writes in its folder; any of them means the folder holds a run.
RUN_OUTPUTS: tuple[str, ...] = tuple(
    ["recipe.toml", "versions.json", "metrics.jsonl", "checkpoints", "tensorboard", "samples"]
)

#: Environment variable naming the cache folder (see :func:`default_cache_dir`).
CACHE_ENV = "DENOISEKIT_CACHE"

_UMASK = os.umask(0)  # read the process umask once (setting it is the only way to read it)
os.umask(_UMASK)


def default_cache_dir() -> Path:
    """``$DENOISEKIT_CACHE``, else ``$XDG_CACHE_HOME/denoisekit``, else ``~/.cache/denoisekit``:
    what is kept between runs (reference statistics, classifiers, downloaded shards)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "denoisekit"


def temporary_prefix(path: Path | str) -> str:
    """The name prefix of this process's temporary files and folders for ``path``:
    ``.<name>.denoisekit-<host>-<pid>.`` (complete it with ``<random>.tmp`` or a tag)."""
    return f".{Path(path).name}.denoisekit-{HOST}-{os.getpid()}."


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (True where that cannot be told)."""
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill would terminate it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def stale(path: Path) -> bool:
    """Whether ``path`` is a temporary name of a dead writer on this host."""
    match = TEMPORARY_NAME.match(path.name)
    return bool(match) and match["host"] == HOST and not process_alive(int(match["pid"]))


def remove_stale_temporaries(folder: Path | str) -> list[Path]:
    """Remove the temporary files (``*.tmp``) that killed writers on this host left in
    ``folder``; a live writer's files, and other hosts' (a shared file system), stay."""
    try:
        entries = list(Path(folder).iterdir())
    except OSError:  # no such folder (yet), or not a folder
        return []
    removed = []
    for path in entries:
        if path.name.endswith(".tmp") and stale(path) and not path.is_dir():
            path.unlink(missing_ok=True)
            removed.append(path)
            log.warning("removed %s, left by an interrupted write", path)
    return removed


@contextmanager
def atomic_write(path: Path | str) -> Iterator[BinaryIO]:
    """Write ``path`` atomically: yield a binary handle on a temporary file in the same
    folder; on success fsync it, rename it over ``path`` and fsync the folder. On an
    exception the temporary file is removed and ``path`` keeps its previous content; a
    failed write (no space, a file-size limit, no permission) is one OutputError line."""
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
    fsync_folder(path.parent)


def write_bytes(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` with :func:`atomic_write`."""
    with atomic_write(path) as handle:
        handle.write(data)
    return Path(path)


def fsync_folder(folder: Path | str) -> None:
    """Make a folder's entries (a rename into it) durable, where the platform can."""
    with contextlib.suppress(OSError):  # platforms without directory fds
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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


# --------------------------------------------------------------------------- run folders


class RunPaths:
    """Every path of the run folder ``root``: ``recipe`` (resolved, every default filled in),
    ``versions``, ``metrics`` (the logged scalars, a JSON object a line), ``checkpoints``,
    ``last_checkpoint`` (what ``--resume`` and readers load), ``tensorboard``, ``samples``
    (grids drawn while training) and ``lock`` (held by the writer; it holds its pid)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.recipe, self.versions, self.metrics = (self.root / n for n in RUN_OUTPUTS[:3])
        self.checkpoints, self.tensorboard, self.samples = (self.root / n for n in RUN_OUTPUTS[3:])
        self.last_checkpoint = self.checkpoints / "last.pt"
        self.lock = self.root / ".denoisekit.lock"

    @classmethod
    def of_checkpoint(cls, checkpoint: Path) -> RunPaths | None:
        """The run folder holding ``checkpoint`` in its checkpoints folder, or None."""
        folder = Path(checkpoint).parent
        return cls(folder.parent) if folder.name == RUN_OUTPUTS[3] else None

    def step_checkpoint(self, step: int) -> Path:
        """The checkpoint after ``step`` optimization steps."""
        return self.checkpoints / f"step-{step:08d}.pt"

    def checkpoint_step(self, path: Path) -> int | None:
        """The step of a :meth:`step_checkpoint` file name; None for any other file."""
        match = re.match(r"^step-(\d+)\.pt$", Path(path).name)
        return int(match.group(1)) if match else None

    def relative(self, path: Path) -> str:
        """``path`` as messages name it: relative to the run folder."""
        return Path(path).relative_to(self.root).as_posix()


# --------------------------------------------------------------------------- weights


def save_safetensors(path: Path | str, tensors: Mapping[str, torch.Tensor]) -> Path:
    """Write tensors as ``.safetensors`` atomically (contiguous CPU copies)."""
    from safetensors.torch import save

    return write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def load_safetensors(path: Path | str) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file's tensors, on the CPU (unreadable: one CheckpointError line)."""
    from safetensors.torch import load_file

    try:
        return load_file(Path(path))
    except Exception as exc:
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: not a readable safetensors file ({line[:200]})") from exc


def weights_file(
    model: Mapping[str, Any], sampling: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The weights-file tensors: ``model.<key>`` the trained weights, ``ema.<key>`` the
    sampling weights (give them only where they differ from the trained ones)."""
    tensors = {MODEL_PREFIX + k: v for k, v in model.items()}
    if sampling is not None:
        tensors.update((SAMPLING_PREFIX + k, v) for k, v in sampling.items())
    return tensors


def split_weights_file(tensors: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(trained, sampling)`` weights of a :func:`weights_file`; the sampling weights are
    the trained ones where the file holds no ``ema.*`` keys."""
    model, ema = ({k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)}
                  for p in (MODEL_PREFIX, SAMPLING_PREFIX))  # fmt: skip
    return model, ema or model
