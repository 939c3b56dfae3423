"""``FolderWriter``: the lock, building beside and swapping last, and what the next writer
does with a killed writer's leftovers (real processes: tests/test_run_folders.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from denoisekit.engine.replace import COMPLETE, FolderWriter, recover
from denoisekit.errors import OutputError
from denoisekit.files import HOST, RUN_OUTPUTS, RunPaths


def dead_pid() -> int:
    """The pid of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_run(folder: Path, text: str, *, checkpoint: bool = True) -> None:
    paths = RunPaths(folder)
    paths.checkpoints.mkdir(parents=True)
    paths.recipe.write_text(text)
    paths.metrics.write_text(text)
    if checkpoint:
        paths.last_checkpoint.write_text(text)


def contents(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): p.read_text()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def writer(folder: Path, **options) -> FolderWriter:
    return FolderWriter(folder, RUN_OUTPUTS, overwrite=True, what="a run", **options)


def test_commit_swaps_the_new_content_in_and_keeps_other_files(tmp_path):
    run = tmp_path / "run"
    write_run(run, "old")
    (run / "notes.txt").write_text("mine")
    with writer(run) as w:
        assert w.existing == ["recipe.toml", "metrics.jsonl", "checkpoints"]
        write_run(w.staged(), "new", checkpoint=False)
        assert contents(run)["recipe.toml"] == "old"  # nothing replaced before the commit
        w.commit()
    assert contents(run) == {"metrics.jsonl": "new", "notes.txt": "mine", "recipe.toml": "new"}
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_a_failure_before_the_commit_leaves_the_old_content_and_no_new_folder(tmp_path):
    run = tmp_path / "run"
    write_run(run, "old")
    with pytest.raises(RuntimeError), writer(run) as w:
        write_run(w.staged(), "new")
        raise RuntimeError("the import failed")
    assert contents(run) == {"checkpoints/last.pt": "old", "metrics.jsonl": "old",
                             "recipe.toml": "old"}  # fmt: skip
    with pytest.raises(RuntimeError), writer(tmp_path / "new" / "deeper") as w:
        raise RuntimeError("the import failed")
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    with writer(run):
        assert RunPaths(run).lock.read_text() == f"{os.getpid()}\n"
        with pytest.raises(OutputError) as caught, writer(run):
            pass
        assert str(caught.value) == (
            f"{run}: another denoisekit process (pid {os.getpid()}) is writing this folder; "
            "wait for it to finish, or pick another folder"
        )
    assert not run.exists()  # made by the writer, left empty: removed
    run.mkdir()
    RunPaths(run).lock.write_text("12345\n")  # a killed writer's lock file: no lock held
    with writer(run):
        pass


def test_without_overwrite_a_run_is_refused_after_the_lock(tmp_path):
    run = tmp_path / "run"
    write_run(run, "old")
    with pytest.raises(OutputError, match="already holds a run"):
        FolderWriter(run, RUN_OUTPUTS, overwrite=False, what="a run").__enter__()
    assert not RunPaths(run).lock.exists()


def test_finish_puts_the_old_run_back_when_the_new_one_stopped_before_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    write_run(run, "old")
    with writer(run) as w:
        w.set_aside()
        write_run(run, "new", checkpoint=False)  # the new run's first files, then a failure
        w.finish(succeeded=False)
    assert contents(run) == {"checkpoints/last.pt": "old", "metrics.jsonl": "old",
                             "recipe.toml": "old"}  # fmt: skip
    with writer(run) as w:
        w.set_aside()
        write_run(run, "new")  # a checkpoint: the new run is resumable, it stands
        w.finish(succeeded=False)
    assert set(contents(run).values()) == {"new"}
    assert sorted(os.listdir(tmp_path)) == ["run"]


def leftover(tmp_path: Path, pid: int, tag: str) -> Path:
    folder = tmp_path / f".run.denoisekit-{HOST}-{pid}.{tag}"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("new_has_checkpoint", [False, True])
def test_a_killed_train_overwrite_is_resolved_by_the_next_writer(tmp_path, new_has_checkpoint):
    run = tmp_path / "run"
    write_run(run, "new", checkpoint=new_has_checkpoint)
    write_run(leftover(tmp_path, dead_pid(), "old"), "old")
    with writer(run):
        pass
    expected = "new" if new_has_checkpoint else "old"
    assert set(contents(run).values()) == {expected}
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_a_complete_staging_folder_is_swapped_in_and_an_incomplete_one_dropped(tmp_path):
    run = tmp_path / "run"
    write_run(run, "old")
    staging = leftover(tmp_path, dead_pid(), "new")
    write_run(staging, "new", checkpoint=False)
    names = '["recipe.toml", "metrics.jsonl", "checkpoints"]'
    (staging / COMPLETE).write_text(f'{{"old": {names}, "new": {names}}}')
    assert recover(run) == [staging]
    assert contents(run) == {"metrics.jsonl": "new", "recipe.toml": "new"}
    write_run(leftover(tmp_path, dead_pid(), "new"), "half")  # never marked complete
    recover(run)
    assert contents(run) == {"metrics.jsonl": "new", "recipe.toml": "new"}
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_a_live_writers_folders_are_left_alone(tmp_path):
    run = tmp_path / "run"
    write_run(run, "old")
    mine = leftover(tmp_path, os.getpid(), "new")
    assert recover(run) == [] and mine.is_dir()
