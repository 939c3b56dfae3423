"""What the commands write, checked before any work: nothing the user made is replaced
without ``--overwrite``.

* :func:`check_output_files`: files named on the command line (``sample --out``,
  ``--grid``, ``--trajectory``) must not be folders, sit under a file, repeat one another,
  or exist (unless ``overwrite``).
* :func:`check_output_folder`: a folder a command fills (``train --out``: a run,
  ``compare --out``) must not already hold such outputs (unless ``overwrite``);
  :class:`denoisekit.engine.replace.FolderWriter` then replaces exactly those, once the
  new ones are complete, leaving any other file in the folder.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from denoisekit.errors import OutputError

#: What ``denoisekit compare`` writes in its folder.
COMPARE_OUTPUTS: tuple[str, ...] = ("compare.md", "compare.csv", "compare.png", "variants", "train")


def check_output_files(files: Iterable[tuple[str, Path | None]], *, overwrite: bool) -> None:
    """Check ``(flag, path)`` outputs before any work (``None`` paths are skipped).

    Raises:
        OutputError: one line naming the flag and the path: a folder, a path under a
            file, the same file for two flags, or an existing file without ``overwrite``.
    """
    seen: dict[Path, str] = {}
    for flag, path in files:
        if path is None:
            continue
        _check_parents(flag, path)
        if path.is_dir():
            raise OutputError(f"{flag} {path}: is a folder; name a file in it")
        key = path.resolve()
        if key in seen:
            raise OutputError(f"{flag} {path}: is also {seen[key]}; name two different files")
        seen[key] = flag
        if path.exists() and not overwrite:
            raise OutputError(
                f"{flag} {path}: the file exists; pass --overwrite to replace it, or name another"
            )


def check_output_folder(
    folder: Path, names: Sequence[str], *, overwrite: bool, what: str, fix: str
) -> list[str]:
    """Check a folder a command will fill with ``names``, before any work.

    Args:
        folder: the folder (need not exist; an empty or unrelated one is fine).
        names: the files and folders the command writes in it.
        overwrite: the user passed ``--overwrite``: existing outputs are allowed.
        what: what the outputs make up, for the message (``"a run"``).
        fix: how else to go on, for the message (``"resume it with --resume, "``).

    Returns:
        The ``names`` that exist (``--overwrite`` clears them with :func:`clear_outputs`).

    Raises:
        OutputError: the folder is a file or under one, or holds outputs without
            ``overwrite``; one line saying how to go on.
    """
    _check_parents("--out", folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--out {folder}: is a file, not a folder; pick a folder")
    found = [name for name in names if (folder / name).exists() or (folder / name).is_symlink()]
    if found and not overwrite:
        listed = ", ".join(n + ("/" if (folder / n).is_dir() else "") for n in found)
        raise OutputError(
            f"{folder}: already holds {what} ({listed}); {fix}replace it with --overwrite, "
            "or pick a new folder with --out DIR"
        )
    return found


def _check_parents(flag: str, path: Path) -> None:
    """The nearest existing ancestor of ``path`` must be a folder."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{flag} {path}: {parent} is a file, not a folder")
            return
