"""Bad input gives one line on stderr (``denoisekit: error: ...``) naming what and where, exit
status 2, before any work starts; ``--debug`` shows the traceback."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from denoisekit.cli import main
from denoisekit.engine.build import resolve_device
from denoisekit.errors import DataError
from denoisekit.testing import write_recipe


def error_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI; assert exit status 2 and exactly one stderr line; return that line."""
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse exits itself
        status = exc.code
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("denoisekit: error: "), err
    return lines[0]


# --------------------------------------------------------------------------- recipe files


def test_recipe_not_utf8_names_file_offset_and_line(tmp_path, capsys):
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "x"\n# café\n'.encode("latin-1"))
    line = error_line(["recipe", "check", str(path)], capsys)
    assert line == (
        f"denoisekit: error: {path}: not UTF-8 text: byte 0xe9 at offset 16 (line 2); TOML "
        "files must be UTF-8, re-save it in that encoding"
    )


def test_extended_recipe_not_utf8_names_that_file(tmp_path, capsys):
    (tmp_path / "base.toml").write_bytes(b"seed = 1 # \xff\n")
    path = tmp_path / "top.toml"
    path.write_text('extends = "base.toml"\n')
    line = error_line(["recipe", "check", str(path)], capsys)
    assert f"{tmp_path / 'base.toml'}: not UTF-8 text: byte 0xff at offset 11 (line 1)" in line


def test_recipe_with_byte_order_mark_loads(tmp_path, capsys):
    path = write_recipe(tmp_path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert main(["recipe", "check", str(path)]) == 0
    assert "ok (tiny)" in capsys.readouterr().out
    path.write_bytes(b"\xef\xbb\xbfseed = 1\n# \xff\n")
    line = error_line(["recipe", "check", str(path)], capsys)
    assert f"{path}: not UTF-8 text: byte 0xff at offset 14 (line 2)" in line  # the file's offset


def test_recipe_path_that_is_a_folder(tmp_path, capsys):
    line = error_line(["recipe", "check", str(tmp_path)], capsys)
    assert line == f"denoisekit: error: {tmp_path}: is a folder; give the recipe's .toml file"


def test_missing_recipe_suggests_a_sibling(tmp_path, capsys):
    write_recipe(tmp_path)
    line = error_line(["train", str(tmp_path / "tiy.toml")], capsys)
    assert line == (
        f"denoisekit: error: {tmp_path / 'tiy.toml'}: recipe file not found "
        "(did you mean 'tiny.toml'?)"
    )


def test_recipe_syntax_error_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n[data\ntype = "digits"\n')
    line = error_line(["recipe", "check", str(path)], capsys)
    assert line.startswith(f"denoisekit: error: {path}: TOML syntax error: ")
    assert "(at line 2, column 6)" in line


def test_extends_missing_file(tmp_path, capsys):
    path = tmp_path / "top.toml"
    path.write_text('extends = "nothere.toml"\n')
    line = error_line(["recipe", "check", str(path)], capsys)
    assert f"{path}: extends: 'nothere.toml' not found" in line


def test_debug_shows_the_traceback(tmp_path, capsys):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# \xe9\n")
    assert main(["--debug", "recipe", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith("denoisekit: error: ")


# --------------------------------------------------------------------------- command lines


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["train", "r.toml", "--bogus"],
            "unrecognized arguments: --bogus (see denoisekit train --help)",
        ),
        (
            ["recipe", "check"],
            "the following arguments are required: recipe (see denoisekit recipe check --help)",
        ),
        (
            ["sample", "run", "--seed", "x"],
            "argument --seed: invalid int value: 'x' (see denoisekit sample --help)",
        ),
        (
            ["trian", "r.toml"],
            "argument COMMAND: invalid choice: 'trian' (did you mean 'train'?) (choose from "
            "'train', 'sample', 'edit', 'compare', 'eval', 'import-diffusers', 'export-diffusers', "
            "'data', 'plugins', 'recipe') (see denoisekit --help)",
        ),
        (
            ["recipe", "chek", "r.toml"],
            "argument ACTION: invalid choice: 'chek' (did you mean 'check'?) (choose from "
            "'check', 'show') (see denoisekit recipe --help)",
        ),
        ([], "the following arguments are required: COMMAND (see denoisekit --help)"),
    ],
)
def test_usage_error_is_one_line_naming_the_argument_and_the_help(argv, expected, capsys):
    assert error_line(argv, capsys) == f"denoisekit: error: {expected}"


def test_help_is_unchanged(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    captured = capsys.readouterr()
    assert info.value.code == 0 and captured.err == ""
    assert captured.out.startswith("usage: denoisekit train [-h] [--set KEY.PATH=VALUE]")
    assert "--debug" not in captured.out  # accepted after the command, documented before it


def test_debug_after_the_command_shows_the_traceback(tmp_path, capsys):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# \xe9\n")
    assert main(["recipe", "check", str(path), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


# --------------------------------------------------------------------------- failing plugins

PLUGIN_HEAD = """
import attrs
from denoisekit import ComponentSpec, hookimpl

@attrs.frozen
class Cfg:
    in_channels: int = 1
    image_size: int = 8
"""


@pytest.fixture
def plugin_recipe(tmp_path):
    """Write ``<module>.py`` (``PLUGIN_HEAD`` + code) and a tiny recipe loading it."""
    modules: list[str] = []

    def write(module: str, code: str, overrides: dict) -> Path:
        (tmp_path / f"{module}.py").write_text(PLUGIN_HEAD + textwrap.dedent(code))
        modules.append(module)
        return write_recipe(tmp_path, {"plugins": [module], **overrides})

    yield write
    for module in modules:
        sys.modules.pop(module, None)


def test_backbone_build_raising_names_plugin_and_component(plugin_recipe, tmp_path, capsys):
    recipe = plugin_recipe(
        "errplug_build",
        """
        def build(config):
            raise ValueError("third-party says no")

        @hookimpl
        def denoisekit_components():
            return [ComponentSpec(kind="backbone", name="badnet", config=Cfg, build=build)]
        """,
        {"backbone": {"type": "badnet"}},
    )
    line = error_line(["train", str(recipe), "--out", str(tmp_path / "run")], capsys)
    assert line == (
        "denoisekit: error: plugin 'errplug_build' (recipe): backbone 'badnet' failed to build: "
        "ValueError: third-party says no (--debug shows where)"
    )
    assert not (tmp_path / "run").exists()
    assert main(["--debug", "train", str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert 'raise ValueError("third-party says no")' in err  # the plugin's own frame


HOOK_PLUGIN = """
class Hook:
    @hookimpl{marker}
    def {method}:
        pass

def build(config):
    return Hook()

@hookimpl
def denoisekit_components():
    return [ComponentSpec(kind="hook", name="myhook", config=Cfg, build=build)]
"""


@pytest.mark.parametrize(
    ("marker", "method", "problem"),
    [
        (
            "",
            "denoisekit_train_stat(self, run)",
            "plugin 'errplug_hook' (recipe): hook 'myhook': Hook.denoisekit_train_stat implements "
            "unknown hook 'denoisekit_train_stat' (did you mean 'denoisekit_train_start'?)",
        ),
        (
            "",
            "denoisekit_train_start(self, runn)",
            "plugin 'errplug_hook' (recipe): hook 'myhook': Hook.denoisekit_train_start asks for "
            "['runn'], which hook denoisekit_train_start does not pass (it passes ['run']) "
            "(did you mean 'run'?)",
        ),
        (  # what only pluggy checks: a wrapper of a historic hook
            "(hookwrapper=True)",
            "denoisekit_configure(self, run)",
            "plugin 'errplug_hook' (recipe): hook 'myhook' ([hooks.mine]): Plugin 'hook:mine' hook "
            "'denoisekit_configure' historic incompatible with yield/wrapper/hookwrapper",
        ),
    ],
)
def test_broken_hook_names_plugin_and_hook(
    marker, method, problem, plugin_recipe, tmp_path, capsys
):
    code = HOOK_PLUGIN.format(marker=marker, method=method)
    recipe = plugin_recipe("errplug_hook", code, {"hooks": {"mine": {"type": "myhook"}}})
    line = error_line(["train", str(recipe), "--out", str(tmp_path / "run")], capsys)
    assert line == f"denoisekit: error: {problem}"
    assert not (tmp_path / "run").exists()


SHAPE_PLUGIN = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.conv = nn.Conv2d(1, {out_channels}, 1)

    def forward(self, x_t, t, cond=None):
        return self.conv(x_t)[..., ::{stride}, ::{stride}]

@hookimpl
def denoisekit_components():
    return [ComponentSpec(kind="backbone", name="net", config=Cfg, build=Net)]
"""


@pytest.mark.parametrize(
    ("out_channels", "stride", "shape"),
    [(2, 1, "(8, 2, 8, 8)"), (1, 2, "(8, 1, 4, 4)")],  # broadcasts in the loss / fails in it
)
def test_backbone_output_of_the_wrong_shape_stops_training_at_once(
    out_channels, stride, shape, plugin_recipe, tmp_path, capsys
):
    code = SHAPE_PLUGIN.format(out_channels=out_channels, stride=stride)
    recipe = plugin_recipe("errplug_shape", code, {"backbone": {"type": "net"}})
    line = error_line(["train", str(recipe), "--out", str(tmp_path / "run")], capsys)
    assert line == (
        f"denoisekit: error: {recipe}: backbone 'net' (Net, plugin 'errplug_shape' (recipe)) "
        f"returned shape {shape} for an input of shape (8, 1, 8, 8); a backbone must return a "
        "tensor of its input's shape (one prediction per input value)"
    )
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no step was taken


def test_unet_with_more_output_channels_is_refused_when_the_recipe_loads(tmp_path, capsys):
    # The unet declares its output channels, so the recipe check catches it before any
    # work; a backbone that does not declare them is caught at the first step (above).
    recipe = write_recipe(tmp_path)
    argv = [
        "train",
        str(recipe),
        "--out",
        str(tmp_path / "run"),
        "--set",
        "backbone.out_channels=2",
    ]
    line = error_line(argv, capsys)
    assert line.startswith(f"denoisekit: error: {recipe}: backbone.out_channels: 2 ")
    assert line.endswith("(set by --set)")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- more bad input


def test_unknown_device_name(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    argv = ["train", str(recipe), "--out", str(tmp_path / "run"), "--set", "train.device=bogus"]
    assert error_line(argv, capsys) == (
        f"denoisekit: error: {recipe}: train.device: 'device' must be auto, cpu, cuda, cuda:N "
        "or mps: 'bogus' (set by --set)"
    )
    assert not (tmp_path / "run").exists()
    # A --device flag (sample, eval) goes through resolve_device: one line as well.
    with pytest.raises(DataError, match=r"^train.device = 'bogus' is not a device name; use"):
        resolve_device("bogus")


def test_unknown_component_kind_lists_the_kinds(capsys):
    assert error_line(["plugins", "nosuchkind"], capsys) == (
        "denoisekit: error: unknown component kind 'nosuchkind'; the kinds are data, "
        "autoencoder, schedule, backbone, loss, optimizer, lr_schedule, sampler, hook, metric"
    )


def test_unknown_compare_metric_fails_before_training(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    out = tmp_path / "cmp"
    argv = ["compare", str(recipe), "--vary", "sampler.steps=1,2", "--metric", "fid"]
    line = error_line([*argv, "-n", "2", "--out", str(out)], capsys)
    assert line.startswith("denoisekit: error: unknown metric 'fid' (did you mean 'fd'?)")
    assert not out.exists()


def test_a_multi_line_message_prints_as_one_line(plugin_recipe, tmp_path, capsys):
    recipe = plugin_recipe(
        "errplug_lines",
        """
        from denoisekit import DataError

        def build(config, root, train):
            raise DataError("no images in data/\\n  (looked for *.png)")

        @hookimpl
        def denoisekit_components():
            return [ComponentSpec(kind="data", name="lines", config=Cfg, build=build)]
        """,
        {"data": {"type": "lines"}},
    )
    line = error_line(["train", str(recipe), "--out", str(tmp_path / "run")], capsys)
    assert line == "denoisekit: error: no images in data/ (looked for *.png)"
