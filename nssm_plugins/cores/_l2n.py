"""``l2n``: a free parametrization of state-space models with a prescribed L2 gain.

Any real matrix $K = [[K_{11}, K_{12}], [K_{21}, K_{22}]]$ with
$\\|K\\|_2 \\le 1$ mapping $[z_t; \\gamma u_t] \\mapsto [z_{t+1}; y_t]$ gives
$\\|z_{t+1}\\|^2 + \\|y_t\\|^2 \\le \\|z_t\\|^2 + \\gamma^2 \\|u_t\\|^2$. Summed
over time from $z_0 = 0$ this bounds the L2 gain by $\\gamma$, and because the
map is linear the bound is also incremental. Every contraction is reached by
$K = K_{raw} / \\max(1, \\sigma_{max}(K_{raw}))$ from unconstrained raw
parameters. Massai et al., "Free Parametrization of L2-bounded State Space
Models", arXiv:2503.23818.

$K_{11}$ is block diagonal with 2x2 blocks $\\rho_i R(\\theta_i)$, which act on
$(z_{2i}, z_{2i+1})$ as multiplication by $\\rho_i e^{i\\theta_i}$, so the
complex diagonal scan evaluates the recurrence. The state is real,
``(batch, d_state)``, in the coordinates $z$ whose storage function is
$\\|z\\|^2$.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from nssm_core import (
    CertificateKind,
    CoreBase,
    CoreSpec,
    RecurrenceStructure,
    ScanBackend,
    parameter_transform,
    recurrence_dtype,
    safety_margin,
    spectral_norm_upper,
)

from ._complex import complex_to_pairs, pairs_to_complex

__all__ = ["L2N", "L2NOptions", "initial_block_gamma"]


class L2NOptions(BaseModel):
    """Options of the ``l2n`` core."""

    model_config = ConfigDict(extra="forbid")

    d_state: int = Field(32, gt=0, description="State width; must be even (2x2 rotation blocks).")
    rho: float = Field(0.9, gt=0.0, lt=1.0, description="Initial modulus of every 2x2 block.")
    max_phase_b: float = Field(math.pi, ge=0.0, description="Half-width of the initial angle range, radians.")
    phase_center: float = Field(0.0, description="Centre of the initial angle range, radians.")
    random_phase: bool = Field(True, description="Draw angles uniformly; False spaces them evenly.")
    offdiag_scale: float = Field(0.1, ge=0.0, description="Std of the initial K12, K21 and K22 entries.")
    init: Literal["random", "orthogonal"] = Field(
        "random", description="'random': Gaussian K12, K21, K22; 'orthogonal': scaled orthogonal ones."
    )
    train_gamma: bool = Field(False, description="Train the core's gain as a positive parameter.")
    block_gamma: float | None = Field(
        None, gt=0.0, description="Initial gain of the core; by default derived from the model's gamma."
    )

    @field_validator("d_state")
    @classmethod
    def _check_even(cls, value: int) -> int:
        if value % 2:
            raise ValueError(f"l2n needs an even d_state (2x2 rotation blocks), got {value}; use {value + 1}")
        return value


def initial_block_gamma(model_gamma: float | None, n_layers: int) -> float:
    """Return a block's initial gain: $\\gamma^{1/n} - 1$ (at least 0.1), or 1 without a model gamma.

    With layer bounds of 1 the blocks' bounds $1 + \\gamma_i$ then multiply to
    the model's gamma, so the decoder starts near unit scale.
    """
    if model_gamma is None:
        return 1.0
    return max(model_gamma ** (1.0 / n_layers) - 1.0, 0.1)


class L2N(CoreBase):
    """State-space core with a prescribed, incremental L2 gain ``gamma``.

    Args:
        d_input: Input channels.
        d_output: Output channels.
        d_state: State width (even).
        gamma: Initial gain bound.
        train_gamma: Whether ``gamma`` is a trainable positive parameter.
        rho: Initial modulus of the 2x2 blocks of $K_{11}$.
        max_phase_b: Half-width of the initial angle range.
        phase_center: Centre of the initial angle range.
        random_phase: Draw angles at random rather than evenly spaced.
        offdiag_scale: Std of the initial $K_{12}, K_{21}, K_{22}$.
        init: ``"random"`` or ``"orthogonal"`` off-diagonal blocks.
    """

    structure = RecurrenceStructure.DIAGONAL
    certificate_kind = CertificateKind.INCREMENTAL
    # Storage ||z||^2 gives ||y||^2 <= gamma^2 ||u||^2 + ||z_0||^2, so ||y|| <= gamma ||u|| + ||z_0||.
    initial_state_gain = 1.0

    def __init__(
        self,
        d_input: int,
        d_output: int,
        d_state: int,
        gamma: float = 1.0,
        train_gamma: bool = False,
        rho: float = 0.9,
        max_phase_b: float = math.pi,
        phase_center: float = 0.0,
        random_phase: bool = True,
        offdiag_scale: float = 0.1,
        init: str = "random",
    ) -> None:
        super().__init__(d_input, d_output, d_state)
        L2NOptions(
            d_state=d_state, rho=rho, max_phase_b=max_phase_b, phase_center=phase_center,
            offdiag_scale=offdiag_scale, init=init,
        )  # validates the values
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"gamma must be a positive finite number, got {gamma!r}")
        modes = d_state // 2

        self.rho_raw = nn.Parameter(torch.full((modes,), math.log(rho / (1 - rho))))
        if random_phase:
            angles = phase_center + (2 * torch.rand(modes) - 1) * max_phase_b
        else:
            angles = phase_center + torch.linspace(-max_phase_b, max_phase_b, modes)
        self.angles = nn.Parameter(angles)

        self.K12 = nn.Parameter(self._init_block(d_state, d_input, offdiag_scale, init))
        self.K21 = nn.Parameter(self._init_block(d_output, d_state, offdiag_scale, init))
        self.K22 = nn.Parameter(self._init_block(d_output, d_input, offdiag_scale, init))

        log_gamma = torch.tensor(math.log(gamma))
        if train_gamma:
            self.log_gamma = nn.Parameter(log_gamma)
        else:
            self.register_buffer("log_gamma", log_gamma)

    @staticmethod
    def _init_block(rows: int, cols: int, scale: float, init: str) -> torch.Tensor:
        if init == "orthogonal":
            block = torch.empty(rows, cols)
            nn.init.orthogonal_(block)
            return block * scale
        return torch.randn(rows, cols) * scale

    @property
    def gamma(self) -> torch.Tensor:
        """The core's gain bound, a positive 0-d tensor."""
        return torch.exp(self.log_gamma)

    def _raw_k11(self) -> torch.Tensor:
        rho = torch.sigmoid(self.rho_raw)
        cos, sin = rho * torch.cos(self.angles), rho * torch.sin(self.angles)
        blocks = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        return torch.block_diag(*blocks)

    def _raw_k(self) -> torch.Tensor:
        top = torch.cat([self._raw_k11(), self.K12], dim=1)
        bottom = torch.cat([self.K21, self.K22], dim=1)
        return torch.cat([top, bottom], dim=0)

    def contraction_scale(self) -> torch.Tensor:
        """Return $1 / \\max(1, \\sigma_{max}(K_{raw}))$ with a round-off margin, in the parameters' dtype."""
        sigma = spectral_norm_upper(self._raw_k()) * (1.0 + safety_margin(self.K12.dtype))
        return (1.0 / torch.clamp(sigma, min=1.0)).to(self.K12.dtype)

    def contraction(self) -> torch.Tensor:
        """Return the normalised $K$, ``(d_state + d_output, d_state + d_input)``, with $\\|K\\|_2 \\le 1$."""
        return self._raw_k() * self.contraction_scale()

    def _run_matrices(self, input_dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """Return the eigenvalues and the matrices ``K12, K21, K22`` that :meth:`run` applies to ``input_dtype`` inputs."""
        # Normaliser, decays and the scan stay in float32 or float64, also under bf16 autocast.
        dtype = recurrence_dtype(input_dtype)
        complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        scale = self.contraction_scale().to(dtype)
        rho = torch.sigmoid(self.rho_raw).to(dtype) * scale
        eigenvalues = torch.polar(rho, self.angles.to(dtype)).to(complex_dtype)
        gamma = self.gamma.to(dtype)
        # gamma is folded into the small input matrices, so no scaled copy of u is made or saved.
        k12 = (self.K12.to(dtype) * (scale * gamma)).to(input_dtype)
        k21 = self.K21.to(dtype) * scale
        k22 = (self.K22.to(dtype) * (scale * gamma)).to(input_dtype)
        return eigenvalues, k12, k21, k22

    def run(self, u: torch.Tensor, x0: torch.Tensor, backend: ScanBackend) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute ``(y, states)``; see :meth:`nssm_core.CoreBase.forward`."""
        eigenvalues, k12, k21, k22 = parameter_transform(self, ("run", u.dtype), lambda: self._run_matrices(u.dtype))
        drives = pairs_to_complex(u @ k12.T)
        states = complex_to_pairs(backend.diagonal(eigenvalues, drives, pairs_to_complex(x0)))
        # All T + 1 states go through one contiguous product (no copy of a strided slice), then the last is dropped.
        y = (states @ k21.T)[:, :-1] + u @ k22.T
        return y, states

    def bound(self) -> torch.Tensor:
        """Return ``gamma`` as a differentiable 0-d float64 tensor."""
        return self.gamma.to(torch.float64)

    def lti_matrices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(A, B, C, D) = (K11, gamma K12, K21, gamma K22)`` in float64."""
        k = self.contraction().to(torch.float64)
        gamma = self.gamma.to(torch.float64)
        n = self.d_state
        return k[:n, :n], gamma * k[:n, n:], k[n:, :n], gamma * k[n:, n:]


def build_l2n(spec: CoreSpec, options: L2NOptions) -> L2N:
    """Registry factory of the ``l2n`` core."""
    gamma = options.block_gamma or initial_block_gamma(spec.model_gamma, spec.n_layers)
    return L2N(
        spec.d_input, spec.d_output, spec.d_state, gamma=gamma, train_gamma=options.train_gamma,
        rho=options.rho, max_phase_b=options.max_phase_b, phase_center=options.phase_center,
        random_phase=options.random_phase, offdiag_scale=options.offdiag_scale, init=options.init,
    )
