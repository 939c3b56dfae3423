"""The TensorBoard hook: event files read back with TensorBoard's EventAccumulator."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from denoisekit.engine.loop import train
from denoisekit.errors import NonFiniteLossError
from denoisekit.files import RunPaths
from denoisekit.plugins.hooks.tensorboard import (
    TensorBoardConfig,
    TensorBoardHook,
    flatten_recipe,
)
from tests.plugins.hook_runs import Poison, single_thread, tiny_recipe, tiny_run


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    yield from single_thread()


def _accumulator(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


# --------------------------------------------------------------------------- units


def test_loss_per_timestep_range_means(tmp_path) -> None:
    run = SimpleNamespace(
        out_dir=tmp_path,
        paths=RunPaths(tmp_path),
        schedule=SimpleNamespace(num_timesteps=100),
        device=torch.device("cpu"),
    )
    hook = TensorBoardHook(TensorBoardConfig())
    hook.denoisekit_configure(run=run)
    assert hook.bin_edges() == [(0, 24), (25, 49), (50, 74), (75, 99)]
    batches = [
        ([0, 24, 25, 99], [1.0, 2.0, 3.0, 4.0]),
        ([50, 74, 99, 99], [5.0, 6.0, 8.0, 9.0]),
    ]
    for t, losses in batches:
        hook.denoisekit_train_step_end(loss_per_sample=torch.tensor(losses), t=torch.tensor(t))
    scalars: dict[str, float] = {"loss": 1.0}  # a training log line
    hook.add_timestep_losses(scalars=scalars)
    scalars.pop("loss")
    assert scalars == {
        "loss_by_timestep/0-24": 1.5,
        "loss_by_timestep/25-49": 3.0,
        "loss_by_timestep/50-74": 5.5,
        "loss_by_timestep/75-99": 7.0,
    }
    after: dict[str, float] = {"loss": 1.0}
    hook.add_timestep_losses(scalars=after)  # the accumulators were reset
    assert after == {"loss": 1.0}
    evaluation = {"eval/fd": 2.0}
    hook.add_timestep_losses(scalars=evaluation)  # not a training line: left alone
    assert evaluation == {"eval/fd": 2.0}


def test_uneven_bins_cover_every_timestep_once(tmp_path) -> None:
    run = SimpleNamespace(
        out_dir=tmp_path,
        paths=RunPaths(tmp_path),
        schedule=SimpleNamespace(num_timesteps=10),
        device=torch.device("cpu"),
    )
    hook = TensorBoardHook(TensorBoardConfig(timestep_bins=4))
    hook.denoisekit_configure(run=run)
    edges = hook.bin_edges()
    assert edges == [(0, 2), (3, 4), (5, 7), (8, 9)]
    hook.denoisekit_train_step_end(
        loss_per_sample=torch.arange(10, dtype=torch.float32), t=torch.arange(10)
    )
    scalars: dict[str, float] = {"loss": 1.0}  # a training log line
    hook.add_timestep_losses(scalars=scalars)
    scalars.pop("loss")
    for lo, hi in edges:  # the mean of t over each range, since loss == t here
        assert scalars[f"loss_by_timestep/{lo}-{hi}"] == pytest.approx((lo + hi) / 2)


def test_flatten_recipe() -> None:
    data = {"seed": 0, "plugins": [], "optimizer": {"type": "adamw", "lr": 2e-4}, "hooks": {}}
    data["backbone"] = {"channel_mults": [1, 2], "use": True}
    assert flatten_recipe(data) == {
        "seed": 0,
        "plugins": "[]",
        "optimizer.type": "adamw",
        "optimizer.lr": 2e-4,
        "backbone.channel_mults": "[1, 2]",
        "backbone.use": True,
    }


# --------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tb")
    hooks = {"tensorboard": {}, "preview": {"every": 2, "num_images": 4}}
    run = tiny_run(folder, tiny_recipe(folder, steps=4, hooks=hooks))
    train(run)
    return run, _accumulator(run.out_dir / "tensorboard")


def test_scalars_match_the_metrics_file(logged_run) -> None:
    run, acc = logged_run
    rows = [json.loads(line) for line in (run.out_dir / "metrics.jsonl").read_text().splitlines()]
    tags = acc.Tags()["scalars"]
    for name in ("loss", "lr", "images_per_sec", "grad_norm"):
        events = acc.Scalars(f"train/{name}")
        assert [e.step for e in events] == [2, 4]
        for event, row in zip(events, rows, strict=True):
            assert event.value == pytest.approx(row[name], rel=1e-6)
    by_t = [tag for tag in tags if tag.startswith("loss_by_timestep/")]
    assert by_t  # each row has the ranges that were drawn
    for tag in by_t:
        for event in acc.Scalars(tag):
            row = rows[[2, 4].index(event.step)]
            assert event.value == pytest.approx(row[tag], rel=1e-6)


def test_recipe_text_and_preview_images(logged_run) -> None:
    _, acc = logged_run
    (text_event,) = acc.Tensors("recipe/text_summary")
    text = text_event.tensor_proto.string_val[0].decode()
    assert 'type = "unet"' in text
    assert text.splitlines()[0].startswith("    ")  # a Markdown code block
    images = acc.Images("samples")
    assert [i.step for i in images] == [2, 4]


def test_hparams_link_the_recipe_to_final_metrics(logged_run) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    run, acc = logged_run
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    metric_tags = {m.name.tag for m in experiment.experiment.metric_infos}
    assert {"train/loss", "train/lr"} <= metric_tags
    assert metric_tags <= set(acc.Tags()["scalars"])  # each metric is a logged series
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["optimizer.lr"].number_value == pytest.approx(2e-4)
    assert hparams["backbone.channel_mults"].string_value == "[1, 2]"
    assert hparams["train.steps"].number_value == 4
    assert run.hooks["tensorboard"].writer is None  # closed


def test_closes_and_keeps_events_on_error(tmp_path) -> None:
    hooks = {"tensorboard": {}, "nan-guard": {}}
    recipe = tiny_recipe(tmp_path, steps=3, hooks=hooks, train={"log_every": 1})
    run = tiny_run(tmp_path, recipe, extra_hooks=(Poison(from_step=2),))
    with pytest.raises(NonFiniteLossError):
        train(run)
    assert run.hooks["tensorboard"].writer is None
    acc = _accumulator(run.out_dir / "tensorboard")
    assert [e.step for e in acc.Scalars("train/loss")] == [1]
    with pytest.raises(KeyError):  # HParams are written at the end of a finished run only
        acc.PluginTagToContent("hparams")
    assert acc.Tensors("recipe/text_summary")


def test_bad_options_name_the_field() -> None:
    with pytest.raises(ValueError, match="timestep_bins"):
        TensorBoardConfig(timestep_bins=0)
