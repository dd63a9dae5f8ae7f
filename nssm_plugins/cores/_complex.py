"""Helpers for cores whose state is a vector of complex modes stored as real pairs."""

from __future__ import annotations

import torch
from einops import rearrange

__all__ = ["pairs_to_complex", "complex_to_pairs", "realify_diagonal"]


def pairs_to_complex(x: torch.Tensor) -> torch.Tensor:
    """Map ``(..., 2m)`` real interleaved pairs ``(re_0, im_0, re_1, ...)`` to ``(..., m)`` complex."""
    pairs = rearrange(x, "... (m two) -> ... m two", two=2)
    return torch.complex(pairs[..., 0], pairs[..., 1])


def complex_to_pairs(z: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pairs_to_complex`."""
    return rearrange(torch.stack([z.real, z.imag], dim=-1), "... m two -> ... (m two)")


def realify_diagonal(
    eigenvalues: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the real realisation of $x_{t+1} = \\Lambda x_t + B u_t$, $y_t = \\mathrm{Re}(C x_t) + D u_t$.

    The real state stacks real and imaginary parts, ``[Re x; Im x]``, so the
    result has twice the state width. Every output is float64.
    """
    lam = eigenvalues.to(torch.complex128)
    b = b.to(torch.complex128)
    c = c.to(torch.complex128)
    re, im = torch.diag(lam.real), torch.diag(lam.imag)
    a_real = torch.cat([torch.cat([re, -im], dim=1), torch.cat([im, re], dim=1)], dim=0)
    b_real = torch.cat([b.real, b.imag], dim=0)
    c_real = torch.cat([c.real, -c.imag], dim=1)
    return a_real, b_real, c_real, d.to(torch.float64)
