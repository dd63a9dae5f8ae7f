"""Registry entries of the built-in static layers."""

from __future__ import annotations

from nssm_core import CertificateKind, NoOptions, PluginEntry, PluginKind

from ._glu import LGLUOptions, build_glu, build_lglu


def layer_entries() -> list[PluginEntry]:
    """Return the entries of the built-in static layers."""
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
