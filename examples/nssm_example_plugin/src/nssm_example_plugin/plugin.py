"""The module that the ``nssm.plugins`` entry point names: it registers the example core and layer.

nssm imports this module when it loads plugins, and calls each function
marked with :data:`nssm_core.hookimpl` whose name is an nssm hook.
"""

from __future__ import annotations

from nssm_core import CertificateKind, PluginEntry, PluginKind, RecurrenceStructure, hookimpl

from ._core import RealDiagonalOptions, build_realdiag
from ._layer import ScaledGroupSortOptions, build_scaled_groupsort


@hookimpl
def nssm_register_cores() -> list[PluginEntry]:
    """Register the ``realdiag`` core."""
    return [
        PluginEntry(
            name="realdiag",
            kind=PluginKind.CORE,
            factory=build_realdiag,
            options=RealDiagonalOptions,
            certificate=CertificateKind.INCREMENTAL,
            structure=RecurrenceStructure.DIAGONAL,
            description="Bank of real first-order filters with a prescribed L2 gain (example plugin).",
        )
    ]


@hookimpl
def nssm_register_layers() -> list[PluginEntry]:
    """Register the ``ScaledGroupSort`` layer."""
    return [
        PluginEntry(
            name="ScaledGroupSort",
            kind=PluginKind.LAYER,
            factory=build_scaled_groupsort,
            options=ScaledGroupSortOptions,
            certificate=CertificateKind.INCREMENTAL,
            description="GroupSort network with normalised weights and output gains; Lipschitz bound max(l).",
        )
    ]
