"""``l2ru``: a square dense LTI core with a prescribed L2 gain.

Raw parameters: lower-triangular $X_{11}, X_{22}$, full $X_{21}$, a
skew-symmetric $S$, full $C, \\tilde D$ and a scalar $\\alpha$, all of size
$n = d_{in} = d_{out} = d_{state}$. With
$Z = X_{21} X_{21}^T + X_{22} X_{22}^T + \\tilde D^T \\tilde D + I$,
$\\beta = \\gamma^2 \\sigma(\\alpha) / \\|Z\\|_2$,
$H_{11} = X_{11} X_{11}^T + C^T C + \\beta I$,
$H_{12} = \\sqrt\\beta (X_{11} X_{21}^T + C^T \\tilde D)$ and
$V = \\beta Z - \\gamma^2 I \\prec 0$, the state matrices satisfy, with
$P = H_{11} - H_{12} V^{-1} H_{12}^T$:

$[A\\ B]^T P [A\\ B] = -[[H_{12} V^{-1} H_{12}^T, H_{12}], [H_{12}^T, V]]$,
$D = \\sqrt\\beta \\tilde D$.

Substituting into the bounded-real inequality
$[A\\ B; C\\ D]^T \\mathrm{diag}(P, I) [A\\ B; C\\ D] \\preceq \\mathrm{diag}(P, \\gamma^2 I)$
leaves $[X_{11}; \\sqrt\\beta X_{21}][\\cdot]^T + \\mathrm{diag}(\\beta I, \\beta (X_{22} X_{22}^T + I)) \\succ 0$,
so the H-infinity norm is below $\\gamma$ for every raw value (Massai et al.,
"Free Parametrization of L2-bounded State Space Models", arXiv:2503.23818).

The published construction writes $A = L_2^{-T} Q L_1^T$ and
$B = A H_{12}^{-T} V$ with $L_1 = \\mathrm{chol}(-H_{12} V^{-1} H_{12}^T)$,
$L_2 = \\mathrm{chol}(P)$ and $Q = (I - S)(I + S)^{-1}$. That form needs
$H_{12}$ invertible and a Cholesky factor of a matrix that is singular
whenever $H_{12}$ is. This module uses the equivalent factorisation
$-V = W W^T$: $A = L_2^{-T} Q W^{-1} H_{12}^T$, $B = -L_2^{-T} Q W^T$. It is
the published $(A, B)$ with $Q$ replaced by $Q O^T$ for the orthogonal
$O = W^{-1} H_{12}^T L_1^{-T}$, so it reaches the same systems, and both
Cholesky factorisations are of matrices bounded below: $-V \\succeq
\\gamma^2 (1 - \\sigma(\\alpha)) I$ and $P \\succeq \\beta I$. $\\sigma(\\alpha)$
is clamped to $[10^{-6}, 1 - 10^{-6}]$ so neither floor underflows.
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
    recurrence_dtype,
    spectral_norm_upper,
)

from ._l2n import initial_block_gamma

__all__ = ["L2RU", "L2RUOptions"]

# Clamp of sigmoid(alpha): keeps -V >= gamma^2 * 1e-6 * I and P >= beta * I with beta >= gamma^2 * 1e-6 / ||Z||.
_SIGMOID_FLOOR = 1e-6


class L2RUOptions(BaseModel):
    """Options of the ``l2ru`` core.

    ``d_model`` and ``d_state`` are filled from the flat
    :class:`~nssm_core.SSMConfig` fields, so a config with
    ``d_state != d_model`` fails when it is built.
    """

    model_config = ConfigDict(extra="forbid")

    d_model: int | None = Field(None, gt=0, description="Width of the signal between blocks; must equal d_state.")
    d_state: int | None = Field(None, gt=0, description="State width; must equal d_model.")
    init_scale: float = Field(0.5, gt=0.0, description="Std of the initial raw matrices, relative to 1/sqrt(n).")
    train_gamma: bool = Field(False, description="Train the core's gain as a positive parameter.")
    block_gamma: float | None = Field(
        None, gt=0.0, description="Initial gain of the core; by default derived from the model's gamma."
    )

    @model_validator(mode="after")
    def _check_square(self) -> L2RUOptions:
        if self.d_model is not None and self.d_state is not None and self.d_model != self.d_state:
            raise ValueError(
                f"l2ru is square (d_input = d_output = d_state), but d_state={self.d_state} and "
                f"d_model={self.d_model}; set d_state={self.d_model}"
            )
        return self


class L2RU(CoreBase):
    """Square dense LTI core with a prescribed, incremental L2 gain ``gamma``.

    The state is real, ``(batch, n)``. The matrices are built in float64 at
    every call and cast to the input's dtype.

    Args:
        n: Input, output and state width.
        gamma: Initial gain bound.
        train_gamma: Whether ``gamma`` is a trainable positive parameter.
        init_scale: Std of the initial raw matrices relative to $1/\\sqrt{n}$.
    """

    structure = RecurrenceStructure.DENSE
    certificate_kind = CertificateKind.INCREMENTAL

    def __init__(self, n: int, gamma: float = 1.0, train_gamma: bool = False, init_scale: float = 0.5) -> None:
        super().__init__(n, n, n)
        L2RUOptions(init_scale=init_scale)  # validates the value
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"gamma must be a positive finite number, got {gamma!r}")
        std = init_scale / math.sqrt(n)
        for name in ("X11", "X21", "X22", "skew", "C", "Dt"):
            self.register_parameter(name, nn.Parameter(torch.randn(n, n) * std))
        self.alpha = nn.Parameter(torch.zeros(()))
        log_gamma = torch.tensor(math.log(gamma))
        if train_gamma:
            self.log_gamma = nn.Parameter(log_gamma)
        else:
            self.register_buffer("log_gamma", log_gamma)

    @property
    def gamma(self) -> torch.Tensor:
        """The core's gain bound, a positive 0-d tensor."""
        return torch.exp(self.log_gamma)

    def lti_matrices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(A, B, C, D)`` in float64, differentiable in the raw parameters."""
        n = self.d_state
        wide = {name: getattr(self, name).to(torch.float64) for name in ("X11", "X21", "X22", "skew", "C", "Dt")}
        x11, x22 = torch.tril(wide["X11"]), torch.tril(wide["X22"])
        x21, c, dt = wide["X21"], wide["C"], wide["Dt"]
        gamma_sq = self.gamma.to(torch.float64) ** 2
        identity = torch.eye(n, dtype=torch.float64, device=x11.device)

        # 1. Orthogonal Q by the Cayley transform of the skew-symmetric S.
        skew = wide["skew"] - wide["skew"].T
        q = torch.linalg.solve(identity + skew, identity - skew, left=False)

        # 2. beta, H11, H12 and -V = gamma^2 I - beta Z.
        z = x21 @ x21.T + x22 @ x22.T + dt.T @ dt + identity
        fraction = torch.sigmoid(self.alpha.to(torch.float64)).clamp(_SIGMOID_FLOOR, 1.0 - _SIGMOID_FLOOR)
        beta = gamma_sq * fraction / spectral_norm_upper(z)
        h11 = x11 @ x11.T + c.T @ c + beta * identity
        h12 = torch.sqrt(beta) * (x11 @ x21.T + c.T @ dt)
        neg_v = gamma_sq * identity - beta * z

        # 3. W = chol(-V), F = W^-1 H12^T, P = H11 + F^T F, L2 = chol(P); symmetrised against round-off.
        w = torch.linalg.cholesky(0.5 * (neg_v + neg_v.T))
        f = torch.linalg.solve_triangular(w, h12.T, upper=False)
        p = h11 + f.T @ f
        l2 = torch.linalg.cholesky(0.5 * (p + p.T))

        # 4. A = L2^-T Q F, B = -L2^-T Q W^T, D = sqrt(beta) Dt.
        a = torch.linalg.solve_triangular(l2.T, q @ f, upper=True)
        b = -torch.linalg.solve_triangular(l2.T, q @ w.T, upper=True)
        return a, b, c, torch.sqrt(beta) * dt

    def run(self, u: torch.Tensor, x0: torch.Tensor, backend: ScanBackend) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute ``(y, states)``; see :meth:`nssm_core.CoreBase.forward`."""
        # NOTE: the bound is proven for the float64 matrices; their float32 cast is not bounded separately.
        dtype = recurrence_dtype(u.dtype)  # the recurrence never runs in half precision
        u = u.to(dtype)
        a, b, c, d = parameter_transform(
            self, ("run", dtype), lambda: tuple(m.to(dtype) for m in self.lti_matrices())
        )
        drives = (u @ b.T).to(dtype)
        with torch.autocast(u.device.type, enabled=False):  # the dense scan's products stay in float32
            states = backend.dense(a, drives, x0)
        y = states[:, :-1] @ c.T + u @ d.T
        return y, states

    def bound(self) -> torch.Tensor:
        """Return ``gamma`` as a differentiable 0-d float64 tensor."""
        return self.gamma.to(torch.float64)


def build_l2ru(spec: CoreSpec, options: L2RUOptions) -> L2RU:
    """Registry factory of the ``l2ru`` core.

    Raises:
        ValueError: If the spec is not square, ``d_input = d_output = d_state``.
    """
    if not spec.d_input == spec.d_output == spec.d_state:
        raise ValueError(
            f"l2ru is square (d_input = d_output = d_state), got d_input={spec.d_input}, "
            f"d_output={spec.d_output}, d_state={spec.d_state}; in a DeepSSM set d_state equal to d_model"
        )
    gamma = options.block_gamma or initial_block_gamma(spec.model_gamma, spec.n_layers)
    return L2RU(spec.d_state, gamma=gamma, train_gamma=options.train_gamma, init_scale=options.init_scale)
