"""The shard files of ``type = "shards"``: the list (an index, or a brace pattern), and wids'
reader of one shard, checked for truncation."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from denoisekit.errors import DataError

logger = logging.getLogger("denoisekit.plugins.data.shards")

TAR_BLOCK = 512


def absolute(path: str | Path, base: Path) -> Path:
    """``path`` as it is when absolute, else under ``base``."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else base / path


def read_index(path: Path) -> tuple[list[Path], list[int]]:
    """The shards of a wids index (``{"wids_version": 1, "shardlist": [{"url", "nsamples"}]}``),
    relative paths read from the index's folder, and their sample counts."""
    where = f"shards: the index {path}"
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"{where} does not exist; write it with `denoisekit data pack`, or set data.shards "
            f"to the tar files (e.g. data/train-{{000000..000009}}.tar)"
        ) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{where} cannot be read as JSON ({exc}); re-pack the data") from exc
    shardlist = spec.get("shardlist") if isinstance(spec, dict) else None
    if not isinstance(shardlist, list) or not shardlist:
        raise DataError(f'{where} lists no shards (no "shardlist" entries); re-pack the data')
    paths, counts = [], []
    for i, entry in enumerate(shardlist):
        url = entry.get("url") if isinstance(entry, dict) else None
        count = entry.get("nsamples") if isinstance(entry, dict) else None
        if not isinstance(url, str) or not isinstance(count, int) or count < 0:
            raise DataError(
                f'{where}: shardlist[{i}] needs "url" (a path) and "nsamples" (a count); '
                f"re-pack the data"
            )
        if "://" in url:
            raise DataError(
                f"{where}: shardlist[{i}] is a URL ({url}); mount the storage and list local paths"
            )
        paths.append(absolute(url, path.parent))
        counts.append(count)
    return paths, counts


def expand(pattern: str, base: Path) -> list[Path]:
    """The tar files of a path or brace pattern (``train-{000000..000127}.tar``; several
    joined by ``::``, as webdataset reads them)."""
    from webdataset.shardlists import expand_urls

    paths = [absolute(p, base) for p in expand_urls(pattern)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"shards: {len(missing)} of the {len(paths)} shards of data.shards = {pattern!r} "
            f"do not exist (e.g. {missing[0]}); check the path and the brace range"
        )
    return paths


class SampleError(Exception):
    """One bad shard or sample: ``where`` (shard and member) and what is wrong."""

    def __init__(self, where: str, why: str, *, whole_shard: bool = False) -> None:
        super().__init__(f"{where} ({why})")
        self.where, self.why, self.whole_shard = where, why, whole_shard


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def open_shard(path: Path, expected: int | None = None) -> Any:
    """wids' random-access reader of one shard, checked for truncation (a size that is not
    whole 512-byte blocks, a last member or the end-of-archive blocks past the end) and
    against the index's sample count, when given.

    Raises:
        SampleError: the shard cannot be opened, is truncated, or holds another count.
    """
    from wids.wids import IndexedTarSamples

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SampleError(str(path), one_line(exc), whole_shard=True) from exc
    if size % TAR_BLOCK:
        raise SampleError(str(path), f"truncated tar: {size} bytes", whole_shard=True)
    try:
        shard = IndexedTarSamples(path=str(path))
    except Exception as exc:  # wids raises struct, OS and value errors on broken tars
        raise SampleError(str(path), f"unreadable tar: {one_line(exc)}", whole_shard=True) from exc
    if shard.reader.by_index:  # (name, header offset, size) of the regular members
        _, offset, length = shard.reader.by_index[-1]
        end = offset + TAR_BLOCK + -(-length // TAR_BLOCK) * TAR_BLOCK
        if end + 2 * TAR_BLOCK > size:  # no room for the end-of-archive blocks
            shard.close()
            raise SampleError(
                str(path), f"truncated tar: {size} bytes, no end-of-archive", whole_shard=True
            )
    if expected is not None and len(shard) != expected:
        shard.close()
        raise SampleError(
            str(path),
            f"holds {len(shard)} samples, the index says {expected}: truncated or rewritten",
            whole_shard=True,
        )
    return shard


def count_samples(paths: list[Path], on_error: str) -> list[int]:
    """Open every shard once to count its samples (no index); a bad shard counts 0 when
    skipped."""
    counts = []
    for path in paths:
        try:
            shard = open_shard(path)
        except SampleError as exc:
            if on_error == "fail":
                raise data_error(exc) from exc
            logger.warning("shards: skipped bad shard %s", exc)
            counts.append(0)
            continue
        counts.append(len(shard))
        shard.close()
    return counts


def data_error(exc: SampleError) -> DataError:
    """The one-line error of ``on_error = "fail"``."""
    return DataError(
        f"shards: cannot read {exc.where} ({exc.why}); fix or re-pack the shard, or set "
        f'data.on_error = "skip"'
    )
