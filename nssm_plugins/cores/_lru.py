"""``lru``: the Linear Recurrent Unit, a stable diagonal complex recurrence without a certified bound.

Orvieto et al., "Resurrecting Recurrent Neural Networks for Long Sequences",
ICML 2023. Eigenvalues $\\lambda_j = \\exp(-e^{\\nu_j} + i e^{\\theta_j})$ lie
strictly inside the unit disc for every real $\\nu, \\theta$.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from nssm_core import CertificateKind, CoreBase, CoreSpec, RecurrenceStructure, ScanBackend, parameter_transform

from ._complex import complex_to_pairs, pairs_to_complex, realify_diagonal

__all__ = ["LRU", "LRUOptions", "init_ring_eigenvalues"]

# Phases are stored through their logarithm; this floor keeps a zero phase finite.
_MIN_PHASE = 1e-6


class LRUOptions(BaseModel):
    """Options of the ``lru`` core."""

    model_config = ConfigDict(extra="forbid")

    rmin: float = Field(0.9, ge=0.0, lt=1.0, description="Smallest initial eigenvalue modulus.")
    rmax: float = Field(0.99, gt=0.0, lt=1.0, description="Largest initial eigenvalue modulus.")
    max_phase: float = Field(2 * math.pi, ge=0.0, description="Largest initial eigenvalue phase in radians.")

    @model_validator(mode="after")
    def _check_ring(self) -> LRUOptions:
        if self.rmin > self.rmax:
            raise ValueError(f"rmin ({self.rmin}) must not exceed rmax ({self.rmax})")
        return self


def init_ring_eigenvalues(
    n: int, rmin: float, rmax: float, max_phase: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw raw ``(nu, theta)`` whose eigenvalues are uniform on the ring ``rmin <= |lambda| <= rmax``.

    The modulus is $\\sqrt{U (r_{max}^2 - r_{min}^2) + r_{min}^2}$ and the phase is
    uniform in ``[0, max_phase]``.
    """
    uniform = torch.rand(n, generator=generator, dtype=torch.float64)
    modulus = torch.sqrt(uniform * (rmax**2 - rmin**2) + rmin**2).clamp(1e-12, 1 - 1e-12)
    phase = (torch.rand(n, generator=generator, dtype=torch.float64) * max_phase).clamp_min(_MIN_PHASE)
    nu = torch.log(-torch.log(modulus))
    theta = torch.log(phase)
    return nu.float(), theta.float()


class LRU(CoreBase):
    """Linear Recurrent Unit core.

    $x_{t+1} = \\lambda \\odot x_t + (g \\odot \\tilde B) u_t$,
    $y_t = \\mathrm{Re}(C x_t) + D u_t$, with $g_j = \\sqrt{1 - |\\lambda_j|^2}$.
    The state is complex, ``(batch, d_state)``. Stable, but with no certified
    gain bound.

    Args:
        d_input: Input channels.
        d_output: Output channels.
        d_state: Number of complex modes.
        rmin: Smallest initial eigenvalue modulus.
        rmax: Largest initial eigenvalue modulus.
        max_phase: Largest initial eigenvalue phase in radians.
    """

    structure = RecurrenceStructure.DIAGONAL
    certificate_kind = CertificateKind.NONE
    complex_state = True

    def __init__(
        self,
        d_input: int,
        d_output: int,
        d_state: int,
        rmin: float = 0.9,
        rmax: float = 0.99,
        max_phase: float = 2 * math.pi,
    ) -> None:
        super().__init__(d_input, d_output, d_state)
        LRUOptions(rmin=rmin, rmax=rmax, max_phase=max_phase)  # validates the ranges
        nu, theta = init_ring_eigenvalues(d_state, rmin, rmax, max_phase)
        self.nu_log = nn.Parameter(nu)
        self.theta_log = nn.Parameter(theta)
        input_scale = 1.0 / math.sqrt(2 * d_input)
        self.B_re = nn.Parameter(torch.randn(d_state, d_input) * input_scale)
        self.B_im = nn.Parameter(torch.randn(d_state, d_input) * input_scale)
        state_scale = 1.0 / math.sqrt(d_state)
        self.C_re = nn.Parameter(torch.randn(d_output, d_state) * state_scale)
        self.C_im = nn.Parameter(torch.randn(d_output, d_state) * state_scale)
        self.D = nn.Parameter(torch.randn(d_output, d_input) / math.sqrt(d_input))

    def eigenvalues(self) -> torch.Tensor:
        """Return $\\lambda$, ``(d_state,)`` complex."""
        modulus = torch.exp(-torch.exp(self.nu_log))
        phase = torch.exp(self.theta_log)
        return torch.polar(modulus, phase)

    def _input_matrix(self) -> torch.Tensor:
        # g = sqrt(1 - |lambda|^2) = sqrt(-expm1(-2 e^nu)), accurate when |lambda| is close to 1.
        normaliser = torch.sqrt(-torch.expm1(-2 * torch.exp(self.nu_log)))
        return torch.complex(self.B_re, self.B_im) * normaliser.unsqueeze(-1)

    def _run_matrices(self, input_dtype: torch.dtype, complex_dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """Return $\\lambda$ and the real matrices that :meth:`run` applies to $u$ and to the state pairs."""
        real_dtype = torch.float64 if complex_dtype == torch.complex128 else torch.float32
        b = self._input_matrix()
        # Real products on interleaved (re, im) rows and columns are viewed as complex without a copy.
        # Rows 2j and 2j+1 of b_pairs give Re and Im of (B u)_j, and y = Re(C x) = pairs(x) @ [Re C, -Im C].
        b_pairs = torch.stack([b.real, b.imag], dim=1).flatten(0, 1).to(input_dtype)
        c_pairs = torch.stack([self.C_re, -self.C_im], dim=-1).flatten(-2).to(real_dtype)
        return self.eigenvalues().to(complex_dtype), b_pairs, c_pairs, self.D.to(input_dtype)

    def run(self, u: torch.Tensor, x0: torch.Tensor, backend: ScanBackend) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute ``(y, states)``; see :meth:`nssm_core.CoreBase.forward`."""
        lam, b_pairs, c_pairs, d = parameter_transform(
            self, ("run", u.dtype, x0.dtype), lambda: self._run_matrices(u.dtype, x0.dtype)
        )
        drives = pairs_to_complex(u @ b_pairs.T)
        states = backend.diagonal(lam, drives, x0)
        # All T + 1 states go through one contiguous product (no copy of a strided slice), then the last is dropped.
        y = (complex_to_pairs(states) @ c_pairs.T)[:, :-1] + u @ d.T
        return y, states

    def lti_matrices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the real float64 realisation ``(A, B, C, D)`` with state width ``2 * d_state``."""
        c = torch.complex(self.C_re, self.C_im)
        return realify_diagonal(self.eigenvalues(), self._input_matrix(), c, self.D)


def build_lru(spec: CoreSpec, options: LRUOptions) -> LRU:
    """Registry factory of the ``lru`` core."""
    return LRU(spec.d_input, spec.d_output, spec.d_state, options.rmin, options.rmax, options.max_phase)
