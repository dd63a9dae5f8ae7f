"""Worked example of a third-party nssm plugin.

Installing this distribution adds two registry entries, with no change to nssm:

* the dynamic core ``realdiag`` (:class:`RealDiagonal`), a bank of real
  first-order filters with a prescribed, incremental L2 gain;
* the static layer ``ScaledGroupSort`` (:class:`ScaledGroupSort`), a
  GroupSort network with Lipschitz bound ``max(l)``.

Importing this package registers nothing: nssm finds
:mod:`nssm_example_plugin.plugin` through the ``nssm.plugins`` entry point.
"""

from ._core import RealDiagonal, RealDiagonalOptions, build_realdiag
from ._layer import ScaledGroupSort, ScaledGroupSortOptions, build_scaled_groupsort, group_sort

__all__ = [
    "RealDiagonal",
    "RealDiagonalOptions",
    "ScaledGroupSort",
    "ScaledGroupSortOptions",
    "build_realdiag",
    "build_scaled_groupsort",
    "group_sort",
]
