"""Run ``denoisekit`` that stops between "new content complete" and "swap", for kill -9 tests.

    python tests/block_swap.py MARKER -- denoisekit arguments...

When a command writing a folder has built its new content beside the old one and marked it
complete (:meth:`denoisekit.engine.replace.FolderWriter.commit`), but before it swaps it in,
this writes the file ``MARKER`` and blocks forever: the test kills the process there.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import denoisekit.engine.replace
from denoisekit.cli import main

marker, separator, *arguments = sys.argv[1:]
assert separator == "--", "usage: block_swap.py MARKER -- ARGS..."


def blocking_swap(*args: Any) -> None:
    Path(marker).write_text("blocked")
    threading.Event().wait()  # until killed


denoisekit.engine.replace.swap = blocking_swap
sys.exit(main(arguments))
