"""``ScaledGroupSort``: a Lipschitz-bounded static layer with trainable output gains.

$$
h_0 = x,\\qquad h_k = \\operatorname{GroupSort}(W_k h_{k-1})\\ (k = 1..K),\\qquad
y = l \\odot (W_{out} h_K),
$$

with every $W$ normalised to $\\|W\\|_2 \\le 1$ and a positive gain vector
$l = \\operatorname{softplus}(\\text{raw})$.

Bound. GroupSort sorts each pair of channels. For two pairs $p, q$ the
rearrangement inequality gives
$\\langle \\operatorname{sort} p, \\operatorname{sort} q \\rangle \\ge \\langle p, q \\rangle$,
and sorting keeps norms, so
$\\|\\operatorname{sort} p - \\operatorname{sort} q\\|^2
= \\|p\\|^2 + \\|q\\|^2 - 2\\langle \\operatorname{sort} p, \\operatorname{sort} q \\rangle
\\le \\|p - q\\|^2$: GroupSort is 1-Lipschitz. Each $W$ is 1-Lipschitz, and
$\\|l \\odot v - l \\odot w\\| \\le \\max_i l_i \\|v - w\\|$. The layer is
therefore $\\max_i l_i$-Lipschitz, an incremental bound. It has no biases and
maps 0 to 0, so the same number bounds its plain gain.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from nssm_core import CertificateKind, LayerBase, LayerSpec, safety_margin, spectral_norm_upper

__all__ = ["ScaledGroupSort", "ScaledGroupSortOptions", "build_scaled_groupsort", "group_sort"]


def group_sort(x: torch.Tensor) -> torch.Tensor:
    """Sort each consecutive pair of channels of ``x`` (``(..., 2k)``) in ascending order."""
    first, second = x[..., 0::2], x[..., 1::2]
    pairs = torch.stack([torch.minimum(first, second), torch.maximum(first, second)], dim=-1)
    return pairs.flatten(-2)


class ScaledGroupSortOptions(BaseModel):
    """Options of the ``ScaledGroupSort`` layer.

    ``scale``, ``d_hidden`` and ``nl_layers`` have the names of
    :class:`nssm_core.SSMConfig` fields, so a config passes its values here.
    """

    model_config = ConfigDict(extra="forbid")

    scale: float = Field(1.0, gt=0.0, description="Initial value of every output gain l_i.")
    d_hidden: int = Field(32, gt=0, description="Hidden width; must be even (GroupSort sorts pairs).")
    nl_layers: int = Field(1, gt=0, description="Number of GroupSort layers.")

    @field_validator("d_hidden")
    @classmethod
    def _check_even(cls, value: int) -> int:
        if value % 2:
            raise ValueError(f"ScaledGroupSort needs an even d_hidden (it sorts pairs), got {value}; use {value + 1}")
        return value


class ScaledGroupSort(LayerBase):
    """GroupSort network with normalised weights and positive output gains; Lipschitz bound ``max(l)``.

    Args:
        d_model: Input and output channels.
        d_hidden: Hidden width (even).
        nl_layers: Number of GroupSort layers.
        scale: Initial value of every output gain.
    """

    certificate_kind = CertificateKind.INCREMENTAL

    def __init__(self, d_model: int, d_hidden: int = 32, nl_layers: int = 1, scale: float = 1.0) -> None:
        super().__init__(d_model)
        ScaledGroupSortOptions(d_hidden=d_hidden, nl_layers=nl_layers, scale=scale)  # validates the values
        widths = [d_model] + [d_hidden] * nl_layers
        self.hidden = nn.ParameterList(
            nn.Parameter(nn.init.orthogonal_(torch.empty(out_width, in_width)))
            for in_width, out_width in zip(widths[:-1], widths[1:])
        )
        self.w_out = nn.Parameter(nn.init.orthogonal_(torch.empty(d_model, d_hidden)))
        # softplus(raw) = scale at initialisation.
        self.gain_raw = nn.Parameter(torch.full((d_model,), math.log(math.expm1(scale))))

    @staticmethod
    def _normalised(weight: torch.Tensor) -> torch.Tensor:
        sigma = spectral_norm_upper(weight) * (1.0 + safety_margin(weight.dtype))
        return weight / torch.clamp(sigma, min=1.0).to(weight.dtype)

    def gains(self) -> torch.Tensor:
        """Return the positive output gains $l$, ``(d_model,)``."""
        return nn.functional.softplus(self.gain_raw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``x`` of shape ``(..., d_model)``."""
        h = x
        for weight in self.hidden:
            h = group_sort(h @ self._normalised(weight).to(x.dtype).T)
        return self.gains().to(x.dtype) * (h @ self._normalised(self.w_out).to(x.dtype).T)

    def bound(self) -> torch.Tensor:
        """Return $\\max_i l_i$ as a differentiable 0-d float64 tensor."""
        return self.gains().to(torch.float64).max()


def build_scaled_groupsort(spec: LayerSpec, options: ScaledGroupSortOptions) -> ScaledGroupSort:
    """Registry factory of the ``ScaledGroupSort`` layer: ``factory(spec, options)``."""
    return ScaledGroupSort(spec.d_model, d_hidden=options.d_hidden, nl_layers=options.nl_layers, scale=options.scale)
