"""``realdiag``: a real diagonal state-space core with a prescribed L2 gain.

The core is a bank of ``d_state`` first-order filters between two mixing
matrices:

$$
v_t = W_{in} u_t,\\qquad
x_{t+1} = a \\odot x_t + b \\odot v_t,\\qquad
\\hat y_t = c \\odot x_t + d \\odot v_t,\\qquad
y_t = s\\, W_{out} \\hat y_t,
$$

with decays $0 < a_j \\le a_{max} < 1$, free real vectors $b, c, d$, and
$\\|W_{in}\\|_2 \\le 1$, $\\|W_{out}\\|_2 \\le 1$ by normalisation.

Bound. Channel $j$ has the transfer function
$G_j(z) = d_j + c_j b_j / (z - a_j)$. On the unit circle
$|e^{i\\omega} - a_j| \\ge 1 - |a_j|$, so

$$
\\sup_\\omega |G_j(e^{i\\omega})| \\le g_j := |d_j| + \\frac{|b_j c_j|}{1 - |a_j|},
$$

with equality at $\\omega = 0$ when $a_j > 0$ and $d_j$, $b_j c_j$ have the
same sign, so the bound is tight. The diagonal system
$\\operatorname{diag}(G_j)$ has H-infinity norm $\\max_j \\|G_j\\|_\\infty \\le
\\max_j g_j$, and the mixing matrices have norm at most 1. Choosing
$s = \\gamma / \\max_j g_j$ gives H-infinity norm, hence L2 gain from the zero
state, at most $\\gamma$ for every value of the raw parameters. The map is
linear, so the bound is also incremental.

Floating point. The coefficients are realised once in the parameters' dtype,
$g_j$ is computed in float64 from those realised values, and the normalisers
are inflated by :func:`nssm_core.safety_margin`, so the bound holds for the
numbers the recurrence actually uses.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from nssm_core import (
    CertificateKind,
    CoreBase,
    CoreSpec,
    RecurrenceStructure,
    ScanBackend,
    recurrence_dtype,
    safety_margin,
    spectral_norm_upper,
)

__all__ = ["MAX_DECAY", "MIN_PEAK", "RealDiagonal", "RealDiagonalOptions", "build_realdiag"]

MAX_DECAY = 0.999
"""Largest decay $a_{max}$: it keeps $1 - a_j \\ge 10^{-3}$, so $g_j$ stays finite in float32."""


MIN_PEAK = 1e-8
"""Floor of $\\max_j g_j$ in the output scale, so $s \\le \\gamma \\cdot 10^8$ stays finite in float32."""


# --8<-- [start:RealDiagonalOptions]
class RealDiagonalOptions(BaseModel):
    """Options of the ``realdiag`` core.

    ``d_state``, ``rmin``, ``rmax`` and ``train_gamma`` have the names of
    :class:`nssm_core.SSMConfig` fields, so a config passes its values here.
    """

    model_config = ConfigDict(extra="forbid")

    d_state: int = Field(32, gt=0, description="Number of first-order filters.")
    rmin: float = Field(0.9, gt=0.0, lt=1.0, description="Smallest initial decay a_j.")
    rmax: float = Field(0.99, gt=0.0, lt=1.0, description="Largest initial decay a_j (at most 0.999).")
    train_gamma: bool = Field(False, description="Train the core's gain as a positive parameter.")
    block_gamma: float | None = Field(
        None, gt=0.0, description="Prescribed gain of the core; by default derived from the model's gamma."
    )

    @model_validator(mode="after")
    def _check_decays(self) -> RealDiagonalOptions:
        if self.rmin > self.rmax:
            raise ValueError(f"rmin ({self.rmin}) must not exceed rmax ({self.rmax})")
        if self.rmax > MAX_DECAY:
            raise ValueError(f"realdiag keeps every decay at most {MAX_DECAY}; got rmax={self.rmax}")
        return self
# --8<-- [end:RealDiagonalOptions]


class RealDiagonal(CoreBase):
    """Bank of first-order real filters with a prescribed, incremental L2 gain ``gamma``.

    Args:
        d_input: Input channels.
        d_output: Output channels.
        d_state: Number of filters (state width).
        gamma: Prescribed gain bound.
        train_gamma: Whether ``gamma`` is a trainable positive parameter.
        rmin: Smallest initial decay.
        rmax: Largest initial decay.

    Shapes:
        ``u`` is ``(batch, time, d_input)``, ``y`` is ``(batch, time, d_output)``
        and the real states are ``(batch, time + 1, d_state)``.
    """

    structure = RecurrenceStructure.DIAGONAL
    certificate_kind = CertificateKind.INCREMENTAL

    def __init__(
        self,
        d_input: int,
        d_output: int,
        d_state: int,
        gamma: float = 1.0,
        train_gamma: bool = False,
        rmin: float = 0.9,
        rmax: float = 0.99,
    ) -> None:
        super().__init__(d_input, d_output, d_state)
        RealDiagonalOptions(d_state=d_state, rmin=rmin, rmax=rmax)  # validates the decay range
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"gamma must be a positive finite number, got {gamma!r}")

        # a = MAX_DECAY * sigmoid(decay_raw), drawn uniformly in [rmin, rmax].
        decays = torch.empty(d_state, dtype=torch.float64).uniform_(rmin, rmax) / MAX_DECAY
        self.decay_raw = nn.Parameter(torch.logit(decays.clamp(1e-6, 1 - 1e-6)).float())
        self.b = nn.Parameter(torch.randn(d_state) / math.sqrt(d_state))
        self.c = nn.Parameter(torch.randn(d_state))
        self.d = nn.Parameter(torch.randn(d_state) * 0.1)
        self.w_in = nn.Parameter(torch.empty(d_state, d_input))
        self.w_out = nn.Parameter(torch.empty(d_output, d_state))
        nn.init.orthogonal_(self.w_in)
        nn.init.orthogonal_(self.w_out)

        log_gamma = torch.tensor(math.log(gamma))
        if train_gamma:
            self.log_gamma = nn.Parameter(log_gamma)
        else:
            self.register_buffer("log_gamma", log_gamma)

    @property
    def gamma(self) -> torch.Tensor:
        """The prescribed gain, a positive 0-d tensor."""
        return torch.exp(self.log_gamma)

    def decays(self) -> torch.Tensor:
        """Return the realised decays $a$, ``(d_state,)``, in the parameters' dtype."""
        return MAX_DECAY * torch.sigmoid(self.decay_raw)

    @staticmethod
    def _normalised(weight: torch.Tensor) -> torch.Tensor:
        sigma = spectral_norm_upper(weight) * (1.0 + safety_margin(weight.dtype))
        return weight / torch.clamp(sigma, min=1.0).to(weight.dtype)

    def channel_bounds(self) -> torch.Tensor:
        """Return $g_j = |d_j| + |b_j c_j| / (1 - |a_j|)$ in float64, ``(d_state,)``, from the realised values."""
        a = self.decays().to(torch.float64)
        b, c, d = (p.to(torch.float64) for p in (self.b, self.c, self.d))
        return d.abs() + (b * c).abs() / (1.0 - a.abs())

    def output_scale(self) -> torch.Tensor:
        """Return $s = \\gamma / \\max(\\max_j g_j, g_{min})$, shrunk by the round-off margin, in the parameters' dtype.

        The floor $g_{min}$ = ``MIN_PEAK`` keeps $s$ finite when every $g_j$
        is 0 (for example all of $b, c, d$ zero), where $\\gamma / 0$ would
        make $0 \\cdot \\infty$ = NaN outputs. A larger denominator only
        lowers the gain, so the bound still holds.
        """
        dtype = self.b.dtype
        peak = self.channel_bounds().max().clamp_min(MIN_PEAK) * (1.0 + safety_margin(dtype))
        scale = self.gamma.to(torch.float64) / peak * (1.0 - safety_margin(dtype))
        return scale.to(dtype)

    # --8<-- [start:run]
    def run(self, u: torch.Tensor, x0: torch.Tensor, backend: ScanBackend) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute ``(y, states)``; see :meth:`nssm_core.CoreBase.forward`."""
        # float32 or float64, also under bf16 autocast: decays and normalisers never run in half precision.
        dtype = recurrence_dtype(u.dtype)
        u = u.to(dtype)
        a = self.decays().to(dtype)
        b, c, d = (p.to(dtype) for p in (self.b, self.c, self.d))
        w_in = self._normalised(self.w_in).to(dtype)
        w_out = self._normalised(self.w_out).to(dtype)

        v = u @ w_in.T
        states = backend.diagonal(a, v * b, x0)
        filtered = states[:, :-1] * c + v * d
        y = (filtered @ w_out.T) * self.output_scale().to(dtype)
        return y, states
    # --8<-- [end:run]

    def bound(self) -> torch.Tensor:
        """Return ``gamma`` as a differentiable 0-d float64 tensor."""
        return self.gamma.to(torch.float64)

    def lti_matrices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the realisation $(\\mathrm{diag}(a), \\mathrm{diag}(b) W_{in}, s W_{out} \\mathrm{diag}(c), s W_{out} \\mathrm{diag}(d) W_{in})$ in float64."""
        a = self.decays().to(torch.float64)
        b, c, d = (p.to(torch.float64) for p in (self.b, self.c, self.d))
        w_in = self._normalised(self.w_in).to(torch.float64)
        w_out = self._normalised(self.w_out).to(torch.float64)
        scale = self.output_scale().to(torch.float64)
        return torch.diag(a), b[:, None] * w_in, scale * w_out * c, scale * (w_out * d) @ w_in


def initial_gamma(model_gamma: float | None, n_layers: int) -> float:
    """Return a block's initial gain: $\\gamma^{1/n} - 1$ (at least 0.1), or 1 without a model gamma.

    A residual block with a 1-bounded layer then has bound $\\gamma^{1/n}$, and
    ``n_layers`` of them multiply to the model's gamma, so the model's decoder
    starts near unit scale.
    """
    if model_gamma is None:
        return 1.0
    return max(model_gamma ** (1.0 / n_layers) - 1.0, 0.1)


def build_realdiag(spec: CoreSpec, options: RealDiagonalOptions) -> RealDiagonal:
    """Registry factory of the ``realdiag`` core: ``factory(spec, options)``."""
    gamma = options.block_gamma or initial_gamma(spec.model_gamma, spec.n_layers)
    return RealDiagonal(
        spec.d_input,
        spec.d_output,
        spec.d_state,
        gamma=gamma,
        train_gamma=options.train_gamma,
        rmin=options.rmin,
        rmax=options.rmax,
    )
