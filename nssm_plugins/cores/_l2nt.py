"""``l2nt``: the ``l2n`` free parametrization with a dense $K_{11}$.

Any real $K = [[K_{11}, K_{12}], [K_{21}, K_{22}]]$ with $\\|K\\|_2 \\le 1$
mapping $[z_t; \\gamma u_t] \\mapsto [z_{t+1}; y_t]$ bounds the L2 gain (and,
the map being linear, the Lipschitz constant) by $\\gamma$; see
:mod:`nssm_plugins.cores._l2n`. Here $K_{11}$ is a dense raw matrix, so the
recurrence $z_{t+1} = K_{11} z_t + \\gamma K_{12} u_t$ needs a dense scan
and ``d_state`` may be odd.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
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

from ._l2n import initial_block_gamma

__all__ = ["L2NT", "L2NTOptions"]


class L2NTOptions(BaseModel):
    """Options of the ``l2nt`` core."""

    model_config = ConfigDict(extra="forbid")

    rho: float = Field(0.9, gt=0.0, lt=1.0, description="Initial modulus of the 2x2 rotation blocks of K11.")
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


class L2NT(CoreBase):
    """State-space core with a dense contraction $K_{11}$ and a prescribed, incremental L2 gain ``gamma``.

    $K_{11}$ starts as ``l2n``'s block diagonal of 2x2 rotations scaled by
    ``rho`` (with one entry ``rho`` left over when ``d_state`` is odd) and is
    trained as a dense matrix. The state is real, ``(batch, d_state)``.

    Args:
        d_input: Input channels.
        d_output: Output channels.
        d_state: State width.
        gamma: Initial gain bound.
        train_gamma: Whether ``gamma`` is a trainable positive parameter.
        rho: Initial modulus of the 2x2 blocks.
        max_phase_b: Half-width of the initial angle range.
        phase_center: Centre of the initial angle range.
        random_phase: Draw angles at random rather than evenly spaced.
        offdiag_scale: Std of the initial $K_{12}, K_{21}, K_{22}$.
        init: ``"random"`` or ``"orthogonal"`` off-diagonal blocks.
    """

    structure = RecurrenceStructure.DENSE
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
        L2NTOptions(
            rho=rho, max_phase_b=max_phase_b, phase_center=phase_center, offdiag_scale=offdiag_scale, init=init
        )  # validates the values
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"gamma must be a positive finite number, got {gamma!r}")

        modes = d_state // 2
        if random_phase:
            angles = phase_center + (2 * torch.rand(modes) - 1) * max_phase_b
        else:
            angles = phase_center + torch.linspace(-max_phase_b, max_phase_b, modes)
        cos, sin = rho * torch.cos(angles), rho * torch.sin(angles)
        blocks = [torch.stack([torch.stack([cs, -sn]), torch.stack([sn, cs])]) for cs, sn in zip(cos, sin)]
        if d_state % 2:
            blocks.append(torch.full((1, 1), rho))
        self.K11 = nn.Parameter(torch.block_diag(*blocks))

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

    def _raw_k(self) -> torch.Tensor:
        top = torch.cat([self.K11, self.K12], dim=1)
        bottom = torch.cat([self.K21, self.K22], dim=1)
        return torch.cat([top, bottom], dim=0)

    def contraction_scale(self) -> torch.Tensor:
        """Return $1 / \\max(1, \\sigma_{max}(K_{raw}))$ with a round-off margin, in the parameters' dtype."""
        sigma = spectral_norm_upper(self._raw_k()) * (1.0 + safety_margin(self.K12.dtype))
        return (1.0 / torch.clamp(sigma, min=1.0)).to(self.K12.dtype)

    def contraction(self) -> torch.Tensor:
        """Return the normalised $K$, ``(d_state + d_output, d_state + d_input)``, with $\\|K\\|_2 \\le 1$."""
        return self._raw_k() * self.contraction_scale()

    def run(self, u: torch.Tensor, x0: torch.Tensor, backend: ScanBackend) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute ``(y, states)``; see :meth:`nssm_core.CoreBase.forward`."""
        dtype = recurrence_dtype(u.dtype)  # the recurrence never runs in half precision
        u = u.to(dtype)
        n = self.d_state
        k, gamma = parameter_transform(
            self, ("run", dtype), lambda: (self.contraction().to(dtype), self.gamma.to(dtype))
        )
        # gamma is folded into the input columns, so no scaled copy of u is made or saved.
        drives = (u @ (k[:n, n:] * gamma).T).to(dtype)
        with torch.autocast(u.device.type, enabled=False):  # the dense scan's products stay in float32
            states = backend.dense(k[:n, :n], drives, x0)
        y = states[:, :-1] @ k[n:, :n].T + u @ (k[n:, n:] * gamma).T
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


def build_l2nt(spec: CoreSpec, options: L2NTOptions) -> L2NT:
    """Registry factory of the ``l2nt`` core."""
    gamma = options.block_gamma or initial_block_gamma(spec.model_gamma, spec.n_layers)
    return L2NT(
        spec.d_input, spec.d_output, spec.d_state, gamma=gamma, train_gamma=options.train_gamma,
        rho=options.rho, max_phase_b=options.max_phase_b, phase_center=options.phase_center,
        random_phase=options.random_phase, offdiag_scale=options.offdiag_scale, init=options.init,
    )
