"""denoisekit.engine.evaluation (the context metrics share, running and logging them) and the
``denoisekit eval`` command."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch

from denoisekit.cli import main
from denoisekit.engine.build import build_run
from denoisekit.engine.evaluation import (
    EvalContext,
    SampleSet,
    append_results,
    build_metrics,
    evaluate,
    format_results,
    load_samples_npz,
)
from denoisekit.engine.image_files import from_uint8, to_uint8
from denoisekit.engine.loop import train
from denoisekit.engine.reference import reference_recipe
from denoisekit.engine.sampling import sample_images, save_npz
from denoisekit.errors import DenoisekitError, RegistryError
from denoisekit.host.recipe import load_recipe
from denoisekit.images import quantize
from tests.plugins.test_metric_digits import shared_cache_dir

TINY = """
name = "tiny-eval"
seed = 0
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
[schedule]
type = "cosine"
num_timesteps = 40
[sampler]
type = "ddim"
steps = 3
[train]
steps = 2
batch_size = 8
log_every = 1
device = "cpu"
[metrics.fd]
features = "digits"
[metrics.nll]
steps = 4
num_images = 16
"""


def tiny_recipe(folder: Path, extra: str = "", name: str = "tiny"):
    """Write the tiny digits recipe (plus ``extra`` TOML) to ``folder`` and load it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(textwrap.dedent(TINY) + textwrap.dedent(extra), encoding="utf-8")
    return load_recipe(path)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors on a shared machine: one intra-op thread (see hook_runs.single_thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny untrained run (sampling works; numbers are meaningless)."""
    folder = tmp_path_factory.mktemp("evalrun")
    return build_run(tiny_recipe(folder), out_dir=folder / "run")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run folder trained 2 steps with a checkpoint."""
    folder = tmp_path_factory.mktemp("evaltrained")
    recipe = tiny_recipe(folder, "[hooks.checkpoint]\nevery = 2\n")
    train(build_run(recipe, out_dir=folder / "run"))
    return folder / "run"


# --------------------------------------------------------------------------- helpers


def test_uint8_round_trip_and_quantize() -> None:
    x = torch.rand(3, 2, 4, 5) * 2 - 1
    q = quantize(x)
    assert torch.equal(from_uint8(to_uint8(x)), q)
    assert torch.equal(quantize(q), q)  # idempotent: on the 8-bit grid
    levels = (q + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    grey = from_uint8(np.full((2, 4, 4), 255, np.uint8))
    assert grey.shape == (2, 1, 4, 4) and bool((grey == 1).all())


def test_load_samples_npz(tmp_path) -> None:
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    path = save_npz(tmp_path / "s.npz", images, torch.arange(4))
    samples = load_samples_npz(path)
    assert torch.equal(samples.images, quantize(images))
    assert samples.labels.tolist() == [0, 1, 2, 3] and samples.seconds is None
    with pytest.raises(DenoisekitError, match="not found"):
        load_samples_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", images=np.zeros((2, 8, 8, 1), np.uint8))
    with pytest.raises(DenoisekitError, match="no arr_0"):
        load_samples_npz(tmp_path / "other.npz")
    np.savez(tmp_path / "float.npz", np.zeros((2, 8, 8, 1), np.float32))
    with pytest.raises(DenoisekitError, match="uint8"):
        load_samples_npz(tmp_path / "float.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DenoisekitError, match="not a readable"):
        load_samples_npz(tmp_path / "junk.npz")


def test_append_results_and_format(tmp_path) -> None:
    path = append_results(tmp_path / "metrics.jsonl", 7, {"fd": 1.5, "nll_bpd": math.nan})
    append_results(path, 8, {"fd": 1.0})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"step": 7, "eval/fd": 1.5, "eval/nll_bpd": None}, {"step": 8, "eval/fd": 1.0}]
    table = format_results({"fd": 1.5, "sec_per_image": 0.25})
    assert "fd" in table and "0.25" in table.splitlines()[-1]


# --------------------------------------------------------------------------- the context


def test_samples_are_drawn_once_and_shared(run) -> None:
    calls = []
    sampler = run.sampler

    class Counting:
        def num_evaluations(self, T):
            return sampler.num_evaluations(T)

        def sample(self, *args, **kwargs):
            calls.append(args[1].shape[0])
            return sampler.sample(*args, **kwargs)

    counted = attrs.evolve(run, sampler=Counting())  # the run record is frozen: a copy
    context = EvalContext(run=counted, num_samples=10, batch_size=4, seed=3)
    first = context.samples()
    assert context.samples() is first
    both = evaluate(
        context,
        {
            "a": lambda c: {"mean": float(c.sample_images().mean())},
            "b": lambda c: {"n": float(c.samples_uint8().shape[0])},
        },
    )
    assert calls == [4, 4, 2]  # one draw of 10 images, in batches of 4
    assert both["n"] == 10
    # image i is seeded from (seed, i): the same as sample_images with any batch size
    direct, _ = sample_images(run, 10, seed=3, batch_size=10)
    assert torch.equal(first.images, direct)
    assert first.num_evaluations == 3 and first.seconds > 0
    assert context.samples_uint8().shape == (10, 8, 8, 1)


def test_reference_images_are_the_held_out_split(run) -> None:
    context = EvalContext(run=run)
    images, labels = context.reference_images()
    assert images.shape == (360, 1, 8, 8) and labels is not None and labels.shape == (360,)
    state = torch.get_rng_state()
    sub, sub_labels = context.reference_images(50)
    assert torch.equal(torch.get_rng_state(), state)  # evaluation leaves global RNG alone
    again, _ = EvalContext(run=run).reference_images(50)
    assert torch.equal(sub, again)  # the same seeded subset
    other, _ = EvalContext(run=run, seed=1).reference_images(50)
    assert not torch.equal(sub, other)
    assert len(set(sub_labels.tolist())) > 5  # a random subset, not the first class only
    assert context.reference_key().startswith("digits-heldout-")


def test_a_sample_file_context_has_no_model() -> None:
    context = EvalContext(sample_set=SampleSet(images=torch.zeros(2, 1, 8, 8)))
    with pytest.raises(DenoisekitError, match="needs a trained model"):
        context.denoiser("nll")
    with pytest.raises(DenoisekitError, match="no reference data"):
        context.reference_data()


# --------------------------------------------------------------------------- metrics


def test_build_metrics_from_tables_and_defaults(run) -> None:
    recipe, registry = run.recipe, run.registry
    metrics = build_metrics(recipe, registry)
    assert list(metrics) == ["fd", "nll"]
    assert metrics["nll"].config.steps == 4  # the recipe's table
    metrics = build_metrics(recipe, registry, ["sample-time", "nll"])
    assert list(metrics) == ["sample-time", "nll"]
    assert metrics["sample-time"].config.num_images is None  # registered defaults
    with pytest.raises(RegistryError, match="unknown metric 'fid'"):
        build_metrics(recipe, registry, ["fid"])


def test_tables_named_differently_prefix_their_keys(tmp_path) -> None:
    recipe = tiny_recipe(tmp_path, '[metrics.fast_nll]\ntype = "nll"\nsteps = 2\n')
    from denoisekit.host.registry import load_registry

    metrics = build_metrics(recipe, load_registry(), ["fast_nll"])
    assert metrics["fast_nll"].requires_model  # passed through from the nll metric

    class Stub:
        def __call__(self, context):
            return {"nll_bpd": 1.0}

    metrics["fast_nll"].metric = Stub()
    assert evaluate(EvalContext(), metrics) == {"fast_nll/nll_bpd": 1.0}


def test_evaluate_merges_and_rejects_clashes() -> None:
    seen = []
    out = evaluate(
        EvalContext(),
        {"a": lambda c: {"x": 1}, "b": lambda c: {"y": torch.tensor(2.0)}},
        on_result=lambda name, values: seen.append(name),
    )
    assert out == {"x": 1.0, "y": 2.0} and seen == ["a", "b"]
    assert all(type(v) is float for v in out.values())
    with pytest.raises(DenoisekitError, match="already reported"):
        evaluate(EvalContext(), {"a": lambda c: {"x": 1}, "b": lambda c: {"x": 2}})


def test_reference_recipe_from_name_file_and_run(tmp_path, trained) -> None:
    recipe, registry = reference_recipe("digits", ["data.image_size=16"])
    assert recipe.data.type == "digits" and recipe.data.config.image_size == 16
    assert "fd" in registry.names("metric")
    path = tmp_path / "r.toml"
    path.write_text(textwrap.dedent(TINY))
    recipe, _ = reference_recipe(path)
    assert recipe.name == "tiny-eval" and "fd" in recipe.metrics
    recipe, _ = reference_recipe(trained)
    assert recipe.name == "tiny-eval"
    with pytest.raises(DenoisekitError, match="did you mean 'digits'"):
        reference_recipe("digitz")
    with pytest.raises(DenoisekitError, match="no such recipe"):
        reference_recipe(str(tmp_path / "missing.toml"))


# --------------------------------------------------------------------------- the command


def test_eval_command_prints_and_appends(trained, capsys, monkeypatch) -> None:
    monkeypatch.setenv("DENOISEKIT_CACHE", str(shared_cache_dir()))
    before = (trained / "metrics.jsonl").read_text().splitlines()
    code = main(
        [
            "eval",
            str(trained),
            "--metric",
            "fd",
            "--metric",
            "sample-time",
            "-n",
            "20",
            "--batch-size",
            "10",
            "--set",
            "sampler.steps=2",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "step 2" in out and "fd" in out and "nfe_per_image" in out
    after = (trained / "metrics.jsonl").read_text().splitlines()
    assert len(after) == len(before) + 1
    record = json.loads(after[-1])
    assert record["step"] == 2 and record["eval/nfe_per_image"] == 2.0  # the override
    assert record["eval/fd"] > 0
    # --no-log leaves the file alone; the recipe's tables are the default metrics
    assert main(["eval", str(trained), "-n", "8", "--no-log", "--set", "metrics.nll.steps=2"]) == 0
    out = capsys.readouterr().out
    assert "nll_bpd" in out and "fd" in out
    assert (trained / "metrics.jsonl").read_text().splitlines() == after


def test_eval_command_scores_a_sample_file(tmp_path, trained, capsys, monkeypatch) -> None:
    monkeypatch.setenv("DENOISEKIT_CACHE", str(shared_cache_dir()))
    from denoisekit.host.registry import load_registry

    registry = load_registry()
    test = registry.build("data", "digits", None, train=False)
    path = save_npz(tmp_path / "real.npz", test.images[:200])
    assert main(["eval", "--samples", str(path), "--reference", "digits"]) == 0
    out = capsys.readouterr().out
    fd = float(next(line.split()[1] for line in out.splitlines() if line.startswith("fd ")))
    assert 0 <= fd < 5  # real held-out digits against the held-out split
    # the recipe's model-free metrics only (fd, not nll) by default
    assert main(["eval", "--samples", str(path), "--reference", str(trained)]) == 0
    out = capsys.readouterr().out
    assert "fd" in out and "nll" not in out
    assert main(["eval", "--samples", str(path), "--reference", "digits", "--metric", "nll"]) == 2
    assert "needs a trained model" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval"], "give a run folder or checkpoint, or --samples"),
        (["eval", "--samples", "s.npz"], "--samples needs --reference"),
        (["eval", "RUN", "-n", "0"], "must be positive"),
        (["eval", "no/such/run"], "no such run folder or checkpoint"),
    ],
)
def test_eval_command_errors(argv, message, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_eval_command_unknown_metric(trained, capsys) -> None:
    assert main(["eval", str(trained), "--metric", "fid", "--no-log"]) == 2
    assert "unknown metric 'fid'" in capsys.readouterr().err
