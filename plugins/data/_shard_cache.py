"""Remote shards of ``type = "shards"``: URLs downloaded on first use into a local cache.

A location is remote when it is a URL (``https://``, ``s3://``, ``gs://``, ...; not
``file:``) or a ``pipe:`` command (run as written, its standard output the shard). The
download goes through webdataset's ``gopen`` (``curl -f`` for http(s), ``gsutil cat`` for
``gs://``, the shell for ``pipe:``; ``s3://`` through ``aws s3 cp URL -``), into a temporary
file renamed into place once complete (``denoisekit.files.atomic_write``): the cache never
holds part of a shard. The cache file is named by a hash of the URL and its file name; a
lock per file (filelock) makes the processes of one machine (ranks, DataLoader workers)
download each shard once and the others wait for it. With a size bound the least recently
used shards beyond it are removed after each download (wids' ``keep_most_recent_files``; a
shard still open stays readable: it is memory-mapped).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from denoisekit.errors import DataError
from denoisekit.files import atomic_write

#: Exit statuses of curl, gsutil and aws, as the error names them.
EXIT_MEANINGS = {
    6: "host not found",
    7: "cannot connect",
    18: "download cut short",
    22: "HTTP error, e.g. 404 not found or 403 forbidden",
    28: "timed out",
    127: "command not found",
}


def is_remote(location: str) -> bool:
    """Whether ``location`` is downloaded (a URL or a ``pipe:`` command) rather than a path."""
    if location.startswith("pipe:"):
        return True
    return bool(re.match(r"[A-Za-z][\w+.-]*://", location)) and not location.startswith("file:")


def local_name(location: str) -> str:
    """The cache file of ``location``: 16 hex digits of its SHA-256, then its file name."""
    digest = hashlib.sha256(location.encode("utf-8")).hexdigest()[:16]
    tail = "" if location.startswith("pipe:") else Path(urlparse(location).path).name
    return f"{digest}-{re.sub(r'[^A-Za-z0-9._-]', '_', tail)[-80:] or 'shard'}"


class DownloadError(Exception):
    """A download that failed: ``why`` says how (one line)."""


def open_remote(location: str) -> BinaryIO:
    """A stream of ``location``'s bytes; it raises OSError at read or close when the
    download fails (the downloading program's exit status)."""
    from webdataset.gopen import Pipe, gopen

    if location.startswith("s3://"):  # gopen has no s3 handler: the AWS CLI, as wids uses
        return Pipe(["aws", "s3", "cp", location, "-"], mode="rb", ignore_status=[141])
    return gopen(location, "rb")


def failure(exc: BaseException) -> str:
    """One line on a failed download: the program's exit status and what it means."""
    if isinstance(exc, FileNotFoundError) and exc.filename:  # the program itself is missing
        return f"{exc.filename} is not installed (needed for this kind of URL)"
    status = getattr(exc, "status", None)
    match = re.search(r"exit (\d+)", str(exc))
    if status is None and match:
        status = int(match.group(1))
    if status is not None:
        meaning = EXIT_MEANINGS.get(int(status))
        return f"exit status {status}" + (f": {meaning}" if meaning else "")
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def read_remote(location: str) -> bytes:
    """The bytes of ``location`` (a small file, e.g. an index).

    Raises:
        DownloadError: the download failed.
    """
    why = None
    try:
        with open_remote(location) as stream:
            data = stream.read()
    except Exception as exc:  # Pipe raises IOError / OSError; gopen ValueError (no handler)
        why = failure(exc)
    if why is not None:
        raise DownloadError(why)
    return data


def download(location: str, path: Path) -> None:
    """Write ``location``'s bytes to ``path``, atomically.

    Raises:
        DownloadError: the download failed (``path`` is left as it was).
    """
    with atomic_write(path) as out:
        why = None
        try:
            with open_remote(location) as stream:
                shutil.copyfileobj(stream, out, 1 << 20)
        except Exception as exc:
            why = failure(exc)
        if why is not None:  # raised here, so no OSError is chained (not a write failure)
            raise DownloadError(why)


class ShardCache:
    """Downloaded shards in ``folder``, at most ``max_bytes`` of them (None: no bound)."""

    def __init__(self, folder: Path, max_bytes: int | None = None) -> None:
        self.folder, self.max_bytes = Path(folder), max_bytes

    def path(self, location: str) -> Path:
        """Where ``location`` is (or will be) cached."""
        return self.folder / local_name(location)

    def fetch(self, location: str) -> Path:
        """The cached copy of ``location``, downloaded first unless present.

        Raises:
            DownloadError: the download failed.
            DataError, OutputError: the cache folder cannot be made or written.
        """
        from filelock import FileLock

        path = self.path(location)
        if _touch(path):
            return path
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(
                f"shards: cannot make the shard cache {self.folder} ({exc.strerror or exc}); "
                f"set data.cache_dir to a writable folder"
            ) from exc
        with FileLock(str(self.folder / f".{path.name}.lock")):
            if _touch(path):  # another process downloaded it while this one waited
                return path
            download(location, path)
        if self.max_bytes is not None:
            from wids.wids_cleanup import keep_most_recent_files

            # Only the cache's own files (hash-named): nothing else in the folder is removed.
            pattern = str(self.folder / ("[0-9a-f]" * 16 + "-*"))
            keep_most_recent_files(pattern, maxsize=self.max_bytes, maxfiles=10**9)
        return path

    def __repr__(self) -> str:
        return f"ShardCache({str(self.folder)!r}, max_bytes={self.max_bytes})"


def _touch(path: Path) -> bool:
    """Mark ``path`` as just used (its modification time orders the size bound); whether it
    exists."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    except OSError:  # a read-only cache (filled beforehand): used as it is
        return path.is_file()
    return True


def cache_for(folder: str, gigabytes: float | None, base: Path) -> ShardCache:
    """The cache of ``data.cache_dir`` (empty: the denoisekit cache's ``shards`` folder;
    relative: under ``base``) and ``data.cache_gb``."""
    from denoisekit.files import default_cache_dir

    if folder:
        path = Path(folder).expanduser()
        path = path if path.is_absolute() else base / path
    else:
        path = default_cache_dir() / "shards"
    if path.exists() and not path.is_dir():
        raise DataError(f"shards: data.cache_dir = {str(path)!r} is a file; name a folder")
    size = None if gigabytes is None else int(gigabytes * 1e9)
    return ShardCache(path, size)
