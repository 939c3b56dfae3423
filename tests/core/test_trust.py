"""Opening a run folder runs none of its code unless the user says --trust-plugins.

The run's stored recipe names ``plugins = ["shared_plugin"]`` and the module lies in the run
folder, as in a run folder someone shared; importing it leaves a file ``IMPORTED`` beside it.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from denoisekit import testing
from denoisekit.cli import main
from denoisekit.engine.sampling import save_npz

PLUGIN = "shared_plugin"
SOURCE = "from pathlib import Path\n\nPath(__file__).with_name('IMPORTED').write_text('ran')\n"


@pytest.fixture(autouse=True)
def forget_the_plugin():
    sys.modules.pop(PLUGIN, None)
    yield
    sys.modules.pop(PLUGIN, None)


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory) -> Path:
    """A trained run whose plugin module is in the run folder (and nowhere else)."""
    folder = tmp_path_factory.mktemp("trust")
    (folder / f"{PLUGIN}.py").write_text(SOURCE)
    recipe = testing.write_recipe(
        folder, {"plugins": [PLUGIN], "hooks": {"checkpoint": {"every": 2}}}
    )
    run = folder / "run"
    with testing.single_thread():
        assert main(["train", str(recipe), "--out", str(run)]) == 0
    sys.modules.pop(PLUGIN, None)
    shutil.move(folder / f"{PLUGIN}.py", run / f"{PLUGIN}.py")
    (folder / "IMPORTED").unlink()
    importlib.invalidate_caches()
    return run


def commands(run: Path, tmp: Path) -> dict[str, list[str]]:
    save_npz(tmp / "given.npz", torch.zeros(2, 1, 8, 8))
    return {
        "sample": ["sample", str(run), "-n", "2", "--out", str(tmp / "s.npz")],
        "eval": ["eval", str(run), "--metric", "sample-time", "-n", "2", "--no-log"],
        "eval-reference": ["eval", "--samples", str(tmp / "given.npz"), "--reference", str(run)],
        "compare": ["compare", "--run", str(run), "--vary", "sampler.steps=2,3", "-n", "2",
                    "--out", str(tmp / "cmp")],
    }  # fmt: skip


@pytest.mark.parametrize("command", ["sample", "eval", "eval-reference", "compare"])
def test_a_run_folders_plugin_is_not_imported_without_trust(shared_run, tmp_path, capsys, command):
    assert main(commands(shared_run, tmp_path)[command]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"denoisekit: error: {shared_run / 'checkpoints' / 'last.pt'}: ")
    assert f"plugin '{PLUGIN}' is not installed" in err and "--trust-plugins" in err
    assert not (shared_run / "IMPORTED").exists()
    assert PLUGIN not in sys.modules


def test_trust_plugins_imports_it_from_the_run_folder(shared_run, tmp_path):
    argv = commands(shared_run, tmp_path)["sample"]
    try:
        assert main([*argv, "--trust-plugins"]) == 0
        assert (shared_run / "IMPORTED").read_text() == "ran"
        with np.load(tmp_path / "s.npz") as data:
            assert data["arr_0"].shape == (2, 8, 8, 1)
    finally:
        (shared_run / "IMPORTED").unlink(missing_ok=True)


def test_the_run_folder_on_sys_path_is_still_the_run_folder(
    shared_run, tmp_path, capsys, monkeypatch
):
    """``python -m denoisekit sample .`` inside the run folder puts it on sys.path."""
    monkeypatch.syspath_prepend(str(shared_run))
    assert main(commands(shared_run, tmp_path)["sample"]) == 2
    err = capsys.readouterr().err
    assert f"plugin '{PLUGIN}' would be imported from the run folder {shared_run}" in err
    assert "--trust-plugins" in err
    assert not (shared_run / "IMPORTED").exists()


def test_an_installed_plugin_loads_without_trust(shared_run, tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / f"{PLUGIN}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(site))
    assert main(commands(shared_run, tmp_path)["sample"]) == 0
    assert (site / "IMPORTED").exists()  # the installed copy, not the run folder's
    assert not (shared_run / "IMPORTED").exists()
