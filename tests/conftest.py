"""Shared fixtures: a fresh process-wide registry around every test."""

from __future__ import annotations

import pytest
import torch

from nssm_core import reset_registry

# The suite runs many small tensor operations; one thread avoids oversubscription on shared CI cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_registry_and_seed():
    """Reload plugins for each test so a test that swaps the registry cannot leak into others."""
    reset_registry()
    torch.manual_seed(0)
    yield
    reset_registry()
