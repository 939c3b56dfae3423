"""Run folders in real processes: one writer at a time, replace last, moved run folders.

Every command here is a real ``python -m denoisekit`` process. Races are not won by
sleeping: a writer is stopped at a known point by ``tests/block_write.py`` (inside a
checkpoint write) or ``tests/block_swap.py`` (after its new content is complete, before
the swap), which write a marker file there and block; the test then acts, and kills it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from denoisekit.engine.build import load_trained
from denoisekit.files import RunPaths
from denoisekit.testing import write_recipe

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="kill -9 and flock: POSIX")

TESTS = Path(__file__).parent
BLOCK_WRITE = TESTS / "block_write.py"
BLOCK_SWAP = TESTS / "block_swap.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CHECKPOINT = {"hooks": {"checkpoint": {"every": 1}}}


def denoisekit(*arguments: object, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m denoisekit ARGUMENTS`` in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "denoisekit", *map(str, arguments)],
        cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def start_blocked(
    script: Path, arguments: list[object], marker: Path, cwd: Path
) -> subprocess.Popen:
    """Start ``script ... -- denoisekit ARGUMENTS``; return once it says it is blocked."""
    process = subprocess.Popen(
        [sys.executable, str(script), *arguments[:-1], "--", *map(str, arguments[-1])],
        cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 300  # a hang guard, not a timing assumption
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"it never blocked: {process.communicate()[1].decode()[-2000:]}")
        time.sleep(0.05)
    return process


def kill9(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


def one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("denoisekit: error: ") and result.stderr.count("\n") == 1
    return result.stderr


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, by path under ``folder`` (the writer's lock file left out)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != RunPaths(folder).lock.name
    }


def leftovers(parent: Path) -> list[str]:
    """Staging and set-aside folders (``.<name>.denoisekit-...``) beside the run folders."""
    return sorted(p.name for p in parent.iterdir() if ".denoisekit-" in p.name)


def weights(run_folder: Path) -> dict[str, torch.Tensor]:
    return load_trained(run_folder, device="cpu").model.state_dict()


# --------------------------------------------------------------------------- one writer


def test_two_trains_started_together_into_one_folder_exactly_one_proceeds(tmp_path):
    recipe = write_recipe(tmp_path, {**CHECKPOINT, "train": {"steps": 3}})
    out = tmp_path / "run"
    command = [sys.executable, "-m", "denoisekit", "train", str(recipe), "--out", str(out)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    processes = [subprocess.Popen(command, cwd=tmp_path, env=ENV, **pipes) for _ in range(2)]
    results = [(p.communicate(timeout=600), p.returncode) for p in processes]
    assert sorted(code for _, code in results) == [0, 2], results
    (_, err), _ = next(r for r in results if r[1] == 2)
    assert err.startswith(f"denoisekit: error: {out}: ") and err.count("\n") == 1
    # It lost the lock (the other was writing), or came after the other finished.
    assert "another denoisekit process (pid " in err or "already holds a run" in err
    steps = [line.split(",")[0] for line in RunPaths(out).metrics.read_text().splitlines()]
    assert steps == ['{"step": 1', '{"step": 2', '{"step": 3']  # one run's metrics alone


def test_a_second_writer_stops_naming_the_holder_while_readers_keep_working(tmp_path):
    recipe = write_recipe(tmp_path, {**CHECKPOINT, "train": {"steps": 2}})
    out, marker = tmp_path / "run", tmp_path / "blocked"
    train = ["train", recipe, "--out", out]
    writer = start_blocked(BLOCK_WRITE, ["step-00000002.pt", marker, train], marker, tmp_path)
    try:
        second = denoisekit(*train, "--overwrite", cwd=tmp_path)
        assert one_line(second) == (
            f"denoisekit: error: {out}: another denoisekit process (pid {writer.pid}) is "
            "writing this folder; wait for it to finish, or pick another folder\n"
        )
        # A reader of the run in training: its checkpoint of step 1.
        sample = denoisekit("sample", out, "-n", "2", "--out", tmp_path / "s.npz", cwd=tmp_path)
        assert sample.returncode == 0, sample.stderr
        assert "(step 1," in sample.stdout
    finally:
        kill9(writer)
    # The dead writer's lock file is still there; the system released its lock.
    assert RunPaths(out).lock.read_text().strip() == str(writer.pid)
    resumed = denoisekit(*train, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "trained 2 steps" in resumed.stdout
    assert not RunPaths(out).lock.exists()  # a writer that ends removes its lock file


# --------------------------------------------------------------------------- replace last


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two diffusers model folders of the digits layout (weights seeded 0 and 1), and a
    third whose config does not fit its weights."""
    pytest.importorskip("diffusers", reason="diffusers (the bench extra) is not installed")
    import json

    from tests.core.test_interop import DIGITS_LAYOUT, save_model

    folder = tmp_path_factory.mktemp("models")
    for seed in (0, 1):
        save_model(folder / f"model{seed}", DIGITS_LAYOUT, seed=seed)
    shutil.copytree(folder / "model1", folder / "misfit")
    config = json.loads((folder / "misfit" / "config.json").read_text())
    config["block_out_channels"] = [8, 32]  # the weights are [8, 16]'s
    (folder / "misfit" / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def imported(models, tmp_path):
    """A run folder imported from ``model0``: the old run the tests try to replace."""
    result = denoisekit("import-diffusers", models / "model0", "--out", tmp_path / "run",
                        cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return tmp_path / "run"


def test_a_failed_import_with_overwrite_keeps_the_old_run_byte_identical(models, imported):
    before = snapshot(imported)
    result = denoisekit("import-diffusers", models / "misfit", "--out", imported, "--overwrite",
                        cwd=imported.parent)  # fmt: skip
    assert "misfit" in one_line(result)
    assert snapshot(imported) == before
    assert leftovers(imported.parent) == []
    # Into a new folder, it leaves no folder behind.
    result = denoisekit("import-diffusers", models / "misfit", "--out", imported.parent / "new",
                        cwd=imported.parent)  # fmt: skip
    one_line(result)
    assert not (imported.parent / "new").exists()


def test_kill_9_between_complete_and_swap_then_the_next_start_finishes_it(models, imported):
    parent, marker = imported.parent, imported.parent / "blocked"
    before = snapshot(imported)
    command = ["import-diffusers", models / "model1", "--out", imported, "--overwrite"]
    kill9(start_blocked(BLOCK_SWAP, [marker, command], marker, parent))
    assert snapshot(imported) == before  # the old run, whole
    (staging,) = leftovers(parent)  # the new run, complete, beside it
    assert staging.endswith(".new") and (parent / staging / ".denoisekit-complete.json").exists()
    # The next writer of the folder finishes the swap, then finds the (new) run there.
    again = denoisekit("import-diffusers", models / "model0", "--out", imported, cwd=parent)
    warning, error = again.stderr.splitlines()
    assert warning.endswith(f"{imported}: finished replacing its content (a writer was killed)")
    assert again.returncode == 2 and "already holds a run" in error
    assert leftovers(parent) == []
    reference = denoisekit("import-diffusers", models / "model1", "--out", parent / "ref",
                           cwd=parent)  # fmt: skip
    assert reference.returncode == 0, reference.stderr
    ours, theirs = weights(imported), weights(parent / "ref")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_kill_9_before_complete_then_the_next_start_drops_the_half_built_run(models, imported):
    parent, marker = imported.parent, imported.parent / "blocked"
    before = snapshot(imported)
    command = ["import-diffusers", models / "model1", "--out", imported, "--overwrite"]
    kill9(start_blocked(BLOCK_WRITE, ["last.pt", marker, command], marker, parent))
    assert snapshot(imported) == before
    assert len(leftovers(parent)) == 1
    again = denoisekit("import-diffusers", models / "model1", "--out", imported, cwd=parent)
    assert "already holds a run" in one_line(again)
    assert leftovers(parent) == [] and snapshot(imported) == before


def test_a_failed_init_from_with_overwrite_keeps_the_old_run_byte_identical(tmp_path):
    old = write_recipe(tmp_path, CHECKPOINT, name="old")
    wide = write_recipe(tmp_path, {**CHECKPOINT, "backbone": {"channels": 16}}, name="wide")
    for recipe, out in ((old, "run"), (wide, "wide-run")):
        result = denoisekit("train", recipe, "--out", tmp_path / out, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    before = snapshot(tmp_path / "run")
    misfit = write_recipe(tmp_path, {**CHECKPOINT, "train": {"init_from": "wide-run"}}, name="ft")
    result = denoisekit("train", misfit, "--out", tmp_path / "run", "--overwrite", cwd=tmp_path)
    assert "do not fit this recipe's backbone" in one_line(result)
    assert snapshot(tmp_path / "run") == before
    assert leftovers(tmp_path) == []
    result = denoisekit("train", misfit, "--out", tmp_path / "new", cwd=tmp_path)
    one_line(result)
    assert not (tmp_path / "new").exists()  # no empty folder left


def test_init_from_naming_the_out_folder_is_refused_up_front(tmp_path):
    recipe = write_recipe(tmp_path, CHECKPOINT, name="base")
    assert denoisekit("train", recipe, "--out", tmp_path / "run", cwd=tmp_path).returncode == 0
    before = snapshot(tmp_path / "run")
    itself = write_recipe(tmp_path, {**CHECKPOINT, "train": {"init_from": "run"}}, name="self")
    result = denoisekit("train", itself, "--out", tmp_path / "run", "--overwrite", cwd=tmp_path)
    assert one_line(result) == (
        f"denoisekit: error: {itself}: train.init_from = 'run' is in the run folder "
        f"{tmp_path / 'run'} this command writes; train into another folder (--out DIR), or "
        "copy the run to start from\n"
    )
    assert snapshot(tmp_path / "run") == before


# --------------------------------------------------------------------------- moved runs


def test_a_moved_run_folder_samples_and_evaluates_with_its_relative_data_paths(tmp_path):
    recipes = tmp_path / "recipes"
    data = recipes / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(data / f"{i}.png")
    table = {"type": "image-folder", "path": "data", "image_size": 8, "mode": "L"}
    recipe = write_recipe(recipes, {**CHECKPOINT, "data": table}, name="folder")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    trained = denoisekit("train", recipe, "--out", "runs/r", cwd=tmp_path)  # relative --out
    assert trained.returncode == 0, trained.stderr
    shutil.move(tmp_path / "runs" / "r", tmp_path / "moved")
    sample = denoisekit("sample", "../moved", "-n", "2", "--out", "s.npz", cwd=elsewhere)
    assert sample.returncode == 0, sample.stderr
    evaluate = ["eval", "../moved", "--metric", "fd", "-n", "8", "--batch-size", "8",
                "--set", "metrics.fd.features=digits", "--no-log"]  # fmt: skip
    result = denoisekit(*evaluate, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert "fd" in result.stdout
    # The recipe's folder is gone: its relative paths are read from the run folder.
    shutil.move(recipes, tmp_path / "gone")
    result = denoisekit(*evaluate, cwd=elsewhere)
    warning, error = result.stderr.splitlines()
    assert f"the recipe was trained in {recipes}, which no longer exists" in warning
    assert result.returncode == 2 and error.startswith("denoisekit: error: ")
    assert str(tmp_path / "moved" / "data") in error
    shutil.copytree(tmp_path / "gone" / "data", tmp_path / "moved" / "data")
    assert denoisekit(*evaluate, cwd=elsewhere).returncode == 0
