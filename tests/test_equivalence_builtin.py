"""The equivalence harness on the cores of the first release (lru, l2n)."""

from __future__ import annotations

import pytest

from nssm_core.testing import check_core_equivalence
from nssm_plugins import L2N, LRU


@pytest.mark.parametrize(
    "make_core",
    [lambda: LRU(5, 4, 6, rmin=0.5, rmax=0.999), lambda: L2N(5, 4, 6, gamma=1.7, rho=0.99)],
    ids=["lru", "l2n"],
)
def test_core_modes_and_chunks_agree(make_core):
    check_core_equivalence(make_core, d_input=5)


def test_harness_detects_wrong_backend():
    """A backend that is off by one part in a million must make the harness fail."""
    from nssm_core import PluginEntry, PluginKind, get_registry
    from nssm_plugins import LoopBackend

    class SlightlyWrong(LoopBackend):
        name = "slightly_wrong"

        def diagonal(self, a, b, x0):
            return super().diagonal(a, b * (1 + 1e-6), x0)

    get_registry().register(
        PluginEntry(name="slightly_wrong", kind=PluginKind.BACKEND, factory=lambda options: SlightlyWrong())
    )
    with pytest.raises(AssertionError, match="slightly_wrong"):
        check_core_equivalence(lambda: LRU(2, 2, 4), d_input=2, modes=("slightly_wrong",), lengths=(7,))
