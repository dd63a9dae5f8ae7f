"""Registration of the built-in plugins.

This module is the ``builtins`` entry of the ``nssm.plugins`` entry-point
group in nssm's own ``pyproject.toml``; the built-ins load through the same
path as a third-party plugin.
"""

from __future__ import annotations

from nssm_core import CertificateKind, NoOptions, PluginEntry, PluginKind, RecurrenceStructure, hookimpl

from .backends import LoopBackend, ParallelScanBackend
from .cores._l2n import L2NOptions, build_l2n
from .cores._lru import LRUOptions, build_lru
from .layers._glu import LGLUOptions, build_glu, build_lglu


@hookimpl
def nssm_register_cores() -> list[PluginEntry]:
    """Register the built-in dynamic cores."""
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


@hookimpl
def nssm_register_layers() -> list[PluginEntry]:
    """Register the built-in static layers."""
    return [
        PluginEntry(
            name="GLU",
            kind=PluginKind.LAYER,
            factory=build_glu,
            options=NoOptions,
            certificate=CertificateKind.NONE,
            description="GELU, dropout, Linear(d, 2d) and a gated linear unit; no bound.",
        ),
        PluginEntry(
            name="LGLU",
            kind=PluginKind.LAYER,
            factory=build_lglu,
            options=LGLUOptions,
            certificate=CertificateKind.GAIN,
            description="Gated linear unit with a normalised weight and positive output gains; gain bound max(l).",
        ),
    ]


@hookimpl
def nssm_register_backends() -> list[PluginEntry]:
    """Register the built-in scan backends."""
    return [
        PluginEntry(
            name="loop",
            kind=PluginKind.BACKEND,
            factory=lambda options: LoopBackend(),
            description="Sequential reference: one time step after the other.",
        ),
        PluginEntry(
            name="scan",
            kind=PluginKind.BACKEND,
            factory=lambda options: ParallelScanBackend(),
            description="Log-depth associative scan in pure PyTorch.",
        ),
    ]
