"""Shared fixtures: a fresh process-wide registry around every test."""

from __future__ import annotations

import pytest
import torch

from nssm_core import reset_registry

# The suite runs many small tensor operations; one thread avoids oversubscription on shared CI cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_registry_and_seed():
    """Reload plugins and reset the seed and the thread count for each test.

    A test that swaps the registry cannot leak into others, and neither can a
    CLI run in the test process that sets its own thread count.
    """
    reset_registry()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
    reset_registry()
