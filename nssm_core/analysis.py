"""Numerical checks of certificates: exact H-infinity norms and worst-case input searches.

* :func:`hinf_norm` computes $\\|G\\|_\\infty = \\max_\\omega \\sigma_{max}(C (e^{i\\omega} I - A)^{-1} B + D)$
  of a discrete LTI system in float64, on a dense frequency grid that
  includes the eigenvalue angles of ``A`` and is refined around the peaks.
  A grid search can only find a value at or below the true norm, so it is a
  check of a certificate, never a certificate itself.
* :func:`worst_case_gain` searches input sequences by gradient ascent on
  $\\|y\\| / \\|u\\|$ (or on $\\|G(u_1) - G(u_2)\\| / \\|u_1 - u_2\\|$ for the
  incremental kind). The ratio it returns is a lower bound of the true gain.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["frequency_response_norms", "hinf_norm", "worst_case_gain"]


def _as_matrices(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    tensors = [torch.as_tensor(m) for m in (a, b, c, d)]
    wide = torch.complex128 if any(m.is_complex() for m in tensors) else torch.float64
    a, b, c, d = (m.detach().to(wide).cpu() for m in tensors)
    n = a.shape[0]
    if a.shape != (n, n) or b.shape[0] != n or c.shape[1] != n or d.shape != (c.shape[0], b.shape[1]):
        raise ValueError(
            f"inconsistent system shapes A {tuple(a.shape)}, B {tuple(b.shape)}, C {tuple(c.shape)}, "
            f"D {tuple(d.shape)}; expected (n, n), (n, m), (p, n), (p, m)"
        )
    return a, b, c, d


def frequency_response_norms(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, frequencies: torch.Tensor
) -> torch.Tensor:
    """Return $\\sigma_{max}(G(e^{i\\omega}))$ at each of ``frequencies`` (radians per sample), in float64."""
    a, b, c, d = _as_matrices(a, b, c, d)
    n = a.shape[0]
    identity = torch.eye(n, dtype=torch.complex128)
    results = []
    for chunk in torch.as_tensor(frequencies, dtype=torch.float64).split(512):
        z = torch.exp(1j * chunk.to(torch.complex128)).reshape(-1, 1, 1)
        resolvent_b = torch.linalg.solve(z * identity - a.to(torch.complex128), b.to(torch.complex128))
        response = c.to(torch.complex128) @ resolvent_b + d.to(torch.complex128)
        results.append(torch.linalg.matrix_norm(response, ord=2))
    return torch.cat(results)


def hinf_norm(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    d: torch.Tensor,
    *,
    grid_size: int = 2048,
    refinements: int = 8,
    peaks: int = 8,
) -> float:
    """Compute the H-infinity norm of the discrete system $x_{t+1} = A x_t + B u_t$, $y_t = C x_t + D u_t$.

    Args:
        a: ``(n, n)`` state matrix.
        b: ``(n, m)`` input matrix.
        c: ``(p, n)`` output matrix.
        d: ``(p, m)`` feedthrough.
        grid_size: Points of the uniform frequency grid.
        refinements: Zoom steps around each peak, each shrinking the search interval 16-fold.
        peaks: How many of the highest grid points are refined.

    Returns:
        The norm in float64 precision, or ``inf`` if ``A`` has an eigenvalue on
        or outside the unit circle.
    """
    a, b, c, d = _as_matrices(a, b, c, d)
    if a.shape[0] == 0:
        return float(torch.linalg.matrix_norm(d.to(torch.complex128), ord=2))
    eigenvalues = torch.linalg.eigvals(a)
    if bool((eigenvalues.abs() >= 1.0).any()):
        return math.inf

    # Real systems have a symmetric response, so [0, pi] suffices; complex ones need the whole circle.
    low = 0.0 if not a.is_complex() else -math.pi
    grid = torch.linspace(low, math.pi, grid_size, dtype=torch.float64)
    angles = torch.angle(eigenvalues)
    if not a.is_complex():
        angles = angles.abs()
    frequencies = torch.cat([grid, angles.to(torch.float64)])
    values = frequency_response_norms(a, b, c, d, frequencies)
    best = float(values.max())

    spacing = (math.pi - low) / (grid_size - 1)
    for index in torch.topk(values, min(peaks, values.numel())).indices.tolist():
        centre, half_width = float(frequencies[index]), spacing
        for _ in range(refinements):
            local = torch.linspace(centre - half_width, centre + half_width, 33, dtype=torch.float64)
            local_values = frequency_response_norms(a, b, c, d, local)
            position = int(local_values.argmax())
            best = max(best, float(local_values[position]))
            centre, half_width = float(local[position]), half_width / 16
    return best


def _call(model: Callable[[torch.Tensor], object], u: torch.Tensor) -> torch.Tensor:
    out = model(u)
    return out[0] if isinstance(out, tuple) else out  # DeepSSM and cores return (y, states)


def worst_case_gain(
    model: Callable[[torch.Tensor], object],
    d_input: int,
    length: int = 64,
    *,
    starts: int = 4,
    steps: int = 150,
    lr: float = 0.05,
    incremental: bool = False,
    initial: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
) -> float:
    """Search for the input that maximises a model's gain; return the largest ratio found.

    Runs Adam on the input sequences of ``starts`` independent searches (one
    per batch element) and records the best ratio seen at any step. The
    model is put in eval mode for the search and restored afterwards.

    Args:
        model: A :class:`~nssm_core.DeepSSM`, a core, or any callable mapping
            ``(batch, time, d_input)`` to an output (or an ``(output, states)`` tuple).
        d_input: Input channels.
        length: Length of the searched sequences.
        starts: Number of independent random starts.
        steps: Optimizer steps per search.
        lr: Adam learning rate on the normalised input.
        incremental: Ascend $\\|G(u_1) - G(u_2)\\| / \\|u_1 - u_2\\|$ instead of $\\|y\\| / \\|u\\|$.
        initial: Starting inputs ``(starts, length, d_input)``, for example real data windows.
        dtype: Dtype of the searched inputs; the model's parameter dtype by default.
        seed: Seed of the random starts.

    Returns:
        The largest ratio found, a lower bound of the true gain.
    """
    if starts <= 0 or steps < 0 or length <= 0:
        raise ValueError(f"starts and length must be positive and steps non-negative, got {starts}, {length}, {steps}")
    if dtype is None:
        parameters = list(model.parameters()) if isinstance(model, nn.Module) else []
        dtype = parameters[0].dtype if parameters else torch.float32
    generator = torch.Generator().manual_seed(seed)
    if initial is None:
        base = torch.randn(starts, length, d_input, generator=generator, dtype=dtype)
    else:
        base = initial.detach().to(dtype).clone()
    base.requires_grad_(True)
    variables = [base]
    if incremental:
        delta = (0.1 * torch.randn(base.shape, generator=generator, dtype=dtype)).requires_grad_(True)
        variables.append(delta)

    was_training = model.training if isinstance(model, nn.Module) else False
    if isinstance(model, nn.Module):
        model.eval()
    optimizer = torch.optim.Adam(variables, lr=lr)
    best = 0.0
    try:
        for _ in range(steps + 1):
            optimizer.zero_grad()
            if incremental:
                numerator = _call(model, base + delta) - _call(model, base)
                denominator = delta
            else:
                numerator = _call(model, base)
                denominator = base
            ratios = numerator.flatten(1).norm(dim=1) / denominator.flatten(1).norm(dim=1).clamp_min(1e-30)
            best = max(best, float(ratios.detach().max()))
            (-ratios.sum()).backward()
            optimizer.step()
    finally:
        if isinstance(model, nn.Module):
            model.train(was_training)
    return best
