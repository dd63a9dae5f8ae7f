"""Registry entries of the built-in dynamic cores."""

from __future__ import annotations

from nssm_core import CertificateKind, PluginEntry, PluginKind, RecurrenceStructure

from ._l2n import L2NOptions, build_l2n
from ._lru import LRUOptions, build_lru


def core_entries() -> list[PluginEntry]:
    """Return the entries of the built-in cores."""
    return [
        PluginEntry(
            name="lru",
            kind=PluginKind.CORE,
            factory=build_lru,
            options=LRUOptions,
            certificate=CertificateKind.NONE,
            structure=RecurrenceStructure.DIAGONAL,
            description="Linear Recurrent Unit: stable diagonal complex recurrence, no certified bound.",
        ),
        PluginEntry(
            name="l2n",
            kind=PluginKind.CORE,
            factory=build_l2n,
            options=L2NOptions,
            certificate=CertificateKind.INCREMENTAL,
            structure=RecurrenceStructure.DIAGONAL,
            description="Free parametrization with prescribed L2 gain (contraction K, 2x2 rotation blocks).",
        ),
    ]
