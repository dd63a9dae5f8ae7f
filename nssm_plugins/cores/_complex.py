"""Helpers for cores whose state is a vector of complex modes stored as real pairs."""

from __future__ import annotations

import torch

__all__ = ["pairs_to_complex", "complex_to_pairs", "realify_diagonal"]


def pairs_to_complex(x: torch.Tensor) -> torch.Tensor:
    """Map ``(..., 2m)`` real interleaved pairs ``(re_0, im_0, re_1, ...)`` to ``(..., m)`` complex.

    The result is a view of ``x`` when its memory layout allows one (the last
    axis contiguous, every other stride even), so no copy is made for the
    output of a matrix product. float16 and bfloat16 inputs are promoted to
    float32 first.
    """
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    pairs = x.unflatten(-1, (x.shape[-1] // 2, 2))
    if torch.compiler.is_compiling():
        # With torch 2.13, torch.compile's tracer failed on view_as_complex of this view, so compiled code copies.
        return torch.complex(pairs[..., 0], pairs[..., 1])
    viewable = pairs.stride(-1) == 1 and pairs.storage_offset() % 2 == 0 and all(
        stride % 2 == 0 for stride in pairs.stride()[:-1]
    )
    return torch.view_as_complex(pairs if viewable else pairs.contiguous())


def complex_to_pairs(z: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pairs_to_complex`: a real view ``(..., 2m)`` of ``(..., m)`` complex values."""
    if torch.compiler.is_compiling():
        return torch.stack([z.real, z.imag], dim=-1).flatten(-2)
    return torch.view_as_real(z).flatten(-2)


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
