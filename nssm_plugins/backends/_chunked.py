"""The ``chunked`` backend: diagonal recurrences evaluated chunk by chunk.

The $T$ steps of $x_{t+1} = a_t \\odot x_t + b_t$ are cut into $C$ chunks of
$L$ steps, and three stages run on all chunks at once:

1. $L$ vectorised steps give each chunk's end value from a zero start,
   $e_c$, and its decay product $P_c = a_{cL+L-1} \\cdots a_{cL}$.
2. The state entering chunk $c$ obeys $s_{c+1} = P_c s_c + e_c$, a diagonal
   recurrence of $C$ steps, solved by the same method (recursively).
3. $L$ more vectorised steps run every chunk from its entering state and write
   the states directly into the output.

The work is $O(T)$ in about $2 L \\log_L T$ Python-level steps. Time-invariant
decays replace stage 3 by one fused pass: inside a chunk the state at step
$k$ is the zero-start response plus $a^{k+1} s_c$, and stage 1 then runs on
a step-major copy of the drives, so each step reads one contiguous block.

Only products of decays are formed, never $a^{-t}$ and never a division, so
decays of exactly 0, moduli of $10^{-6}$ and sequences of $10^5$ steps keep
full accuracy (the tests compare with a sequential reference to 1e-10 in
float64).

The gradient is computed by a custom :class:`torch.autograd.Function`. The
adjoint $\\mu_k = \\partial L / \\partial x_k$ satisfies
$\\mu_T = g_T$ and $\\mu_k = g_k + \\bar a_k \\mu_{k+1}$, which is the same
kind of recurrence run backwards in time, so the backward pass reuses the
scan and stores only the decays and the states. It supports first-order
gradients only (double backward raises).
"""

from __future__ import annotations

import math
import threading

import torch
from torch.autograd.function import once_differentiable
from pydantic import BaseModel, ConfigDict, Field

from nssm_core import RecurrenceStructure

from .._blocks import time_blocks

__all__ = ["ChunkedOptions", "ChunkedScanBackend", "chunked_diagonal_scan"]

DEFAULT_CHUNK = 64
_GRADIENT_BLOCK = 1024  # time steps per partial sum of a time-invariant decay's gradient


class ChunkedOptions(BaseModel):
    """Options of the ``chunked`` backend."""

    model_config = ConfigDict(extra="forbid")

    chunk_size: int = Field(
        DEFAULT_CHUNK, ge=2, description="Maximum steps per chunk; a sequence of T steps uses min(chunk_size, sqrt(T) / 2)."
    )


def _chunk_length(steps: int, limit: int) -> int:
    """Return the chunk length for ``steps`` steps: about $\\sqrt{T} / 2$, at most ``limit``, at least 2.

    Chunks that scale with $\\sqrt{T}$ keep short sequences from running
    almost step by step. Half of $\\sqrt{T}$ measured faster than $\\sqrt{T}$
    for the 2,048-step time blocks of the benchmark model (forward 5 to 15 %
    at 16,384 steps): the per-step operations act on more chunks at once,
    and fewer steps are left over at the end.
    """
    return min(limit, max(2, math.isqrt(steps) // 2))


_workspaces = threading.local()


def _step_major_buffer(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Return an uninitialised tensor of ``shape`` with the dtype and device of ``like``, for a step-major copy.

    On the CPU, each thread keeps one buffer per dtype and reuses it from
    call to call, growing it when a larger one is needed. Its size is bounded
    by the scan's time blocks (:data:`BLOCK_ELEMENTS` values). A fresh tensor
    of several MB per call costs page faults whenever glibc has returned the
    previous one to the system. The benchmark's `lru` forward at 16,384 steps
    took 0.184 s with fresh tensors and 0.157 s with the buffer, the fastest
    of 8 runs each, alternating in one process on 2 threads. Other devices
    and compiled code get a fresh tensor.
    """
    if like.device.type != "cpu" or torch.compiler.is_compiling():
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    numel = math.prod(shape)
    buffers = _workspaces.__dict__.setdefault("buffers", {})
    buffer = buffers.get(like.dtype)
    if buffer is None or buffer.numel() < numel:
        # Created outside inference mode, so that later calls without it may write into the buffer.
        with torch.inference_mode(False):
            buffer = buffers[like.dtype] = torch.empty(numel, dtype=like.dtype)
    return buffer[:numel].view(shape)


def _scan_into(
    out: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    boundary: torch.Tensor,
    chunk: int,
    reverse: bool,
    workspace: bool = False,
) -> None:
    """Write the solution of a diagonal recurrence over ``time`` steps into ``out``.

    Forward (``reverse=False``): ``out[:, t] = a_t * out[:, t - 1] + b_t`` with
    ``out[:, -1]`` read as ``boundary``, so ``out`` contains $x_1 .. x_T$.
    Backward in time (``reverse=True``): ``out[:, t] = a_t * out[:, t + 1] + b_t``
    with ``out[:, time]`` read as ``boundary``.

    Args:
        out: ``(batch, time, d)``, written in place; a view whose time axis can be split.
        a: ``(d,)`` or ``(1 or batch, time, d)``, of ``out``'s dtype.
        b: ``(batch, time, d)``, of ``out``'s dtype.
        boundary: ``(batch, d)``, the state before the first step taken.
        chunk: Maximum steps per chunk.
        reverse: Run backwards in time.
        workspace: Take the step-major copy of time-invariant drives from the
            thread's reusable buffer (:func:`_step_major_buffer`). Only the
            outermost call may, because a nested call would overwrite it.
    """
    if a.ndim == 1:
        _scan_invariant_into(out, a, b, boundary, chunk, reverse, workspace)
    else:
        _scan_varying_into(out, a, b, boundary, chunk, reverse)


def _scan_invariant_into(
    out: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    boundary: torch.Tensor,
    chunk: int,
    reverse: bool,
    workspace: bool = False,
) -> None:
    """Solve the recurrence of :func:`_scan_into` for time-invariant decays ``a`` of shape ``(d,)``.

    Inside each chunk the zero-start response is computed in a step-major copy
    of the drives, ``(chunk, batch, chunks, d)``, so each of the ``chunk``
    steps touches one contiguous block; the states entering the chunks follow
    recursively, and one fused pass adds $a^{k+1} s_c$ (the powers by
    :func:`torch.cumprod`, products only) while writing ``out``.
    """
    batch, steps, width = b.shape
    chunk = _chunk_length(steps, chunk)
    chunks = steps // chunk if steps >= 2 * chunk else 0
    covered = chunks * chunk
    # The chunks cover the steps taken first; the remaining steps run one by one afterwards.
    start = steps - covered if reverse else 0

    state = boundary
    if chunks:
        span = slice(start, start + covered)
        shape = (chunk, batch, chunks, width)
        responses = _step_major_buffer(shape, b) if workspace else b.new_empty(shape)
        responses.copy_(b[:, span].reshape(batch, chunks, chunk, width).permute(2, 0, 1, 3))
        powers = torch.cumprod(a.expand(chunk, width), dim=0)  # a^1 .. a^chunk
        # powers[k] multiplies the state entering the chunk at its step k.
        powers = powers.flip(0) if reverse else powers

        # 1. Zero-start response inside every chunk, in place.
        order = range(chunk - 2, -1, -1) if reverse else range(1, chunk)
        previous = 1 if reverse else -1
        for k in order:
            responses[k].addcmul_(a, responses[k + previous])

        # 2. The state entering each chunk: the same recurrence over chunks with decay a^chunk.
        ends = responses[0] if reverse else responses[chunk - 1]
        entering = torch.empty(batch, chunks, width, dtype=out.dtype, device=out.device)
        chunk_decay = powers[0] if reverse else powers[chunk - 1]
        if reverse:
            entering[:, -1] = boundary
            if chunks > 1:
                _scan_invariant_into(entering[:, :-1], chunk_decay, ends[:, 1:], boundary, chunk, reverse=True)
        else:
            entering[:, 0] = boundary
            if chunks > 1:
                _scan_invariant_into(entering[:, 1:], chunk_decay, ends[:, :-1], boundary, chunk, reverse=False)

        # 3. Every state at once, written into out in its (batch, time, d) layout.
        states = out[:, span].view(batch, chunks, chunk, width)
        torch.addcmul(responses.permute(1, 2, 0, 3), powers.view(1, 1, chunk, width), entering.unsqueeze(2), out=states)
        state = out[:, start] if reverse else out[:, covered - 1]

    # Steps not covered by whole chunks (all steps of a short sequence).
    remaining = range(start - 1, -1, -1) if reverse else range(covered, steps)
    for t in remaining:
        torch.addcmul(b[:, t], a, state, out=out[:, t])
        state = out[:, t]


def _scan_varying_into(
    out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, boundary: torch.Tensor, chunk: int, reverse: bool
) -> None:
    """Solve the recurrence of :func:`_scan_into` for decays ``a`` of shape ``(1 or batch, time, d)``.

    It runs the three stages of the module docstring. Stages 1 and 3 step
    through the chunks in the ``(batch, time, d)`` layout, because a
    step-major copy would also have to copy the decays, which cost more than
    it saved when measured.
    """
    batch, steps, width = b.shape
    time_varying = a.ndim == 3
    chunk = _chunk_length(steps, chunk)
    chunks = steps // chunk if steps >= 2 * chunk else 0
    covered = chunks * chunk
    # The chunks cover the steps taken first; the remaining steps run one by one afterwards.
    start = steps - covered if reverse else 0
    order = range(chunk - 1, -1, -1) if reverse else range(chunk)

    state = boundary
    if chunks:
        drives = b[:, start : start + covered].reshape(batch, chunks, chunk, width)
        decays = a[:, start : start + covered].reshape(a.shape[0], chunks, chunk, width) if time_varying else a

        # 1. Each chunk's end value from a zero start, and its decay product.
        ends = torch.zeros(batch, chunks, width, dtype=out.dtype, device=out.device)
        products = torch.ones(decays.shape[0], chunks, width, dtype=out.dtype, device=out.device) if time_varying else torch.ones_like(a)
        for k in order:
            decay = decays[:, :, k] if time_varying else decays
            ends = torch.addcmul(drives[:, :, k], decay, ends)
            products = products * decay

        # 2. The state entering each chunk: the same recurrence over chunks.
        entering = torch.empty(batch, chunks, width, dtype=out.dtype, device=out.device)
        if reverse:
            entering[:, -1] = boundary
            if chunks > 1:
                later = products[:, 1:] if time_varying else products
                _scan_into(entering[:, :-1], later, ends[:, 1:], boundary, chunk, reverse=True)
        else:
            entering[:, 0] = boundary
            if chunks > 1:
                earlier = products[:, :-1] if time_varying else products
                _scan_into(entering[:, 1:], earlier, ends[:, :-1], boundary, chunk, reverse=False)

        # 3. Every state, from the state entering its chunk.
        states = out[:, start : start + covered].view(batch, chunks, chunk, width)
        previous = entering
        for k in order:
            decay = decays[:, :, k] if time_varying else decays
            torch.addcmul(drives[:, :, k], decay, previous, out=states[:, :, k])
            previous = states[:, :, k]
        state = out[:, start] if reverse else out[:, covered - 1]

    # Steps not covered by whole chunks (all steps of a short sequence).
    remaining = range(start - 1, -1, -1) if reverse else range(covered, steps)
    for t in remaining:
        decay = a[:, t] if time_varying else a
        torch.addcmul(b[:, t], decay, state, out=out[:, t])
        state = out[:, t]


BLOCK_ELEMENTS = 1 << 20
"""Values (batch x steps x d) per time block of :func:`_scan_blocks`."""


def _scan_blocks(
    out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, boundary: torch.Tensor, chunk: int, reverse: bool
) -> None:
    """Run :func:`_scan_into` over consecutive time blocks, each starting from the state the previous one ended in.

    Each block's temporaries are then a few MB (see :func:`time_blocks`).
    """
    steps = b.shape[1]
    blocks = time_blocks(tuple(b.shape), BLOCK_ELEMENTS)
    for block in reversed(blocks) if reverse else blocks:
        decays = a if a.ndim == 1 else a[:, block]
        if reverse:
            entry = boundary if block.stop == steps else out[:, block.stop]
        else:
            entry = boundary if block.start == 0 else out[:, block.start - 1]
        _scan_into(out[:, block], decays, b[:, block], entry, chunk, reverse, workspace=True)


def _run_scan(a: torch.Tensor, b: torch.Tensor, x0: torch.Tensor, chunk: int) -> torch.Tensor:
    """Return ``x_0 .. x_T``, ``(batch, time + 1, d)``, without recording gradients."""
    batch, steps, width = b.shape
    states = torch.empty(batch, steps + 1, width, dtype=b.dtype, device=b.device)
    states[:, 0] = x0
    _scan_blocks(states[:, 1:], a, b, x0, chunk, reverse=False)
    return states


def _run_adjoint(a: torch.Tensor, grad_states: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the adjoint $\\mu_k$ ($\\mu_T = g_T$, $\\mu_k = g_k + \\bar a_k \\mu_{k+1}$) as ``(mu_1 .. mu_T, mu_0)``.

    ``mu_1 .. mu_T`` is a contiguous ``(batch, time, d)`` tensor: it is the
    gradient of the drives, and matrix products downstream read it without a copy.
    """
    batch, length, width = grad_states.shape
    decays = a.conj()
    later = torch.empty(batch, length - 1, width, dtype=grad_states.dtype, device=grad_states.device)
    if length == 1:  # no time steps: x_0 is the only state
        return later, grad_states[:, 0]
    later[:, -1] = grad_states[:, -1]
    inner = decays if decays.ndim == 1 else decays[:, 1:]
    _scan_blocks(later[:, :-1], inner, grad_states[:, 1:-1], grad_states[:, -1], chunk, reverse=True)
    first_decay = decays if decays.ndim == 1 else decays[:, 0]
    first = torch.addcmul(grad_states[:, 0], first_decay, later[:, 0])
    return later, first


def _decay_gradient(adjoint: torch.Tensor, states: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Return the gradient of decays ``a`` from $\\mu_{k+1} \\bar x_k$, summed over broadcast axes.

    Args:
        adjoint: $\\mu_1 .. \\mu_T$, ``(batch, time, d)``.
        states: $x_0 .. x_{T-1}$, ``(batch, time, d)``.
        a: The decays, ``(d,)`` or ``(1 or batch, time, d)``.
    """
    if a.ndim == 1:
        # Summed block by block, so no temporary as large as the sequence is allocated.
        grad = torch.zeros_like(a)
        for start in range(0, adjoint.shape[1], _GRADIENT_BLOCK):
            block = slice(start, start + _GRADIENT_BLOCK)
            grad += (adjoint[:, block] * states[:, block].conj()).sum(dim=(0, 1))
    else:
        grad = adjoint * states.conj()
        if a.shape[0] == 1 and grad.shape[0] != 1:
            grad = grad.sum(dim=0, keepdim=True)
    return grad if a.is_complex() else grad.real


class _DiagonalScan(torch.autograd.Function):
    """Chunked diagonal scan with an adjoint backward pass that is itself a scan."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        a: torch.Tensor,
        b: torch.Tensor,
        x0: torch.Tensor,
        chunk: int,
    ) -> torch.Tensor:
        states = _run_scan(a, b, x0, chunk)
        ctx.save_for_backward(a, states)
        ctx.chunk = chunk
        return states

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_states: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None]:
        a, states = ctx.saved_tensors
        later, first = _run_adjoint(a, grad_states.to(states.dtype), ctx.chunk)  # mu_1 .. mu_T and mu_0

        grad_a = grad_b = grad_x0 = None
        if ctx.needs_input_grad[0]:
            grad_a = _decay_gradient(later, states[:, :-1], a)
        if ctx.needs_input_grad[1]:
            grad_b = later
        if ctx.needs_input_grad[2]:
            grad_x0 = first
        return grad_a, grad_b, grad_x0, None


def chunked_diagonal_scan(
    a: torch.Tensor, b: torch.Tensor, x0: torch.Tensor, chunk_size: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """Evaluate $x_{t+1} = a_t \\odot x_t + b_t$ chunk by chunk, differentiably.

    Args:
        a: Decays, ``(d,)`` (time-invariant) or ``(batch or 1, time, d)``.
        b: Drives, ``(batch, time, d)``.
        x0: Initial states, ``(batch, d)``.
        chunk_size: Steps per chunk, at least 2.

    Returns:
        The states ``x_0 .. x_T``, ``(batch, time + 1, d)``, in the promoted
        dtype of the three inputs.

    Raises:
        ValueError: If the shapes do not fit together.
    """
    if b.ndim != 3:
        raise ValueError(f"drives b must have shape (batch, time, d), got {tuple(b.shape)}")
    batch, steps, width = b.shape
    if a.ndim == 1:
        if a.shape[0] != width:
            raise ValueError(f"decays a have shape {tuple(a.shape)}, expected ({width},) to match b {tuple(b.shape)}")
    elif a.ndim == 3:
        if a.shape[1:] != (steps, width) or a.shape[0] not in (1, batch):
            raise ValueError(
                f"decays a have shape {tuple(a.shape)}, expected ({batch}, {steps}, {width}) "
                f"or (1, {steps}, {width}) to match b {tuple(b.shape)}"
            )
    else:
        raise ValueError(f"decays a must have shape (d,) or (batch, time, d), got {tuple(a.shape)}")
    if x0.shape != (batch, width):
        raise ValueError(f"initial state x0 has shape {tuple(x0.shape)}, expected ({batch}, {width})")
    if chunk_size < 2:
        raise ValueError(f"chunk_size must be at least 2, got {chunk_size}")

    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), x0.dtype)
    return _DiagonalScan.apply(a.to(dtype), b.to(dtype), x0.to(dtype), chunk_size)


class ChunkedScanBackend:
    """Chunked scan of diagonal recurrences, real or complex, time-invariant or time-varying.

    Args:
        chunk_size: Steps per chunk.
    """

    name = "chunked"
    structures = frozenset({RecurrenceStructure.DIAGONAL})

    def __init__(self, chunk_size: int = DEFAULT_CHUNK) -> None:
        self.chunk_size = ChunkedOptions(chunk_size=chunk_size).chunk_size  # validated, "8" becomes 8

    def diagonal(self, a: torch.Tensor, b: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Evaluate $x_{t+1} = a_t x_t + b_t$; see :class:`nssm_core.ScanBackend`."""
        return chunked_diagonal_scan(a, b, x0, self.chunk_size)

    def dense(self, a: torch.Tensor, b: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Reject dense recurrences, which this backend does not implement."""
        raise NotImplementedError(
            "the 'chunked' backend evaluates diagonal recurrences only; use mode='scan' or mode='loop' "
            "for cores with a dense state matrix"
        )
