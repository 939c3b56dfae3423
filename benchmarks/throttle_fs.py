"""A throttled, read-only view of a folder (FUSE), to time data readers on slow storage.

    python benchmarks/throttle_fs.py SRC MOUNT --mbps 40 --latency-ms 4 &
    ...                                   # read MOUNT/... as a slow filesystem
    fusermount -u MOUNT

Every read waits ``latency-ms`` and then its share of one ``mbps`` link (a lock serializes
the reads, as one network link would). Needs libfuse (``apt-get install fuse3 libfuse2``)
and ``pip install fusepy``; a benchmark aid, not part of denoisekit.
"""

from __future__ import annotations

import argparse
import errno
import os
import threading
import time

from fuse import FUSE, FuseOSError, Operations  # fusepy


class Throttled(Operations):
    """Pass-through reads of ``root``, slowed down."""

    def __init__(self, root: str, mbps: float, latency_s: float) -> None:
        self.root, self.rate, self.latency = root, mbps * 1e6, latency_s
        self.link = threading.Lock()
        self.bytes_read = 0

    def _path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def getattr(self, path, fh=None):
        try:
            st = os.lstat(self._path(path))
        except OSError as exc:
            raise FuseOSError(exc.errno) from exc
        keys = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size",
                "st_uid")  # fmt: skip
        return {k: getattr(st, k) for k in keys}

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self._path(path))]

    def open(self, path, flags):
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise FuseOSError(errno.EROFS)
        return os.open(self._path(path), os.O_RDONLY)

    def read(self, path, size, offset, fh):
        with self.link:
            time.sleep(self.latency + size / self.rate)
            self.bytes_read += size
        return os.pread(fh, size, offset)

    def release(self, path, fh):
        os.close(fh)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("mount")
    parser.add_argument("--mbps", type=float, default=40.0, help="megabytes per second")
    parser.add_argument("--latency-ms", type=float, default=4.0, help="per read request")
    args = parser.parse_args()
    os.makedirs(args.mount, exist_ok=True)
    ops = Throttled(os.path.abspath(args.source), args.mbps, args.latency_ms / 1000)
    FUSE(ops, args.mount, foreground=True, ro=True, nothreads=False)


if __name__ == "__main__":
    main()
