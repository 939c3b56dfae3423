"""The version says what a release is: one source for the package version, the plugin
API's version beside it, and a changelog section for the release."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings

import pytest

import denoisekit
from tests.import_rules import ROOT

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")


def test_the_version_is_semver_and_pyproject_reads_it_from_the_package():
    assert SEMVER.match(denoisekit.__version__)
    from setuptools.config.pyprojecttoml import read_configuration

    with warnings.catch_warnings():  # setuptools calls [tool.setuptools] "beta"
        warnings.simplefilter("ignore")
        config = read_configuration(ROOT / "pyproject.toml", expand=True)
    assert config["project"]["version"] == denoisekit.__version__


def test_the_plugin_api_version_is_a_major_minor_pair():
    major, minor = denoisekit.PLUGIN_API_VERSION
    assert isinstance(major, int) and isinstance(minor, int) and major >= 2
    assert "PLUGIN_API_VERSION" in denoisekit.__all__


@pytest.mark.parametrize("argv", [["-m", "denoisekit", "--version"]])
def test_version_prints_the_package_and_the_plugin_api(argv):
    result = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, check=True, timeout=120
    )
    api = ".".join(map(str, denoisekit.PLUGIN_API_VERSION))
    assert result.stdout.strip() == f"denoisekit {denoisekit.__version__} (plugin API {api})"



CHANGELOG = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
GUIDE = (ROOT / "docs" / "writing-a-plugin.md").read_text(encoding="utf-8")
SECTIONS = ("Added", "Changed", "Deprecated", "Removed", "Fixed", "Security")


def test_the_changelog_keeps_a_changelog():
    releases = re.findall(r"^## \[([^\]]+)\](.*)$", CHANGELOG, flags=re.M)
    assert releases[0] == ("Unreleased", "")
    assert [name for name, _ in releases[1:]] == ["0.1.0"]  # 0.2.0 is the unreleased one
    assert re.fullmatch(r" - \d{4}-\d{2}-\d{2}", releases[1][1])
    assert f"**{denoisekit.__version__}**" in CHANGELOG.split("\n## [0.1.0]")[0]
    for heading in re.findall(r"^### (.+)$", CHANGELOG, flags=re.M):
        assert heading in SECTIONS, f"not a Keep a Changelog section: {heading}"


def test_the_changelog_entries_contract_errors_name_exist():
    from denoisekit.host.signatures import CHANGED

    for reference in CHANGED.values():
        entry, guide = re.findall(r"'([^']+)'", reference)
        assert f"**{entry}.**" in CHANGELOG, f"CHANGELOG.md has no entry {entry!r}"
        assert re.search(rf"^## (\d+\. )?{re.escape(guide)}$", GUIDE, flags=re.M), guide


def test_the_guide_states_the_compatibility_policy_and_the_migration():
    assert re.search(r"^## (\d+\. )?Compatibility$", GUIDE, flags=re.M)
    assert re.search(r"^## (\d+\. )?Migrating from 0\.1$", GUIDE, flags=re.M)
    assert "denoisekit>=0.2,<0.3" in GUIDE and "DenoisekitDeprecationWarning" in GUIDE
