"""The ``evaluate`` hook: metrics every N steps, logged as eval/<key>, training untouched."""

from __future__ import annotations

import json

import attrs
import pytest
import torch

from denoisekit.engine.build import build_run
from denoisekit.engine.loop import train
from denoisekit.errors import RecipeError
from tests.core.test_evaluation import tiny_recipe
from tests.plugins.test_metric_digits import shared_cache_dir

EVAL = """
[metrics.sample-time]
[hooks.evaluate]
every = 2
num_samples = 8
batch_size = 8
"""


@pytest.fixture(autouse=True)
def setup(monkeypatch):
    monkeypatch.setenv("DENOISEKIT_CACHE", str(shared_cache_dir()))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_logs_metrics_every_n_steps_and_at_the_end(tmp_path) -> None:
    recipe = tiny_recipe(tmp_path, EVAL + "[hooks.ema]\ndecay = 0.5\n")
    recipe = attrs.evolve(recipe, train=attrs.evolve(recipe.train, steps=5))
    run = build_run(recipe, out_dir=tmp_path / "run")
    hook = run.hooks["evaluate"]
    train(run)
    assert [step for step, _ in hook.history] == [2, 4, 5]  # every 2, and at the end
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    evals = [r for r in records if "eval/fd" in r]
    assert [r["step"] for r in evals] == [2, 4, 5]
    for r in evals:
        assert {"eval/fd", "eval/nll_bpd", "eval/sec_per_image", "eval/nfe_per_image"} <= set(r)
        assert r["eval/nfe_per_image"] == 3


def test_evaluation_does_not_change_training(tmp_path) -> None:
    def trained_params(folder, extra):
        recipe = tiny_recipe(folder, extra)
        run = build_run(recipe, out_dir=folder / "run")
        train(run)
        return {k: v.clone() for k, v in run.model.state_dict().items()}

    plain = trained_params(tmp_path / "a", "")
    evaluated = trained_params(tmp_path / "b", EVAL.replace("every = 2", "every = 1"))
    for key, value in plain.items():
        assert torch.equal(value, evaluated[key]), key


def test_configure_errors(tmp_path) -> None:
    with pytest.raises(RecipeError, match=r"no \[metrics.fid\] table"):
        build_run(
            tiny_recipe(tmp_path, '[hooks.evaluate]\nmetrics = ["fid"]\n'),
            out_dir=tmp_path / "run",
        )
    recipe = tiny_recipe(tmp_path, "[hooks.evaluate]\n")
    recipe = attrs.evolve(recipe, metrics={})
    with pytest.raises(RecipeError, match=r"no \[metrics.NAME\] tables"):
        build_run(recipe, out_dir=tmp_path / "run2")
    from denoisekit.plugins.hooks.evaluate import EvaluateConfig

    with pytest.raises(ValueError, match="'every' must be a positive integer"):
        EvaluateConfig(every=0)


@pytest.mark.parametrize(
    ("tables", "error"),
    [
        ('[hooks.evaluate]\nmetrics = ["fid"]\n', r"hooks\.evaluate\.metrics: no \[metrics\.fid\]"),
        ("[hooks.evaluate]\n", r"hooks\.evaluate: the recipe has no \[metrics\.NAME\] tables"),
    ],
)
def test_metrics_to_run_are_checked_when_the_recipe_is_loaded(tmp_path, tables, error) -> None:
    """`recipe check` used to pass these; `train` failed only once the run was built."""
    from denoisekit.host.recipe import load_recipe
    from denoisekit.testing import write_recipe

    path = write_recipe(tmp_path)
    path.write_text(path.read_text() + tables)
    with pytest.raises(RecipeError, match=error):
        load_recipe(path)
