"""Gated linear unit layers: ``GLU`` (unbounded) and ``LGLU`` (gain-bounded)."""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from nssm_core import CertificateKind, LayerBase, LayerSpec, NoOptions, contraction

__all__ = ["GLU", "LGLU", "LGLUOptions"]


class GLU(LayerBase):
    """GELU, dropout, ``Linear(d, 2d)`` and a gated linear unit. No certified bound.

    Args:
        d_model: Input and output channels.
        dropout: Dropout probability after the GELU.
    """

    certificate_kind = CertificateKind.NONE

    def __init__(self, d_model: int, dropout: float = 0.0) -> None:
        super().__init__(d_model)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(d_model, 2 * d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``x`` of shape ``(..., d_model)``."""
        return nn.functional.glu(self.linear(self.dropout(self.activation(x))), dim=-1)


class LGLUOptions(BaseModel):
    """Options of the ``LGLU`` layer."""

    model_config = ConfigDict(extra="forbid")

    scale: float = Field(1.0, gt=0.0, description="Initial value of every output gain l_i.")


class LGLU(LayerBase):
    """Gain-bounded gated linear unit.

    $[a; b] = W x$ with $\\|W\\|_2 \\le 1$ and $y = l \\odot a \\odot \\sigma(b + c)$
    with a positive vector $l$ and a gate bias $c$. Because $|\\sigma| < 1$,
    $\\|y\\| \\le \\max_i l_i \\|a\\| \\le \\max_i l_i \\|x\\|$: a plain gain bound.
    The bias sits inside the gate only, so $f(0) = 0$ and the bound holds.
    The gate multiplies an unbounded value, so the layer is not globally
    Lipschitz and the bound is not incremental.

    Args:
        d_model: Input and output channels.
        scale: Initial value of every $l_i$.
    """

    certificate_kind = CertificateKind.GAIN

    def __init__(self, d_model: int, scale: float = 1.0) -> None:
        super().__init__(d_model)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale!r}")
        self.weight = nn.Parameter(torch.empty(2 * d_model, d_model))
        nn.init.orthogonal_(self.weight)
        # softplus(raw) = scale at initialisation.
        self.gain_raw = nn.Parameter(torch.full((d_model,), math.log(math.expm1(scale))))
        self.gate_bias = nn.Parameter(torch.zeros(d_model))

    def normalised_weight(self) -> torch.Tensor:
        """Return $W$ scaled so that $\\|W\\|_2 \\le 1$."""
        return contraction(self.weight)

    def gains(self) -> torch.Tensor:
        """Return the positive output gains $l$, ``(d_model,)``."""
        return nn.functional.softplus(self.gain_raw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``x`` of shape ``(..., d_model)``."""
        a, b = (x @ self.normalised_weight().to(x.dtype).T).chunk(2, dim=-1)
        return self.gains().to(x.dtype) * a * torch.sigmoid(b + self.gate_bias.to(x.dtype))

    def bound(self) -> torch.Tensor:
        """Return $\\max_i l_i$ as a differentiable 0-d float64 tensor."""
        return self.gains().to(torch.float64).max()


def build_glu(spec: LayerSpec, options: NoOptions) -> GLU:
    """Registry factory of the ``GLU`` layer."""
    return GLU(spec.d_model, spec.dropout)


def build_lglu(spec: LayerSpec, options: LGLUOptions) -> LGLU:
    """Registry factory of the ``LGLU`` layer."""
    return LGLU(spec.d_model, options.scale)
