"""``zak``: an LRU-diagonal state matrix with gain-bounded input, output and feedthrough matrices.

$A = \\mathrm{diag}(\\lambda)$ with $\\lambda_j = \\exp(-r_j + i \\phi_j)$ as in
``lru``. With $Q = A^H A + \\epsilon I$ (a positive diagonal),
$X_1 = [[Q, Q A], [A^H Q, Q]]$, a feedthrough
$D = \\gamma (1 - \\epsilon) D_p / \\|D_p\\|_2$ and
$X_4 = [[\\gamma I_u, D^T], [D, \\gamma I_y]]$, take a raw
$X_2 = [[G, 0], [0, H]]$ divided by
$\\max(1, \\|X_1^{-1} X_2\\|_2, \\|X_2 X_4^{-1}\\|_2)$ and set $B = Q^{-1} G$,
$C = H^H$, $y_t = \\mathrm{Re}(C x_t) + D u_t$.

Why the bound holds: the Heinz inequality
$\\|X_1^{-1/2} X_2 X_4^{-1/2}\\|^2 \\le \\|X_1^{-1} X_2\\| \\, \\|X_2 X_4^{-1}\\|$
makes the Schur complement $X_4 - X_2^H X_1^{-1} X_2$ positive semidefinite,
so $[[X_1, X_2], [X_2^H, X_4]] \\succeq 0$. Two Schur complements of that
matrix give the bounded-real inequality with storage $\\gamma Q$, hence an
H-infinity norm at most $\\gamma$. The system is linear, so the bound is
incremental.

Every block of $X_1$ is diagonal, so $X_1^{-1} X_2$ has the closed form
$[[s \\odot G, -s \\lambda \\odot H], [-s \\bar\\lambda \\odot G, s \\odot H]]$
with $s_j = 1 / (q_j (1 - |\\lambda_j|^2))$, where
$1 - |\\lambda_j|^2 = -\\mathrm{expm1}(-2 r_j)$ stays accurate near the unit
circle.

Parameter region: the decay rate is $r_j = e^{\\nu_j} + 10^{-6}$ and the
phase $e^{\\min(\\theta_j, 60)}$. Without the floor, $\\nu_j \\ll 0$ rounds
$|\\lambda_j|$ to exactly 1 and the realised system is not stable; without
the clamp, $\\theta_j > 88$ overflows float32 to an infinite phase.
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
    parameter_transform,
    safety_margin,
)

from ._complex import realify_diagonal
from ._l2n import initial_block_gamma
from ._lru import init_ring_eigenvalues

__all__ = ["ZAK", "ZAKOptions", "lruz"]

# Smallest decay rate -log|lambda|: keeps |lambda| <= 1 - 1e-6, which float32 still represents as below 1.
_MIN_DECAY_RATE = 1e-6
# Largest log-phase: exp(60) is finite in float32.
_MAX_LOG_PHASE = 60.0
# Largest log decay rate: exp(30) already rounds |lambda| to 0; the clamp keeps gradients finite.
_MAX_LOG_RATE = 30.0


class ZAKOptions(BaseModel):
    """Options of the ``zak`` core."""

    model_config = ConfigDict(extra="forbid")

    rmin: float = Field(0.9, ge=0.0, lt=1.0, description="Smallest initial eigenvalue modulus.")
    rmax: float = Field(0.99, gt=0.0, lt=1.0, description="Largest initial eigenvalue modulus.")
    max_phase: float = Field(2 * math.pi, ge=0.0, description="Largest initial eigenvalue phase in radians.")
    eps: float = Field(0.01, gt=0.0, lt=1.0, description="Shift of Q = A^H A + eps I; D has norm gamma (1 - eps).")
    train_gamma: bool = Field(False, description="Train the core's gain as a positive parameter.")
    block_gamma: float | None = Field(
        None, gt=0.0, description="Initial gain of the core; by default derived from the model's gamma."
    )

    @model_validator(mode="after")
    def _check_ring(self) -> ZAKOptions:
        if self.rmin > self.rmax:
            raise ValueError(f"rmin ({self.rmin}) must not exceed rmax ({self.rmax})")
        return self


class ZAK(CoreBase):
    """LRU-diagonal core with a prescribed, incremental L2 gain ``gamma``.

    The state is complex, ``(batch, d_state)`` complex modes. The input,
    output and feedthrough matrices are normalised in float64 at every call.

    Args:
        d_input: Input channels.
        d_output: Output channels.
        d_state: Number of complex modes.
        gamma: Initial gain bound.
        train_gamma: Whether ``gamma`` is a trainable positive parameter.
        rmin: Smallest initial eigenvalue modulus.
        rmax: Largest initial eigenvalue modulus.
        max_phase: Largest initial eigenvalue phase in radians.
        eps: Shift of $Q = A^H A + \\epsilon I$; the feedthrough has norm $\\gamma (1 - \\epsilon)$.
    """

    structure = RecurrenceStructure.DIAGONAL
    certificate_kind = CertificateKind.INCREMENTAL
    complex_state = True

    def __init__(
        self,
        d_input: int,
        d_output: int,
        d_state: int,
        gamma: float = 1.0,
        train_gamma: bool = False,
        rmin: float = 0.9,
        rmax: float = 0.99,
        max_phase: float = 2 * math.pi,
        eps: float = 0.01,
    ) -> None:
        super().__init__(d_input, d_output, d_state)
        ZAKOptions(rmin=rmin, rmax=rmax, max_phase=max_phase, eps=eps)  # validates the values
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"gamma must be a positive finite number, got {gamma!r}")
        self.eps = eps
        nu, theta = init_ring_eigenvalues(d_state, rmin, rmax, max_phase)
        self.nu_log = nn.Parameter(nu)
        self.theta_log = nn.Parameter(theta)
        self.G_re = nn.Parameter(torch.randn(d_state, d_input) / math.sqrt(2 * d_input))
        self.G_im = nn.Parameter(torch.randn(d_state, d_input) / math.sqrt(2 * d_input))
        self.H_re = nn.Parameter(torch.randn(d_state, d_output) / math.sqrt(2 * d_state))
        self.H_im = nn.Parameter(torch.randn(d_state, d_output) / math.sqrt(2 * d_state))
        self.D_raw = nn.Parameter(torch.randn(d_output, d_input) / math.sqrt(d_input))
        log_gamma = torch.tensor(math.log(gamma))
        if train_gamma:
            self.log_gamma = nn.Parameter(log_gamma)
        else:
            self.register_buffer("log_gamma", log_gamma)

    @property
    def gamma(self) -> torch.Tensor:
        """The core's gain bound, a positive 0-d tensor."""
        return torch.exp(self.log_gamma)

    def _decay_rates(self) -> torch.Tensor:
        return torch.exp(self.nu_log.to(torch.float64).clamp(max=_MAX_LOG_RATE)) + _MIN_DECAY_RATE

    def eigenvalues(self) -> torch.Tensor:
        """Return $\\lambda$, ``(d_state,)`` complex128."""
        phase = torch.exp(self.theta_log.to(torch.float64).clamp(max=_MAX_LOG_PHASE))
        return torch.polar(torch.exp(-self._decay_rates()), phase)

    def system(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the complex diagonal system ``(lambda, B, C, D)`` in complex128/float64.

        Shapes: ``(d_state,)``, ``(d_state, d_input)``, ``(d_output, d_state)``, ``(d_output, d_input)``.
        """
        eps = self.eps
        gamma = self.gamma.to(torch.float64)
        rates = self._decay_rates()
        lam = self.eigenvalues()
        q = torch.exp(-2.0 * rates) + eps
        g = torch.complex(self.G_re.to(torch.float64), self.G_im.to(torch.float64))
        h = torch.complex(self.H_re.to(torch.float64), self.H_im.to(torch.float64))

        # 1. Feedthrough with norm gamma (1 - eps); X4 = [[gamma I, D^T], [D, gamma I]] is then positive definite.
        d_raw = self.D_raw.to(torch.float64)
        d = gamma * (1.0 - eps) * d_raw / torch.linalg.matrix_norm(d_raw, ord=2).clamp_min(1e-300)
        u_dim, y_dim = self.d_input, self.d_output
        x4 = torch.cat(
            [
                torch.cat([gamma * torch.eye(u_dim, dtype=torch.float64, device=d.device), d.T], dim=1),
                torch.cat([d, gamma * torch.eye(y_dim, dtype=torch.float64, device=d.device)], dim=1),
            ],
            dim=0,
        )

        # 2. ||X1^-1 X2|| from the closed form of the diagonal blocks.
        s = (1.0 / (q * -torch.expm1(-2.0 * rates))).unsqueeze(-1)
        top = torch.cat([s * g, -s * lam.unsqueeze(-1) * h], dim=1)
        bottom = torch.cat([-s * lam.conj().unsqueeze(-1) * g, s * h], dim=1)
        norm_left = torch.linalg.matrix_norm(torch.cat([top, bottom], dim=0), ord=2)

        # 3. ||X2 X4^-1|| = ||X4^-1 X2^H|| because X4 is symmetric.
        zeros_gh = torch.zeros(self.d_state, y_dim, dtype=g.dtype, device=g.device)
        zeros_hg = torch.zeros(self.d_state, u_dim, dtype=g.dtype, device=g.device)
        x2 = torch.cat([torch.cat([g, zeros_gh], dim=1), torch.cat([zeros_hg, h], dim=1)], dim=0)
        norm_right = torch.linalg.matrix_norm(torch.linalg.solve(x4.to(x2.dtype), x2.mH), ord=2)

        # 4. Normalise, rounding the divisor up for the solves' round-off.
        divisor = torch.clamp(torch.maximum(norm_left, norm_right) * (1.0 + safety_margin(torch.float32)), min=1.0)
        b = g / divisor / q.unsqueeze(-1)
        c = (h / divisor).mH
        return lam, b, c, d

    def _run_matrices(self, complex_dtype: torch.dtype, input_dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """Return $(\\lambda, B, C)$ in ``complex_dtype`` and $D$ in ``input_dtype``, as :meth:`run` applies them."""
        lam, b, c, d = self.system()
        return lam.to(complex_dtype), b.to(complex_dtype), c.to(complex_dtype), d.to(input_dtype)

    def run(self, u: torch.Tensor, x0: torch.Tensor, backend: ScanBackend) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute ``(y, states)``; see :meth:`nssm_core.CoreBase.forward`."""
        complex_dtype = x0.dtype
        # NOTE: the bound is proven for the float64 system; its complex64 cast is not bounded separately.
        lam, b, c, d = parameter_transform(
            self, ("run", complex_dtype, u.dtype), lambda: self._run_matrices(complex_dtype, u.dtype)
        )
        drives = u.to(complex_dtype) @ b.T
        states = backend.diagonal(lam, drives, x0)
        past = states[:, :-1]
        y = past.real @ c.real.T - past.imag @ c.imag.T + u @ d.T
        return y, states

    def lti_matrices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the real float64 realisation ``(A, B, C, D)`` with state width ``2 * d_state``."""
        return realify_diagonal(*self.system())

    def bound(self) -> torch.Tensor:
        """Return ``gamma`` as a differentiable 0-d float64 tensor."""
        return self.gamma.to(torch.float64)


lruz = ZAK
"""The name of the ``zak`` core class in the older ``neural-ssm`` library."""


def build_zak(spec: CoreSpec, options: ZAKOptions) -> ZAK:
    """Registry factory of the ``zak`` core."""
    gamma = options.block_gamma or initial_block_gamma(spec.model_gamma, spec.n_layers)
    return ZAK(
        spec.d_input, spec.d_output, spec.d_state, gamma=gamma, train_gamma=options.train_gamma,
        rmin=options.rmin, rmax=options.rmax, max_phase=options.max_phase, eps=options.eps,
    )
