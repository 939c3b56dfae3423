"""One writer at a time, and replace last: how commands write run and output folders.

:class:`FolderWriter` is the one way a command writes a folder (``train``,
``import-diffusers``, ``export-diffusers``, ``compare``):

1. **Lock.** The folder is made if need be and its lock file
   (:attr:`denoisekit.files.RunPaths.lock`) is locked with ``flock`` and holds the
   writer's pid. The operating system releases the lock when the process ends, however it
   ends, so a lock file left behind is never taken for a live writer. A second writer stops
   with one line naming the folder and the process holding it. Readers (``sample``,
   ``eval``) take no lock and keep working on a run that is training.
2. **Recover.** Leftovers of a writer killed on this host (below) are resolved.
3. **Check.** Outputs already there are refused without ``--overwrite`` (after the
   recovery, so the refusal names what is really there).
4. **Build beside, swap last.** New content is written to a staging folder beside the
   target (``.<name>.denoisekit-<host>-<pid>.new``); :meth:`FolderWriter.commit` marks it
   complete (a file in it listing the old and new names), moves the old outputs into
   ``.<name>.denoisekit-<host>-<pid>.old``, the new ones in, and deletes both. A command
   that fails before the commit leaves the old content as it was, and no folder it made.

A writer killed after the mark and before the swap ended leaves a complete staging folder:
the next writer of that folder finishes the swap (the new content wins). A staging folder
without the mark is deleted (the old content stands).

``train`` builds no staging folder: a run writes its files as it goes. With
``--overwrite`` the old run is moved aside (:meth:`FolderWriter.set_aside`) once the new
run is built and initialised (``train.init_from`` loaded), just before its first file;
:meth:`FolderWriter.finish` then deletes it when training ends, or, where the new run
failed or was stopped before its first checkpoint, puts it back. A ``train`` killed
outright is resolved by the next writer the same way: the new run stands if it has a
checkpoint, else the old run comes back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from denoisekit.engine.outputs import check_output_folder
from denoisekit.errors import OutputError
from denoisekit.files import (
    RUN_OUTPUTS,
    TEMPORARY_NAME,
    RunPaths,
    fsync_folder,
    stale,
    temporary_prefix,
    write_bytes,
)

log = logging.getLogger(__name__)

#: The file that marks a staging folder complete: ``{"old": [...], "new": [...]}``.
COMPLETE = ".denoisekit-complete.json"


class FolderWriter:
    """The writer of one folder: its lock, its staging folder and the swap (see above).

    Args:
        folder: the run or output folder.
        names: the outputs the command writes there (:data:`denoisekit.files.RUN_OUTPUTS`).
        overwrite: existing outputs may be replaced (``--overwrite``).
        what, fix: for the refusal without ``overwrite`` (``"a run"``, how else to go on).
        check: refuse existing outputs (off for ``train --resume``).
    """

    def __init__(
        self,
        folder: Path,
        names: Sequence[str],
        *,
        overwrite: bool,
        what: str,
        fix: str = "",
        check: bool = True,
    ) -> None:
        self.folder, self.names = Path(folder), tuple(names)
        self.overwrite, self.what, self.fix, self.check = overwrite, what, fix, check
        self.existing: list[str] = []
        self._fd: int | None = None
        self._made: list[Path] = []
        self._marked = False
        self._aside: list[str] | None = None
        real = self.folder.resolve()
        prefix = temporary_prefix(real)
        self.staging = real.parent / (prefix + "new")
        self.trash = real.parent / (prefix + "old")

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> FolderWriter:
        check_output_folder(  # a file in the way: one line before any lock
            self.folder, self.names, overwrite=True, what=self.what, fix=self.fix
        )
        self._lock()
        try:
            recover(self.folder.resolve())
            if self.check:
                self.existing = check_output_folder(
                    self.folder, self.names, overwrite=self.overwrite, what=self.what, fix=self.fix
                )
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if not self._marked:  # a staging folder marked complete stays for recovery
                shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            self._unlock()

    def staged(self) -> Path:
        """The staging folder to build the new content in (made on first call)."""
        self.staging.mkdir(exist_ok=True)
        return self.staging

    def commit(self) -> None:
        """Swap the staged content in: old outputs out, new ones in, both folders deleted."""
        new = sorted(p.name for p in self.staging.iterdir() if p.name != COMPLETE)
        old = [n for n in self.names if _exists(self.folder / n)]
        record = json.dumps({"old": old, "new": new}).encode("utf-8")
        write_bytes(self.staging / COMPLETE, record)  # complete: from here the new wins
        self._marked = True
        swap(self.folder.resolve(), self.staging, self.trash, old, new)

    # ------------------------------------------------------------------ train

    def set_aside(self) -> None:
        """Move the old outputs out of the way of a run about to write its first file."""
        self._aside = [n for n in self.names if _exists(self.folder / n)]
        if self._aside:
            self.trash.mkdir(exist_ok=True)
            for name in self._aside:
                os.replace(self.folder / name, self.trash / name)
            fsync_folder(self.folder)

    def finish(self, succeeded: bool) -> None:
        """After training: delete the old run; put it back where the new run failed or was
        stopped before its first checkpoint."""
        if not self._aside:  # nothing was set aside (a new run folder)
            self._aside = None
            return
        if succeeded or RunPaths(self.folder).last_checkpoint.is_file():
            shutil.rmtree(self.trash, ignore_errors=True)
        else:
            _restore(self.folder, self.trash, self.names)
            log.warning("%s: the new run stopped before its first checkpoint: the old run is "
                        "back", self.folder)  # fmt: skip
        self._aside = None

    # ------------------------------------------------------------------ the lock

    def _lock(self) -> None:
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        try:
            self.folder.mkdir(parents=True)
            self._made = missing  # removed again where left empty
        except FileExistsError:
            pass
        except OSError as exc:
            reason = exc.strerror or exc
            raise OutputError(f"{self.folder}: cannot make this folder ({reason})") from exc
        path = RunPaths(self.folder).lock
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            if not _try_lock(fd):
                holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                self._remove_made_folder()
                raise OutputError(
                    f"{self.folder}: another denoisekit process (pid {holder}) is writing this "
                    "folder; wait for it to finish, or pick another folder"
                )
            try:  # the file may have been unlinked by a writer that just finished
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd

    def _unlock(self) -> None:
        if self._fd is None:
            return
        RunPaths(self.folder).lock.unlink(missing_ok=True)  # unlinked while still held
        os.close(self._fd)
        self._fd = None
        self._remove_made_folder()

    def _remove_made_folder(self) -> None:
        """A folder this writer made and left empty goes (a failed command leaves none)."""
        if self._fd is None:
            with contextlib.suppress(OSError):  # not empty, or gone
                for folder in self._made:
                    folder.rmdir()


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: msvcrt's lock on the first byte
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif _exists(path):
        path.unlink()


def swap(folder: Path, staging: Path, trash: Path, old: Sequence[str], new: Sequence[str]) -> None:
    """Old outputs into ``trash``, new ones from ``staging`` in; idempotent (a writer killed
    midway is finished by :func:`recover` with the same lists)."""
    trash.mkdir(exist_ok=True)
    for name in old:  # an old output not (yet) replaced by its new version
        if _exists(folder / name) and (name not in new or _exists(staging / name)):
            os.replace(folder / name, trash / name)
    for name in new:
        if _exists(staging / name):
            os.replace(staging / name, folder / name)
    fsync_folder(folder)
    shutil.rmtree(trash)
    shutil.rmtree(staging)


def _restore(folder: Path, trash: Path, names: Sequence[str]) -> None:
    """Put the outputs set aside in ``trash`` back, in place of the new run's."""
    for name in names:
        _remove(folder / name)  # the new run's version, or its file the old run lacked
        if _exists(trash / name):
            os.replace(trash / name, folder / name)
    fsync_folder(folder)
    shutil.rmtree(trash)


def recover(folder: Path) -> list[Path]:
    """Resolve what writers of ``folder`` killed on this host left beside it: finish a
    complete swap, delete an incomplete staging folder, and for a killed ``train`` keep the
    new run if it has a checkpoint, else put the old one back. Returns what was resolved."""
    folder = Path(folder)
    try:
        siblings = sorted(folder.parent.iterdir())
    except OSError:
        return []
    resolved = []
    for path in siblings:  # "...new" sorts before "...old": staging first
        match = TEMPORARY_NAME.match(path.name)
        if not match or match["name"] != folder.name or not stale(path):
            continue
        trash = path.with_name(path.name[: -len(match["tag"])] + "old")
        if match["tag"] == "new":
            marker = path / COMPLETE
            if marker.is_file():
                lists = json.loads(marker.read_text(encoding="utf-8"))
                swap(folder, path, trash, lists["old"], lists["new"])
                log.warning("%s: finished replacing its content (a writer was killed)", folder)
            else:
                shutil.rmtree(path, ignore_errors=True)
                shutil.rmtree(trash, ignore_errors=True)
            resolved.append(path)
        elif match["tag"] == "old" and path.is_dir():
            if RunPaths(folder).last_checkpoint.is_file():
                shutil.rmtree(path)
            else:
                _restore(folder, path, RUN_OUTPUTS)
                log.warning("%s: the run a killed train replaced is back", folder)
            resolved.append(path)
    return resolved
