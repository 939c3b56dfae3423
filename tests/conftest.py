"""Shared fixtures: a fresh plugin manager, a seeded generator, tiny tensors."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded CPU generator."""
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Cached artefacts (the digits classifier, reference statistics) stay in a temp dir."""
    patch = pytest.MonkeyPatch()
    patch.setenv("DENOISEKIT_CACHE", str(tmp_path_factory.mktemp("denoisekit-cache")))
    yield
    patch.undo()
