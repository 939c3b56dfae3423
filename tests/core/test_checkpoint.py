"""core/checkpoint.py: atomic writes keep the previous file on failure and leave no litter."""

from __future__ import annotations

import os
import stat

import pytest

from denoisekit.checkpoint import atomic_write


def test_atomic_write_replaces_the_file_with_open_s_permissions(tmp_path):
    path = tmp_path / "sub" / "out.bin"
    with atomic_write(path) as handle:
        handle.write(b"new")
    assert path.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["out.bin"]


def test_a_failed_write_keeps_the_previous_content(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_write(path) as handle:
        handle.write(b"partial")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
