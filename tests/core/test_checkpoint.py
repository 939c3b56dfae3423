"""core/checkpoint.py: atomic writes keep the previous file on failure and leave no litter."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys

import pytest

from denoisekit.errors import OutputError
from denoisekit.files import atomic_write, remove_stale_temporaries, temporary_prefix


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


def test_the_temporary_file_names_this_process(tmp_path):
    path = tmp_path / "out.bin"
    with atomic_write(path):
        (temporary,) = [p.name for p in tmp_path.iterdir()]
    assert temporary.startswith(temporary_prefix(path)) and temporary.endswith(".tmp")
    assert f"-{os.getpid()}." in temporary


def test_stale_temporaries_of_dead_writers_are_removed_before_a_write(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    dead = int(finished.stdout)  # reaped: no process has this pid now
    host = temporary_prefix(tmp_path / "x").split(".denoisekit-")[1].rsplit("-", 1)[0]
    stale = tmp_path / f".step-00000002.pt.denoisekit-{host}-{dead}.k2j3h4l5.tmp"
    live = tmp_path / f".step-00000004.pt.denoisekit-{host}-{os.getppid()}.a1b2c3d4.tmp"
    elsewhere = tmp_path / f".last.pt.denoisekit-otherhost-{dead}.a1b2c3d4.tmp"
    users = tmp_path / ".notes.1234.tmp"
    for path in (stale, live, elsewhere, users):
        path.write_bytes(b"partial")
    with atomic_write(tmp_path / "last.pt") as handle:
        handle.write(b"new")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"last.pt", live.name, elsewhere.name, users.name}
    assert remove_stale_temporaries(tmp_path / "no-such-folder") == []


@pytest.mark.parametrize("wrapped", [False, True], ids=["oserror", "torch-runtime-error"])
def test_a_full_disk_is_a_one_line_error_naming_the_file(tmp_path, wrapped):
    path = tmp_path / "last.pt"
    path.write_bytes(b"old")
    with pytest.raises(OutputError) as info, atomic_write(path) as handle:
        handle.write(b"part")
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            if not wrapped:
                raise
            raise RuntimeError("PytorchStreamWriter failed writing data/0")  # noqa: B904 (as torch)
    message = str(info.value)
    assert message == (
        f"{path}: cannot write (No space left on device); the file is unchanged: free some "
        "space (or raise the file-size limit) and run again"
    )
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_file_where_the_folder_should_be_is_one_line(tmp_path):
    (tmp_path / "runs").write_text("a file")
    with (
        pytest.raises(OutputError, match=r"runs/x\.npz: cannot write here"),
        atomic_write(tmp_path / "runs" / "x.npz"),
    ):
        pass


def test_an_interrupt_inside_torch_save_stays_an_interrupt(tmp_path):
    # SIGTERM (the loop raises TrainingInterrupted, a KeyboardInterrupt) or Ctrl-C landing
    # inside torch.save's writer comes out of torch as a RuntimeError; the run must still
    # stop as interrupted (exit 128 + signal), with the previous file whole.
    import torch

    target = tmp_path / "last.pt"
    target.write_bytes(b"previous")

    class Interrupting:
        def __init__(self, handle):
            self.handle, self.calls = handle, 0

        def write(self, data):
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt("received signal SIGTERM")
            return self.handle.write(data)

        def flush(self):
            self.handle.flush()

    with pytest.raises(KeyboardInterrupt), atomic_write(target) as handle:
        torch.save({"w": torch.zeros(1000, 100)}, Interrupting(handle))
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
