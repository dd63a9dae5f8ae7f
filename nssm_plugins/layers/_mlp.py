"""Plain multilayer perceptron layer ``MLP`` (no certified bound)."""

from __future__ import annotations

import torch
from torch import nn

from nssm_core import CertificateKind, LayerBase, LayerSpec, NoOptions

__all__ = ["MLP"]


class MLP(LayerBase):
    """Multilayer perceptron with GELU activations. No certified bound.

    ``nl_layers`` hidden layers ``Linear -> GELU -> Dropout`` of width
    ``d_hidden``, then a linear map back to ``d_model``.

    Args:
        d_model: Input and output channels.
        d_hidden: Width of the hidden layers.
        nl_layers: Number of hidden layers.
        dropout: Dropout probability after each GELU.
    """

    certificate_kind = CertificateKind.NONE

    def __init__(self, d_model: int, d_hidden: int, nl_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__(d_model)
        for name, value in (("d_hidden", d_hidden), ("nl_layers", nl_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        modules: list[nn.Module] = []
        width = d_model
        for _ in range(nl_layers):
            modules += [nn.Linear(width, d_hidden), nn.GELU(), nn.Dropout(dropout)]
            width = d_hidden
        modules.append(nn.Linear(width, d_model))
        self.net = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``x`` of shape ``(..., d_model)``."""
        return self.net(x)


def build_mlp(spec: LayerSpec, options: NoOptions) -> MLP:
    """Registry factory of the ``MLP`` layer."""
    return MLP(spec.d_model, spec.d_hidden, spec.nl_layers, spec.dropout)
