"""Registry entries of the built-in dynamic cores."""

from __future__ import annotations

from nssm_core import CertificateKind, PluginEntry, PluginKind, RecurrenceStructure

from ._l2n import L2NOptions, build_l2n
from ._l2nt import L2NTOptions, build_l2nt
from ._l2ru import L2RUOptions, build_l2ru
from ._lru import LRUOptions, build_lru
from ._tv import TVOptions, build_tv
from ._zak import ZAKOptions, build_zak


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
        PluginEntry(
            name="tv",
            kind=PluginKind.CORE,
            factory=build_tv,
            options=TVOptions,
            certificate=CertificateKind.GAIN,
            structure=RecurrenceStructure.DIAGONAL,
            description="Time-varying selective core: input-dependent per-step contractions, prescribed L2 gain.",
        ),
        PluginEntry(
            name="l2ru",
            kind=PluginKind.CORE,
            factory=build_l2ru,
            options=L2RUOptions,
            certificate=CertificateKind.INCREMENTAL,
            structure=RecurrenceStructure.DENSE,
            description="Square dense LTI core with prescribed L2 gain; needs d_state equal to d_model.",
        ),
        PluginEntry(
            name="zak",
            kind=PluginKind.CORE,
            factory=build_zak,
            options=ZAKOptions,
            certificate=CertificateKind.INCREMENTAL,
            structure=RecurrenceStructure.DIAGONAL,
            description="LRU-diagonal A with gain-bounded B, C, D; prescribed L2 gain.",
        ),
        PluginEntry(
            name="l2nt",
            kind=PluginKind.CORE,
            factory=build_l2nt,
            options=L2NTOptions,
            certificate=CertificateKind.INCREMENTAL,
            structure=RecurrenceStructure.DENSE,
            description="Free parametrization with prescribed L2 gain and a dense contraction K11.",
        ),
    ]
