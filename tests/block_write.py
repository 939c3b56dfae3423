"""Run ``denoisekit`` with one atomic write that stops midway, for kill -9 tests.

    python tests/block_write.py NAME MARKER -- denoisekit arguments...

When the atomic write of a file named ``NAME`` has written its temporary file (flushed,
not yet renamed), this writes the file ``MARKER`` and blocks forever:
the test kills the process then, at a known point, with no sleep racing it.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import denoisekit.engine.checkpoint
import denoisekit.engine.sampling
from denoisekit.cli import main

name, marker, separator, *arguments = sys.argv[1:]
assert separator == "--", "usage: block_write.py NAME MARKER -- ARGS..."
real_atomic_write = denoisekit.engine.checkpoint.atomic_write


@contextmanager
def blocking_atomic_write(path: Path | str) -> Iterator[BinaryIO]:
    with real_atomic_write(path) as handle:
        yield handle
        if Path(path).name == name:
            handle.flush()
            Path(marker).write_text("blocked")
            threading.Event().wait()  # until killed


denoisekit.engine.checkpoint.atomic_write = blocking_atomic_write
denoisekit.engine.sampling.atomic_write = blocking_atomic_write
sys.exit(main(arguments))
