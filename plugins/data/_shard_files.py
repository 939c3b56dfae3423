"""The shard files of ``type = "shards"``: the list (an index, or a brace pattern; paths or
URLs), and wids' reader of one shard (downloaded first when remote), checked for
truncation."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from denoisekit.errors import DataError
from denoisekit.plugins.data._shard_cache import DownloadError, ShardCache, is_remote, read_remote

logger = logging.getLogger("denoisekit.plugins.data.shards")

TAR_BLOCK = 512


def absolute(path: str | Path, base: Path) -> Path:
    """``path`` as it is when absolute, else under ``base``."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else base / path


def read_index(location: str, base: Path) -> tuple[list[str], list[int]]:
    """The shards of a wids index (``{"wids_version": 1, "shardlist": [{"url", "nsamples"}]}``)
    at a path (relative: under ``base``) or a URL, and their sample counts. The shards are
    paths or URLs; relative ones are read from the index's folder."""
    remote = is_remote(location)
    path = None if remote else absolute(location, base)
    where = f"shards: the index {location if remote else path}"
    try:
        text = read_remote(location) if remote else path.read_bytes()  # type: ignore[union-attr]
        spec = json.loads(text)
    except DownloadError as exc:
        raise DataError(
            f"{where} cannot be downloaded ({exc}); check the URL and that this machine can "
            f"reach it (and its credentials, for s3:// or gs://)"
        ) from None
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
    locations, counts = [], []
    for i, entry in enumerate(shardlist):
        url = entry.get("url") if isinstance(entry, dict) else None
        count = entry.get("nsamples") if isinstance(entry, dict) else None
        if not isinstance(url, str) or not isinstance(count, int) or count < 0:
            raise DataError(
                f'{where}: shardlist[{i}] needs "url" (a path or URL) and "nsamples" (a count); '
                f"re-pack the data"
            )
        if is_remote(url) or Path(url).is_absolute():
            locations.append(url)
        elif remote and location.startswith("pipe:"):
            raise DataError(
                f"{where}: shardlist[{i}] = {url!r} is relative to a pipe: command; list URLs"
            )
        else:
            folder = location.rsplit("/", 1)[0] if remote else str(path.parent)  # type: ignore[union-attr]
            locations.append(f"{folder}/{url}" if remote else str(Path(folder) / url))
        counts.append(count)
    return locations, counts


def expand(pattern: str, base: Path) -> list[str]:
    """The tar files of a path, URL or brace pattern (``train-{000000..000127}.tar``; several
    joined by ``::``, as webdataset reads them); local ones are checked to exist."""
    from webdataset.shardlists import expand_urls

    locations = [u if is_remote(u) else str(absolute(u, base)) for u in expand_urls(pattern)]
    missing = [u for u in locations if not is_remote(u) and not Path(u).is_file()]
    if missing:
        raise DataError(
            f"shards: {len(missing)} of the {len(locations)} shards of data.shards = {pattern!r} "
            f"do not exist (e.g. {missing[0]}); check the path and the brace range"
        )
    return locations


class SampleError(Exception):
    """One bad shard or sample: ``where`` (shard and member) and what is wrong."""

    def __init__(self, where: str, why: str, *, whole_shard: bool = False, fix: str = "") -> None:
        super().__init__(f"{where} ({why})")
        self.where, self.why, self.whole_shard = where, why, whole_shard
        self.fix = fix or "fix or re-pack the shard"


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def open_location(location: str, cache: ShardCache, expected: int | None = None) -> Any:
    """wids' reader of the shard at ``location``: a path, or a URL downloaded into ``cache``
    first (see :func:`open_shard`).

    Raises:
        SampleError: the download failed, or the shard cannot be opened, is truncated, or
            holds another count.
    """
    if not is_remote(location):
        return open_shard(Path(location), expected)
    try:
        local = cache.fetch(location)
    except DownloadError as exc:
        raise SampleError(
            location,
            f"download failed: {exc}",
            whole_shard=True,
            fix="check the URL and that this machine can reach it (and its credentials, for "
            "s3:// or gs://)",
        ) from None
    try:
        return open_shard(local, expected, name=location)
    except SampleError as exc:
        if exc.why.startswith("FileNotFoundError"):  # removed by another process's size bound
            return open_shard(cache.fetch(location), expected, name=location)
        raise


def open_shard(path: Path, expected: int | None = None, *, name: str = "") -> Any:
    """wids' random-access reader of one shard, checked for truncation (a size that is not
    whole 512-byte blocks, a last member or the end-of-archive blocks past the end) and
    against the index's sample count, when given. Errors name the shard ``name`` (default:
    the path).

    Raises:
        SampleError: the shard cannot be opened, is truncated, or holds another count.
    """
    from wids.wids import IndexedTarSamples

    name = name or str(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SampleError(name, one_line(exc), whole_shard=True) from exc
    if size % TAR_BLOCK:
        raise SampleError(name, f"truncated tar: {size} bytes", whole_shard=True)
    try:
        shard = IndexedTarSamples(path=str(path))
    except Exception as exc:  # wids raises struct, OS and value errors on broken tars
        raise SampleError(name, f"unreadable tar: {one_line(exc)}", whole_shard=True) from exc
    if shard.reader.by_index:  # (name, header offset, size) of the regular members
        _, offset, length = shard.reader.by_index[-1]
        end = offset + TAR_BLOCK + -(-length // TAR_BLOCK) * TAR_BLOCK
        if end + 2 * TAR_BLOCK > size:  # no room for the end-of-archive blocks
            shard.close()
            raise SampleError(
                name, f"truncated tar: {size} bytes, no end-of-archive", whole_shard=True
            )
    if expected is not None and len(shard) != expected:
        shard.close()
        raise SampleError(
            name,
            f"holds {len(shard)} samples, the index says {expected}: truncated or rewritten",
            whole_shard=True,
        )
    return shard


def count_samples(locations: list[str], on_error: str, cache: ShardCache) -> list[int]:
    """Open (download) every shard once to count its samples (no index); a bad shard counts 0
    when skipped."""
    counts = []
    for location in locations:
        try:
            shard = open_location(location, cache)
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
        f'shards: cannot read {exc.where} ({exc.why}); {exc.fix}, or set data.on_error = "skip"'
    )
