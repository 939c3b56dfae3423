"""Faults in real processes: kill -9 in the middle of a write, a file-size limit.

A killed write leaves the previous files loadable and only a temporary file of ours,
which the next start removes; a full disk (here RLIMIT_FSIZE, SIGXFSZ ignored) is one
line naming the file, exit status 2, and leaves no temporary file. The kill comes when
``tests/block_write.py`` says the write is under way (it blocks there), not after a sleep.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from denoisekit.cli import main
from denoisekit.testing import write_recipe
from denoisekit.testing.conformance import single_thread

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="kill -9 and rlimits: POSIX")

BLOCK_WRITE = Path(__file__).with_name("block_write.py")
TEMP = re.compile(r"^\..+\.denoisekit-\w*-(\d+)\.\w+\.tmp$")
CHECKPOINT = {"hooks": {"checkpoint": {"every": 1}}}


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if TEMP.match(p.name)]


def kill_when_blocked(name: str, marker: Path, arguments: list[str]) -> int:
    """Start ``denoisekit ARGUMENTS`` with the write of ``name`` blocking; kill -9 it there.

    Returns the killed process's pid.
    """
    command = [sys.executable, str(BLOCK_WRITE), name, str(marker), "--", *arguments]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300  # a hang guard, not a timing assumption
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the write never blocked: {process.communicate()[1].decode()[-2000:]}")
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    return process.pid


def run_limited(arguments: list[str], limit: int, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m denoisekit ARGUMENTS`` with files limited to ``limit`` bytes."""

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "denoisekit", *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
        timeout=300,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny trained run folder (2 steps, a checkpoint each step)."""
    folder = tmp_path_factory.mktemp("faults")
    with single_thread():
        assert (
            main(["train", str(write_recipe(folder, CHECKPOINT)), "--out", str(folder / "run")])
            == 0
        )
    return folder / "run"


def test_kill_9_during_a_checkpoint_write_keeps_the_last_one(tmp_path):
    recipe = write_recipe(tmp_path, {**CHECKPOINT, "train": {"steps": 4}})
    run = tmp_path / "run"
    pid = kill_when_blocked(
        "step-00000003.pt", tmp_path / "blocked", ["train", str(recipe), "--out", str(run)]
    )
    folder = run / "checkpoints"
    (left,) = temporaries(folder)
    assert left.name.startswith(".step-00000003.pt.") and f"-{pid}." in left.name
    assert not (folder / "step-00000003.pt").exists()
    last = torch.load(folder / "last.pt", weights_only=True)  # the previous files load
    assert last["step"] == 2
    assert torch.load(folder / "step-00000002.pt", weights_only=True)["step"] == 2
    # The next start (a resume) removes what the killed writer left, then goes on.
    with single_thread():
        assert main(["train", str(recipe), "--out", str(run), "--resume"]) == 0
    assert temporaries(folder) == []
    assert torch.load(folder / "last.pt", weights_only=True)["step"] == 4


def test_kill_9_during_the_sample_write_keeps_the_previous_file(trained, tmp_path):
    out = tmp_path / "samples.npz"
    assert main(["sample", str(trained), "-n", "3", "--out", str(out)]) == 0
    before = out.read_bytes()
    arguments = ["sample", str(trained), "-n", "3", "--seed", "1", "--out", str(out)]
    kill_when_blocked(out.name, tmp_path / "blocked", [*arguments, "--overwrite"])
    assert out.read_bytes() == before
    with np.load(out) as data:
        assert data["arr_0"].shape == (3, 8, 8, 1)
    assert len(temporaries(tmp_path)) == 1
    # The next write into the folder removes the leftover.
    assert main(["sample", str(trained), "-n", "2", "--out", str(tmp_path / "next.npz")]) == 0
    assert temporaries(tmp_path) == []


def test_a_file_size_limit_while_sampling_is_one_line(trained, tmp_path):
    out = tmp_path / "big.npz"  # 64 images of 8×8: 4 kB of pixels
    result = run_limited(["sample", str(trained), "-n", "64", "--out", str(out)], 2000, tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert f"denoisekit: error: {out}: cannot write (File too large)" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file


def test_a_file_size_limit_while_checkpointing_is_one_line(tmp_path):
    recipe = write_recipe(tmp_path, CHECKPOINT)  # a checkpoint is ~0.7 MB; the rest < 50 kB
    run = tmp_path / "run"
    result = run_limited(["train", str(recipe), "--out", str(run)], 50_000, tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    step_file = run / "checkpoints" / "step-00000001.pt"
    assert f"denoisekit: error: {step_file}: cannot write (File too large)" in result.stderr
    assert os.listdir(run / "checkpoints") == []
    assert temporaries(run) == []
