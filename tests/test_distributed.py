"""The same recipe under torchrun: DDP on 2 CPU ranks (gloo, loopback) equals 1 process.

Three torchrun launches (each a few seconds of start-up), shared by the tests:

* a 2-rank training run whose rank 1 fails in the forward pass of step 5; its step-4
  checkpoint is compared with a 1-process run of the same global batch, and its failure
  with what a failed rank must leave behind;
* a 2-rank run resumed from the 1-process step-2 checkpoint (1 → 2 ranks);
* ``denoisekit sample`` on 2 ranks, compared with 1 process bit for bit.

The reverse resume (2 → 1 ranks) runs in this process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch

from denoisekit.cli import main
from denoisekit.engine import distributed
from denoisekit.engine.batches import BatchStream
from denoisekit.engine.build import build_run
from denoisekit.engine.distributed import DistContext
from denoisekit.errors import DataError, RecipeError
from denoisekit.host.recipe import load_recipe

RECIPE = """
name = "ddp"
plugins = ["dist_probe"]
seed = 3
[data]
type = "digits"
[backbone]
type = "unet"
in_channels = 1
image_size = 8
channels = 16
channel_mults = [1, 2]
num_res_blocks = 1
attention_resolutions = [4]
groups = 8
dropout = 0.0
[schedule]
type = "cosine"
num_timesteps = 50
[optimizer]
type = "sgd"
lr = 0.05
momentum = 0.9
[sampler]
type = "ddim"
steps = 3
[train]
steps = 6
batch_size = 8
grad_accum = 2
log_every = 2
[hooks.ema]
decay = 0.9
[hooks.checkpoint]
every = 2
keep = 10
[hooks.progress]
bar = "never"
[hooks.probe]
type = "dist-probe"
fail_step = 5
fail_rank = 1
dump_step = 4
"""

# A test plugin (found in the recipe's folder): fails on one rank, dumps each rank's weights.
PROBE = """
from pathlib import Path

import attrs
import torch

from denoisekit import ComponentSpec, hookimpl
from denoisekit.config import option


@attrs.frozen(kw_only=True)
class ProbeConfig:
    fail_step: int = option(0, "raise in the forward pass of this step (0: never)")
    fail_rank: int = option(1, "on this rank")
    dump_step: int = option(0, "save this rank's weights and EMA after this step")


class Probe:
    def __init__(self, config):
        self.config = config

    @hookimpl
    def denoisekit_train_forward(self, run):
        if run.step + 1 == self.config.fail_step and run.rank == self.config.fail_rank:
            raise RuntimeError(f"injected failure at step {run.step + 1}")

    @hookimpl
    def denoisekit_train_step_end(self, run, step):
        if step == self.config.dump_step:
            state = {"model": run.model.state_dict(), "ema": run.hooks["ema"].model.state_dict()}
            torch.save(state, Path(run.out_dir) / f"rank-{run.rank}.pt")


@hookimpl
def denoisekit_components():
    return [ComponentSpec(kind="hook", name="dist-probe", config=ProbeConfig, build=Probe)]
"""


def write_recipe(folder: Path) -> Path:
    """The recipe and its probe plugin, in ``folder``."""
    (folder / "dist_probe.py").write_text(PROBE)
    path = folder / "ddp.toml"
    path.write_text(textwrap.dedent(RECIPE))
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args: str, cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run ... -m denoisekit ARGS`` on loopback, one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if sys.platform.startswith("linux") and Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
        f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        "-m", "denoisekit", *args,
    ]  # fmt: skip
    try:
        return subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired as exc:  # a hang is a failure, with what it printed
        pytest.fail(f"torchrun hung: {exc.stdout!r} {exc.stderr!r}")


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run; tiny tensors, a loaded machine
    return before


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 1-process run (4 steps) and a 2-rank run whose rank 1 fails at step 5."""
    folder = tmp_path_factory.mktemp("ddp")
    recipe = write_recipe(folder)
    before = _single_thread()
    try:
        single = folder / "single"
        assert main(["train", str(recipe), "--out", str(single), "--set", "train.steps=4"]) == 0
        two = folder / "two"
        failed = torchrun("train", str(recipe), "--out", str(two), cwd=folder)
        yield types.SimpleNamespace(
            folder=folder, recipe=recipe, single=single, two=two, failed=failed
        )
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- training


def test_two_ranks_equal_one_process_with_the_same_global_batch(runs):
    one = _state(runs.single / "checkpoints" / "step-00000004.pt")
    two = _state(runs.two / "checkpoints" / "step-00000004.pt")
    assert two["step"] == 4
    _assert_close(one["model"], two["model"])
    _assert_close(one["hooks"]["ema"]["model"], two["hooks"]["ema"]["model"])
    momentum = [s["momentum_buffer"] for s in two["optimizer"]["state"].values()]
    reference = [s["momentum_buffer"] for s in one["optimizer"]["state"].values()]
    _assert_close(dict(enumerate(reference)), dict(enumerate(momentum)))
    # The global data position and the run generator (t, noise) do not depend on ranks.
    assert one["data"] == two["data"] == {"epoch": 0, "position": 8}
    assert torch.equal(one["rng"]["generator"], two["rng"]["generator"])
    # ... and the weights moved: equality is not that of two untrained models.
    first = _state(runs.two / "checkpoints" / "step-00000002.pt")
    assert any(not torch.allclose(first["model"][k], two["model"][k]) for k in two["model"])


def test_ranks_hold_identical_weights_and_ema(runs):
    rank0, rank1 = _state(runs.two / "rank-0.pt"), _state(runs.two / "rank-1.pt")
    for part in ("model", "ema"):
        assert all(torch.equal(rank0[part][k], rank1[part][k]) for k in rank0[part]), part


def test_only_rank_zero_logs_and_the_logged_loss_is_the_global_one(runs):
    def losses(folder: Path) -> dict[int, float]:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        steps = [json.loads(line)["step"] for line in lines]
        assert len(steps) == len(set(steps)), "several ranks wrote metrics.jsonl"
        return {json.loads(line)["step"]: json.loads(line)["loss"] for line in lines}

    one, two = losses(runs.single), losses(runs.two)
    assert sorted(two) == [2, 4]  # rank 1 failed in step 5
    for step in (2, 4):
        # Rank 0's own loss (half the batch) would differ by far more than this.
        assert two[step] == pytest.approx(one[step], rel=1e-5)
    assert runs.failed.stdout.count("step 4/6 loss") == 1  # one progress line: rank 0


def test_a_failed_rank_ends_the_run_with_a_message_and_keeps_the_checkpoint(runs):
    result = runs.failed
    assert result.returncode != 0
    assert "rank 1 of 2 failed: RuntimeError: injected failure at step 5" in result.stderr
    folder = runs.two / "checkpoints"
    steps = sorted(p.name for p in folder.glob("step-*.pt"))
    assert steps == ["step-00000002.pt", "step-00000004.pt"]
    last = _state(folder / "last.pt")  # loads: intact
    assert last["step"] == 4
    _assert_close(last["model"], _state(folder / "step-00000004.pt")["model"])


def test_resume_a_two_rank_checkpoint_on_one_process(runs, tmp_path):
    before = _single_thread()
    try:
        out = tmp_path / "two-to-one"
        status = main(["train", str(runs.recipe), "--out", str(out), "--set", "train.steps=4",
                       "--resume", str(runs.two / "checkpoints" / "step-00000002.pt")])  # fmt: skip
    finally:
        torch.set_num_threads(before)
    assert status == 0
    one = _state(runs.single / "checkpoints" / "step-00000004.pt")
    resumed = _state(out / "checkpoints" / "last.pt")
    assert resumed["step"] == 4
    _assert_close(one["model"], resumed["model"])
    _assert_close(one["hooks"]["ema"]["model"], resumed["hooks"]["ema"]["model"])


def test_resume_a_one_process_checkpoint_on_two_ranks(runs):
    out = runs.folder / "one-to-two"
    result = torchrun(
        "train", str(runs.recipe), "--out", str(out), "--set", "train.steps=4",
        "--resume", str(runs.single / "checkpoints" / "step-00000002.pt"), cwd=runs.folder,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("trained 4 steps") == 1  # rank 0 alone reports
    one = _state(runs.single / "checkpoints" / "step-00000004.pt")
    resumed = _state(out / "checkpoints" / "last.pt")
    assert resumed["step"] == 4
    _assert_close(one["model"], resumed["model"])
    _assert_close(one["hooks"]["ema"]["model"], resumed["hooks"]["ema"]["model"])


# --------------------------------------------------------------------------- sampling


def test_sharded_sampling_writes_the_single_process_npz(runs):
    one, two = runs.folder / "one.npz", runs.folder / "two.npz"
    before = _single_thread()
    try:  # 5 images in batches of 2: ranks draw 2 and 3, in batches other than these
        args = [str(runs.single), "-n", "5", "--batch-size", "2", "--seed", "7"]
        assert main(["sample", *args, "--out", str(one)]) == 0
    finally:
        torch.set_num_threads(before)
    result = torchrun("sample", *args, "--out", str(two), cwd=runs.folder)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("wrote 5 images") == 1
    with np.load(one) as a, np.load(two) as b:
        assert sorted(a.files) == sorted(b.files) == ["arr_0"]
        assert a["arr_0"].shape == (5, 8, 8, 1)
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])


# --------------------------------------------------------------------------- units


def test_batch_stream_ranks_take_equal_slices_of_the_single_process_batches():
    data = torch.utils.data.TensorDataset(torch.arange(22.0), torch.arange(22))
    cpu = torch.device("cpu")
    single = BatchStream(data, batch_size=4, seed=5, device=cpu)
    ranks = [BatchStream(data, batch_size=4, seed=5, device=cpu, rank=r, world_size=2)
             for r in range(2)]  # fmt: skip
    for _ in range(12):  # 5 batches an epoch: crosses two epoch boundaries
        expected = next(single)[1].tolist()
        parts = [next(stream)[1].tolist() for stream in ranks]
        assert [len(p) for p in parts] == [2, 2]
        assert parts[0] + parts[1] == expected
        assert ranks[0].state_dict() == ranks[1].state_dict() == single.state_dict()


def test_the_global_batch_must_split_over_ranks_and_micro_batches(tmp_path):
    train = load_recipe(write_recipe(tmp_path)).train  # batch_size 8, grad_accum 2
    with pytest.raises(RecipeError, match=r"batch_size = 8 is the global batch .* 3 × 2 = 6"):
        distributed.check_train_config(train, DistContext(rank=0, world_size=3))
    four = DistContext(rank=0, world_size=4)
    distributed.check_train_config(train, four)  # 8 = 4 ranks × 2 micro-batches × 1 image
    distributed.check_train_config(attrs.evolve(train, batch_size=6), distributed.SINGLE)
    with pytest.raises(RecipeError, match="drop_last"):
        distributed.check_train_config(attrs.evolve(train, drop_last=False), four)


def test_shards_cover_every_image_once():
    for n in (1, 5, 8, 13):
        for world in (1, 2, 3, 4):
            ranges = [distributed.shard_range(n, DistContext(rank=r, world_size=world))
                      for r in range(world)]  # fmt: skip
            assert [i for lo, hi in ranges for i in range(lo, hi)] == list(range(n))
            assert max(hi - lo for lo, hi in ranges) - min(hi - lo for lo, hi in ranges) <= 1


def test_one_process_has_no_process_group_and_no_ddp(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env("cpu") is distributed.SINGLE
    run = build_run(load_recipe(write_recipe(tmp_path)), out_dir=tmp_path / "run")
    assert not torch.distributed.is_initialized()
    assert run.dist is distributed.SINGLE and run.world_size == 1 and run.is_main
    assert run.train_model is run.model
    assert run.batches.batch_size == 4 and run.batches.world_size == 1


def test_file_writing_hooks_exist_on_rank_zero_only(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path))
    hooks = {}
    for rank in (0, 1):
        run = build_run(recipe, out_dir=tmp_path / f"r{rank}", with_data=False,
                        dist=DistContext(rank=rank, world_size=2))  # fmt: skip
        hooks[rank] = (set(run.hooks), run.pm.get_plugin("core:metrics-file") is not None)
    assert hooks[0] == ({"ema", "checkpoint", "progress", "probe"}, True)
    assert hooks[1] == ({"ema", "probe"}, False)


def test_a_rank_error_names_the_rank(monkeypatch):
    monkeypatch.setattr(distributed, "init_from_env", lambda device: DistContext(1, 4))
    match = r"^rank 1 of 4: data folder missing$"
    with pytest.raises(DataError, match=match), distributed.session("cpu"):
        raise DataError("data folder missing")
