"""Registry entries of the built-in static layers."""

from __future__ import annotations

from nssm_core import CertificateKind, NoOptions, PluginEntry, PluginKind

from ._glu import LGLUOptions, build_glu, build_lglu
from ._lipschitz import LMLPOptions, TLIPOptions, build_lmlp, build_tlip
from ._mlp import build_mlp


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
            name="MLP",
            kind=PluginKind.LAYER,
            factory=build_mlp,
            options=NoOptions,
            certificate=CertificateKind.NONE,
            description="Multilayer perceptron with GELU: nl_layers hidden layers of width d_hidden. No bound.",
        ),
        PluginEntry(
            name="LGLU",
            kind=PluginKind.LAYER,
            factory=build_lglu,
            options=LGLUOptions,
            certificate=CertificateKind.GAIN,
            description="Gated linear unit with a normalised weight and positive output gains; gain bound max(l).",
        ),
        PluginEntry(
            name="LMLP",
            kind=PluginKind.LAYER,
            factory=build_lmlp,
            options=LMLPOptions,
            certificate=CertificateKind.INCREMENTAL,
            description="Sandwich layers (Wang and Manchester, 2023) with Cayley weights. Lipschitz bound: scale.",
        ),
        PluginEntry(
            name="TLIP",
            kind=PluginKind.LAYER,
            factory=build_tlip,
            options=TLIPOptions,
            certificate=CertificateKind.INCREMENTAL,
            description="Norm-bounded linear maps with GroupSort activations. Lipschitz bound: scale.",
        ),
    ]
