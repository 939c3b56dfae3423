"""Cross-field recipe checks: found when the recipe is loaded, so that ``recipe check``,
``train``, ``sample`` and ``compare`` all stop at once, in one line, before any work."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from denoisekit import CheckContext, ComponentSpec, hookimpl, option
from denoisekit.cli import main
from denoisekit.engine.sampling import image_generators
from denoisekit.errors import RecipeError, RegistryError
from denoisekit.host.plugin_manager import get_plugin_manager
from denoisekit.host.recipe import load_recipe
from denoisekit.host.registry import Registry
from denoisekit.testing import single_thread, train_tiny, write_recipe

WARMUP = {"lr_schedule": {"type": "warmup-cosine", "warmup_steps": 100}}


def one_line_error(capsys: pytest.CaptureFixture[str], status: int) -> str:
    """The one stderr line of a command that failed on a user error (exit 2)."""
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("denoisekit: error: ") and err.count("\n") == 1, err
    return err


# --------------------------------------------------------------------------- the mechanism


@attrs.frozen(kw_only=True)
class StepsConfig:
    steps: int = option(10, "steps")


@attrs.frozen(kw_only=True)
class LengthConfig:
    length: int = option(50, "timesteps")


seen: list[CheckContext] = []


def _build(config, **context):
    return config


def _check_steps(config: StepsConfig, context: CheckContext):
    seen.append(context)
    length = context.fact("schedule", "num_timesteps")
    if length is not None and config.steps > length:
        yield "steps", f"more than the schedule's {length}"


class ThirdParty:
    """A plugin as a third party writes one: a schedule stating a fact, a sampler checking it."""

    def __init__(self, facts=True, check=_check_steps) -> None:
        self.facts, self.check = facts, check

    @hookimpl
    def denoisekit_components(self):
        facts = (lambda c: {"num_timesteps": c.length}) if self.facts else None
        return [
            ComponentSpec(
                kind="schedule", name="long", config=LengthConfig, build=_build, facts=facts
            ),
            ComponentSpec(
                kind="sampler", name="stepper", config=StepsConfig, build=_build, check=self.check
            ),
        ]


def _registry(plugin: ThirdParty) -> Registry:
    return Registry.from_plugin_manager(get_plugin_manager(autoload=False, plugins=[plugin]))


THIRD_PARTY = {"schedule": {"type": "long", "length": 50}, "sampler": {"type": "stepper"}}


def test_a_plugin_check_sees_the_recipe_and_the_facts_and_reports_at_its_key(tmp_path):
    path = write_recipe(tmp_path, THIRD_PARTY)
    registry = _registry(ThirdParty())
    seen.clear()
    recipe = load_recipe(path, ["sampler.steps=50"], registry=registry)
    (context,) = seen
    assert context.recipe == recipe and context.table == "sampler"
    assert context.fact("schedule", "num_timesteps") == 50
    assert context.fact("data", "image_shape") == (1, 8, 8)  # the built-in digits state it
    assert context.fact("schedule", "nothing") is None
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["sampler.steps=51"], registry=registry)
    assert str(info.value) == (f"{path}: sampler.steps: more than the schedule's 50 (set by --set)")


def test_a_fact_no_component_states_is_unknown_and_the_check_passes(tmp_path):
    path = write_recipe(tmp_path, THIRD_PARTY)
    recipe = load_recipe(path, ["sampler.steps=51"], registry=_registry(ThirdParty(facts=False)))
    assert recipe.sampler.config.steps == 51


def test_a_check_that_crashes_names_its_plugin_in_one_line(tmp_path):
    def broken(config, context):
        raise KeyError("oops")

    path = write_recipe(tmp_path, THIRD_PARTY)
    with pytest.raises(
        RegistryError,
        match=r"sampler 'stepper': its check failed on this recipe: "
        r"KeyError",
    ) as info:
        load_recipe(path, registry=_registry(ThirdParty(check=broken)))
    assert "plugin " in str(info.value) and "\n" not in str(info.value)


def test_a_check_that_is_not_callable_breaks_the_contract():
    with pytest.raises(RegistryError, match="check must be callable"):
        _registry(ThirdParty(check=42))


# --------------------------------------------------------------------------- the commands


def test_warmup_longer_than_the_run_fails_check_and_train_alike(tmp_path, capsys):
    """The issue's first case: recipe check said ok, train failed after building."""
    path = write_recipe(tmp_path, WARMUP)
    args = ["--set", "train.steps=30"]
    checked = one_line_error(capsys, main(["recipe", "check", str(path), *args]))
    assert "lr_schedule.warmup_steps: 100 warmup steps exceed the run's 30 steps" in checked
    out = tmp_path / "run"
    trained = one_line_error(capsys, main(["train", str(path), "--out", str(out), *args]))
    assert trained == checked
    assert not out.exists()  # nothing was built or written


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A two-step tiny run with a checkpoint, on a 100-timestep schedule."""
    folder = tmp_path_factory.mktemp("trained")
    path = write_recipe(folder, {"hooks": {"checkpoint": {"every": 2}}})
    run = train_tiny(path, out_dir=folder / "run")
    assert run.recipe.schedule.config.num_timesteps == 100
    return folder / "run"


@pytest.mark.parametrize("sampler", [[], ["--sampler", "ddpm"]])
def test_sampler_steps_beyond_the_schedule_fail_sample_at_once(
    trained_run, tmp_path, capsys, sampler
):
    out = tmp_path / "s.npz"
    args = ["sample", str(trained_run), "-n", "2", "--out", str(out), *sampler]
    with single_thread():
        error = one_line_error(capsys, main([*args, "--set", "sampler.steps=500"]))
    assert "sampler.steps: 500 steps exceed the schedule's 100 timesteps" in error
    assert "(set by --set)" in error and str(trained_run) in error
    assert not out.exists()


def test_sampler_steps_beyond_the_schedule_fail_check_train_and_compare(tmp_path, capsys):
    path = write_recipe(tmp_path, {"sampler": {"type": "ddim", "steps": 500}})
    checked = one_line_error(capsys, main(["recipe", "check", str(path)]))
    assert "sampler.steps: 500 steps exceed the schedule's 100 timesteps; set sampler.steps" in (
        checked
    )
    out = tmp_path / "run"
    assert one_line_error(capsys, main(["train", str(path), "--out", str(out)])) == checked
    assert not out.exists()
    ok = write_recipe(tmp_path, name="ok")
    vary = ["--vary", "sampler.steps=5,500", "--dry-run", "--out", str(tmp_path / "cmp")]
    error = one_line_error(capsys, main(["compare", str(ok), *vary]))
    assert "sampler.steps: 500 steps exceed the schedule's 100 timesteps" in error


def test_sample_device_that_is_no_device_is_one_line_naming_the_flag(trained_run, capsys):
    args = ["sample", str(trained_run), "-n", "2", "--device", "gpu"]
    error = one_line_error(capsys, main(args))
    assert "train.device: 'device' must be auto, cpu, cuda, cuda:N or mps: 'gpu'" in error
    assert "(set by --device)" in error


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "meta", "tpu", ""])
def test_a_device_string_torch_cannot_train_on_fails_at_load(tmp_path, device):
    path = write_recipe(tmp_path, {"train": {"device": device}})
    with pytest.raises(RecipeError, match=r"train.device: 'device' must be auto, cpu, cuda, "):
        load_recipe(path)


def test_cuda_on_a_machine_without_cuda_fails_at_load(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        path = write_recipe(tmp_path, {"train": {"device": device}})
        with pytest.raises(RecipeError, match=rf"train.device: '{device}': CUDA is not available"):
            load_recipe(path)
    assert load_recipe(write_recipe(tmp_path, {"train": {"device": "auto"}})).train.device


def test_a_cuda_index_the_machine_lacks_fails_at_load(tmp_path, monkeypatch):
    import torch

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert load_recipe(write_recipe(tmp_path, {"train": {"device": "cuda:1"}}))
    path = write_recipe(tmp_path, {"train": {"device": "cuda:2"}})
    with pytest.raises(RecipeError, match=r"'cuda:2': this machine has 2 CUDA device"):
        load_recipe(path)


# --------------------------------------------------------------------------- integer ranges


@pytest.mark.parametrize(
    "override",
    [
        "seed=18446744073709551616",
        "seed=-9223372036854775809",
        "train.steps=9223372036854775808",
        "optimizer.lr=100000000000000000000000000000000",
    ],
)
def test_integers_beyond_64_bits_fail_at_load(tmp_path, override):
    key = override.split("=")[0]
    with pytest.raises(RecipeError, match=rf"{key}: -?\d+ is out of range: integers are 64-bit"):
        load_recipe(write_recipe(tmp_path), [override])


def test_every_64_bit_seed_trains(tmp_path):
    """Seeds feed generators after arithmetic ((seed, epoch), (seed, i)): no overflow."""
    for seed in (2**63 - 1, -(2**63)):
        path = write_recipe(tmp_path, {"seed": seed})
        run = train_tiny(path, out_dir=tmp_path / f"run{seed}")
        assert run.step == 2 and run.recipe.seed == seed


def test_image_generators_take_any_seed_and_keep_their_streams():
    import torch

    (g,) = image_generators(2**63 - 1, 5, 1)
    expected = torch.Generator().manual_seed(((2**63 - 1) * 1_000_003 + 5) % 2**64)
    assert torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=expected))
    (small,) = image_generators(7, 5, 1)  # the usual seeds: the streams they always had
    assert small.initial_seed() == 7 * 1_000_003 + 5


# --------------------------------------------------------------------------- data and backbone


def test_data_image_size_the_backbone_does_not_take_fails_at_load(tmp_path, capsys):
    path = write_recipe(tmp_path, {"data": {"type": "digits", "image_size": 16}})
    error = one_line_error(capsys, main(["recipe", "check", str(path)]))
    assert (
        "backbone.image_size: the data gives 1×16×16 images but the backbone expects 1×8×8; "
        "set backbone.image_size = 16"
    ) in error
    assert one_line_error(capsys, main(["train", str(path), "--out", str(tmp_path / "r")])) == (
        error
    )


def test_data_channels_the_backbone_does_not_take_fail_at_load(tmp_path):
    path = write_recipe(tmp_path)
    with pytest.raises(RecipeError, match=r"backbone.in_channels: .* set backbone.in_channels = 1"):
        load_recipe(path, ["backbone.in_channels=3"])


def test_a_batch_larger_than_the_data_fails_at_load(tmp_path):
    path = write_recipe(tmp_path)
    with pytest.raises(
        RecipeError,
        match=r"train.batch_size: the data's training split has 1437 images, fewer "
        r"than one micro-batch of 2000",
    ):
        load_recipe(path, ["train.batch_size=2000"])
    # test split: 360 images; micro-batches of batch_size / grad_accum; drop_last off: fine
    with pytest.raises(RecipeError, match="has 360 images, fewer than one micro-batch of 400"):
        load_recipe(path, ["data.split=test", "train.batch_size=800", "train.grad_accum=2"])
    assert load_recipe(path, ["data.split=test", "train.batch_size=800", "train.grad_accum=4"])
    assert load_recipe(path, ["train.batch_size=2000", "train.drop_last=false"])
