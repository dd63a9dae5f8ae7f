"""``tv``: a time-varying selective core with a prescribed L2 gain.

Per state coordinate $j$ and step $t$, a small network of the input $u_t$
produces a triple $(a_{tj}, b_{tj}, c_{tj})$:
$a = \\exp(-\\mathrm{softplus}(\\delta + \\mathrm{bias}) \\, \\mathrm{softplus}(\\alpha))$
and $b, c = \\tanh(\\cdot)$. The triple is divided by $\\max(1, \\sigma_{tj})$,
where $\\sigma_{tj}$ is the spectral norm of $M_{tj} = [[a, b], [c, 0]]$, so
every $M_{tj}$ is a contraction. With $v_t = \\gamma W_{in} u_t$ and
$\\|W_{in}\\|_2, \\|W_{out}\\|_2 \\le 1$:

$z_{t+1} = a_t \\odot z_t + b_t \\odot v_t$, $\\hat y_t = c_t \\odot z_t$,
$y_t = W_{out} \\hat y_t$.

Because $[z_{t+1, j}; \\hat y_{tj}] = M_{tj} [z_{tj}; v_{tj}]$,
$z_{t+1,j}^2 + \\hat y_{tj}^2 \\le z_{tj}^2 + v_{tj}^2$; summing over time from
$z_0 = 0$ gives $\\|y\\|_2 \\le \\|\\hat y\\|_2 \\le \\|v\\|_2 \\le \\gamma \\|u\\|_2$.
The triple depends on $u$, so the map is nonlinear and the bound is a plain
gain bound, not an incremental one. The recurrence is a diagonal
time-varying real scan.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.autograd.function import once_differentiable

from nssm_core import (
    CertificateKind,
    CoreBase,
    CoreSpec,
    RecurrenceStructure,
    ScanBackend,
    contraction,
    parameter_transform,
    recurrence_dtype,
)

from .._blocks import time_blocks
from ._l2n import initial_block_gamma

__all__ = ["TV", "TVOptions", "contraction_norm_2x2", "normalise_triple", "triple_margin"]


class TVOptions(BaseModel):
    """Options of the ``tv`` core."""

    model_config = ConfigDict(extra="forbid")

    rmin: float = Field(0.9, gt=0.0, lt=1.0, description="Smallest initial decay at zero input.")
    rmax: float = Field(0.99, gt=0.0, lt=1.0, description="Largest initial decay at zero input.")
    d_selector: int = Field(
        0, ge=0, description="Hidden width of the network that maps u_t to the triple; 0 means one linear map."
    )
    selector_scale: float = Field(
        0.1, ge=0.0, description="Std of the initial selector weights, relative to 1/sqrt(fan-in)."
    )
    train_gamma: bool = Field(False, description="Train the core's gain as a positive parameter.")
    block_gamma: float | None = Field(
        None, gt=0.0, description="Initial gain of the core; by default derived from the model's gamma."
    )

    @model_validator(mode="after")
    def _check_range(self) -> TVOptions:
        if self.rmin > self.rmax:
            raise ValueError(f"rmin ({self.rmin}) must not exceed rmax ({self.rmax})")
        return self


def contraction_norm_2x2(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Return the spectral norm of $[[a, b], [c, 0]]$ elementwise, in float64.

    For a real 2x2 matrix the singular values satisfy
    $\\sigma_1 \\pm \\sigma_2 = \\sqrt{\\|M\\|_F^2 \\pm 2 |\\det M|}$; here
    $\\|M\\|_F^2 \\pm 2|\\det M| = a^2 + (|b| \\pm |c|)^2$, a sum of squares with
    no cancellation. This float64 version is the reference;
    :func:`normalise_triple` computes the same norm in the inputs' dtype.
    """
    a, b, c = (x.to(torch.float64) for x in (a, b, c))
    plus = torch.sqrt(a * a + (b.abs() + c.abs()) ** 2)
    minus = torch.sqrt(a * a + (b.abs() - c.abs()) ** 2)
    return 0.5 * (plus + minus)


def triple_margin(dtype: torch.dtype) -> float:
    """Relative margin by which :func:`normalise_triple` inflates the norm it computes in ``dtype``.

    With unit round-off $u$ ($2^{-24}$ in float32, $2^{-53}$ in float64), each
    operation of the norm (two sums, two squares, two fused or separate
    multiply-adds, two square roots, a sum and the scaling) loses at most a
    factor $1 - u$ or $1 - 2u$, so the computed norm is at least
    $\\sigma (1 - 6u)$ up to $O(u^2)$. Dividing by it (or multiplying by its
    rounded reciprocal) rounds each stored entry up by at most a factor
    $(1 + u)^2$, which raises the norm of the stored matrix by at most
    $1 + 2\\sqrt{2} u$ (a rank-2 matrix has $\\| |M| \\|_2 \\le \\|M\\|_F \\le \\sqrt 2 \\|M\\|_2$).
    Any margin above about $9u$ therefore keeps the stored matrix a
    contraction; $64u$ is used.
    """
    unit = float(torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps) / 2
    return 64.0 * unit


def _norm_parts(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Return ``(plus, minus, sum_bc, diff_bc)`` of :func:`contraction_norm_2x2`, computed in the inputs' dtype."""
    abs_b, abs_c = b.abs(), c.abs()
    sum_bc = abs_b + abs_c
    diff_bc = abs_b.sub_(abs_c)
    square_a = a * a
    plus = torch.addcmul(square_a, sum_bc, sum_bc).sqrt_()
    minus = square_a.addcmul_(diff_bc, diff_bc).sqrt_()
    return plus, minus, sum_bc, diff_bc


def _divisor(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, kappa: float) -> torch.Tensor:
    """Return $D = \\max(1, \\kappa \\sigma)$, $\\sigma$ the norm of :func:`contraction_norm_2x2` in the inputs' dtype."""
    plus, minus, _, _ = _norm_parts(a, b, c)
    return plus.add_(minus).mul_(0.5 * kappa).clamp_(min=1.0)


class _NormaliseTriple(torch.autograd.Function):
    """$(a, b, c) \\mapsto (a, b, c) / D$ with $D = \\max(1, \\kappa \\sigma)$, fused, with a hand-written gradient.

    Only the inputs are saved; the backward pass recomputes the norm. Where
    $D = 1$ the map is the identity; elsewhere
    $\\partial L / \\partial x = g_x / D - \\kappa (\\sum_y g_y y / D^2) \\partial \\sigma / \\partial x$ with
    $\\partial \\sigma / \\partial a = a (1/P + 1/Q) / 2$,
    $\\partial \\sigma / \\partial b = \\mathrm{sign}(b) (s/P + d/Q) / 2$ and
    $\\partial \\sigma / \\partial c = \\mathrm{sign}(c) (s/P - d/Q) / 2$, where
    $P, Q$ are the two square roots and $s, d = |b| \\pm |c|$ (a zero $Q$
    contributes nothing, its subgradient 0).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, kappa: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        divisor = _divisor(a, b, c, kappa)
        ctx.save_for_backward(a, b, c)
        ctx.kappa = kappa
        return a / divisor, b / divisor, c / divisor

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_a: torch.Tensor, grad_b: torch.Tensor, grad_c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        a, b, c = ctx.saved_tensors
        grads = tuple(torch.zeros_like(a) if g is None else g for g in (grad_a, grad_b, grad_c))
        d_a, d_b, d_c, _ = _normalisation_grads(a, b, c, grads, ctx.kappa)  # type: ignore[arg-type]
        return d_a, d_b, d_c, None


def _normalisation_grads(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    kappa: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the gradients of $(a, b, c)$ through $x \\mapsto x / D$ (see :class:`_NormaliseTriple`) and $D$.

    Written with few temporaries and in-place updates, because every fresh
    tensor of this size costs a round of page faults.
    """
    grad_a, grad_b, grad_c = grads
    plus, minus, sum_bc, diff_bc = _norm_parts(a, b, c)
    divisor = torch.add(plus, minus).mul_(0.5 * kappa)
    active = divisor > 1.0
    divisor.clamp_(min=1.0)
    # half_weight = -kappa / 2 * sum_y g_y y / D^2 where D > 1, else 0.
    half_weight = grad_a * a
    half_weight.addcmul_(grad_b, b).addcmul_(grad_c, c)
    half_weight.div_(divisor).div_(divisor).mul_(-0.5 * kappa).mul_(active)
    # P = 0 or Q = 0 only where its numerators (a, |b| + |c| or |b| - |c|) vanish too. The clamp keeps
    # 1/P and 1/Q finite, and every ratio below lies in [0, 1] (or [-1, 1] for d/Q).
    tiny = torch.finfo(a.dtype).tiny
    inv_plus = plus.clamp_(min=tiny).reciprocal_()
    inv_minus = minus.clamp_(min=tiny).reciprocal_()
    d_a = torch.add(inv_plus, inv_minus).mul_(a).mul_(half_weight).addcdiv_(grad_a, divisor)
    ratio_plus = sum_bc.mul_(inv_plus)
    ratio_minus = diff_bc.mul_(inv_minus)
    # s/P >= |d|/Q, so both combinations below are >= 0 and copysign applies sign(b) or sign(c).
    d_b = torch.add(ratio_plus, ratio_minus).copysign_(b).mul_(half_weight).addcdiv_(grad_b, divisor)
    d_c = ratio_plus.sub_(ratio_minus).copysign_(c).mul_(half_weight).addcdiv_(grad_c, divisor)
    return d_a, d_b, d_c, divisor


def _selector_outputs(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the selector's last linear map applied to ``hidden`` as three contiguous parts, one per row block.

    Three products on slices of the weight avoid splitting one wide output
    and joining its gradient back.
    """
    n = weight.shape[0] // 3
    delta, raw_b, raw_c = (
        nn.functional.linear(hidden, weight[i * n : (i + 1) * n], bias[i * n : (i + 1) * n]) for i in range(3)
    )
    return delta, raw_b, raw_c


class _TVFront(torch.autograd.Function):
    """The ``tv`` core from the selector's input to the scan's inputs, in one node: ``(a, b v, c)`` normalised.

    Inputs: ``hidden`` ``(batch, time, h)``, the input of the selector's last
    linear map (``u`` itself when the selector is one linear map), ``u``
    ``(batch, time, d_input)``, that map's ``weight`` ``(3 d, h)`` and ``bias``
    ``(3 d,)``, ``w_in`` $= \\gamma W_{in}$ ``(d, d_input)``, and ``decay_bias``
    and ``decay_rate`` (each ``(d,)``). One time block at a time, the node
    forms the selector outputs $\\delta$, raw $b$, raw $c$ (the three row
    blocks of ``weight``) and $v = w_{in} u$. With
    $k = \\mathrm{softplus}(\\text{decay\\_rate})$ and
    $p = \\mathrm{softplus}(\\delta + \\text{decay\\_bias})$, the triple is
    $a = e^{-p k}$, $b = \\tanh(\\text{raw\\_b})$, $c = \\tanh(\\text{raw\\_c})$,
    divided by $D$ as in :func:`normalise_triple`; the outputs are
    $(a / D, (b / D) v, c / D)$.

    Only the inputs are saved: the backward pass recomputes the four small
    products and the triple block by block, using $\\partial a / \\partial \\delta = -k a \\,
    \\mathrm{sigmoid}(\\delta + \\text{decay\\_bias})$,
    $\\partial a / \\partial \\text{decay\\_rate} = -p a \\, \\mathrm{sigmoid}(\\text{decay\\_rate})$ and
    $\\tanh' = 1 - \\tanh^2$, and sums the weight gradients over the blocks.
    No tensor of the sequence's length and the state's width is saved. Inside
    the node every product runs in the inputs' dtype, also under autocast.
    Temporaries are updated in place: a fresh tensor of this size costs a
    round of page faults.
    """

    @staticmethod
    def _products(
        hidden: torch.Tensor, u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, w_in: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(delta, raw_b, raw_c, v)`` of one time block, each contiguous ``(batch, block, d)``."""
        delta, raw_b, raw_c = _selector_outputs(hidden, weight, bias)
        return delta, raw_b, raw_c, nn.functional.linear(u, w_in)

    @staticmethod
    def _triple(
        delta: torch.Tensor, raw_b: torch.Tensor, raw_c: torch.Tensor, bias: torch.Tensor, rate: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(a, b, c, p)`` before normalisation, ``p`` the softplus of the shifted ``delta``."""
        softplus_delta = nn.functional.softplus(delta + bias)
        a = torch.mul(softplus_delta, -nn.functional.softplus(rate)).exp_()
        return a, torch.tanh(raw_b), torch.tanh(raw_c), softplus_delta

    @staticmethod
    def _forward_block(
        delta: torch.Tensor,
        raw_b: torch.Tensor,
        raw_c: torch.Tensor,
        v: torch.Tensor,
        bias: torch.Tensor,
        rate: torch.Tensor,
        kappa: float,
        out: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> None:
        a, b, c, _ = _TVFront._triple(delta, raw_b, raw_c, bias, rate)
        inverse = _divisor(a, b, c, kappa).reciprocal_()
        torch.mul(a, inverse, out=out[0])
        torch.mul(b.mul_(inverse), v, out=out[1])
        torch.mul(c, inverse, out=out[2])

    @staticmethod
    def _backward_block(
        saved: tuple[torch.Tensor, ...],
        grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        kappa: float,
        out: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the gradients of delta, raw_b, raw_c and v into ``out``; return those of bias and rate."""
        delta, raw_b, raw_c, v, bias, rate = saved
        grad_a, grad_drive, grad_c = grads
        a, b, c, softplus_delta = _TVFront._triple(delta, raw_b, raw_c, bias, rate)
        # The drive is (b / D) v: its gradient reaches b / D as g v, and v as g (b / D).
        grad_b = grad_drive * v
        d_a, d_b, d_c, divisor = _normalisation_grads(a, b, c, (grad_a, grad_b, grad_c), kappa)
        torch.mul(grad_drive, b, out=out[3]).div_(divisor)

        # Through tanh: 1 - tanh^2.
        torch.mul(d_b, b.mul_(b).neg_().add_(1.0), out=out[1])
        torch.mul(d_c, c.mul_(c).neg_().add_(1.0), out=out[2])
        # Through a = exp(-e) with e = p k, k = softplus(rate) and p = softplus(delta + bias): dL/de = -a dL/da.
        grad_exponent = d_a.mul_(a).neg_()
        leading = tuple(range(a.ndim - 1))
        grad_rate = (grad_exponent * softplus_delta).sum(dim=leading) * torch.sigmoid(rate)
        sigmoid_shift = (delta + bias).sigmoid_()
        grad_delta = torch.mul(grad_exponent, nn.functional.softplus(rate), out=out[0]).mul_(sigmoid_shift)
        return grad_delta.sum(dim=leading), grad_rate

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        u: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        w_in: torch.Tensor,
        decay_bias: torch.Tensor,
        decay_rate: torch.Tensor,
        kappa: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, steps, n = u.shape[0], u.shape[1], w_in.shape[0]
        out = tuple(torch.empty(batch, steps, n, dtype=u.dtype, device=u.device) for _ in range(3))
        with torch.autocast(u.device.type, enabled=False):
            for block in _time_blocks(out[0]):
                delta, raw_b, raw_c, v = _TVFront._products(hidden[:, block], u[:, block], weight, bias, w_in)
                _TVFront._forward_block(
                    delta, raw_b, raw_c, v, decay_bias, decay_rate, kappa,
                    tuple(o[:, block] for o in out),  # type: ignore[arg-type]
                )
        ctx.save_for_backward(hidden, u, weight, bias, w_in, decay_bias, decay_rate)
        ctx.kappa = kappa
        return out  # type: ignore[return-value]

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_a: torch.Tensor, grad_drive: torch.Tensor, grad_c: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        hidden, u, weight, bias, w_in, decay_bias, decay_rate = ctx.saved_tensors
        batch, steps, n = u.shape[0], u.shape[1], w_in.shape[0]
        shape = (batch, steps, n)
        grads = tuple(u.new_zeros(shape) if g is None else g for g in (grad_a, grad_drive, grad_c))
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_u = torch.empty_like(u) if ctx.needs_input_grad[1] else None
        grad_weight = torch.zeros_like(weight)
        grad_bias = torch.zeros_like(bias)
        grad_w_in = torch.zeros_like(w_in)
        grad_decay_bias = torch.zeros_like(decay_bias)
        grad_decay_rate = torch.zeros_like(decay_rate)
        blocks = _time_blocks(grads[0])
        # Gradients of delta, raw b, raw c and v for one block; reused by every block.
        largest = max(block.stop - block.start for block in blocks)
        buffers = tuple(u.new_empty(batch, largest, n) for _ in range(4))
        with torch.autocast(u.device.type, enabled=False):
            for block in blocks:
                length = block.stop - block.start
                block_hidden, block_u = hidden[:, block], u[:, block]
                products = _TVFront._products(block_hidden, block_u, weight, bias, w_in)
                parts = tuple(buffer[:, :length] for buffer in buffers)
                block_decay_bias, block_decay_rate = _TVFront._backward_block(
                    (*products, decay_bias, decay_rate),
                    tuple(g[:, block] for g in grads),  # type: ignore[arg-type]
                    ctx.kappa,
                    parts,  # type: ignore[arg-type]
                )
                grad_decay_bias += block_decay_bias
                grad_decay_rate += block_decay_rate
                flat_hidden, flat_u = block_hidden.reshape(-1, hidden.shape[-1]), block_u.reshape(-1, u.shape[-1])
                for i, part in enumerate(parts[:3]):
                    flat = part.reshape(-1, n)
                    grad_weight[i * n : (i + 1) * n].addmm_(flat.T, flat_hidden)
                    grad_bias[i * n : (i + 1) * n] += flat.sum(dim=0)
                grad_w_in.addmm_(parts[3].reshape(-1, n).T, flat_u)
                if grad_hidden is not None:
                    block_grad = parts[0] @ weight[:n]
                    grad_hidden[:, block] = block_grad.add_(parts[1] @ weight[n : 2 * n]).add_(parts[2] @ weight[2 * n :])
                if grad_u is not None:
                    grad_u[:, block] = parts[3] @ w_in
        return grad_hidden, grad_u, grad_weight, grad_bias, grad_w_in, grad_decay_bias, grad_decay_rate, None


class _GatedOutput(torch.autograd.Function):
    """The ``tv`` core's output $y_t = W_{out} (c_t \\odot x_t)$, without keeping the gated states.

    Inputs: ``c`` and ``states`` (the states $x_0 .. x_{T-1}$), each
    ``(batch, time, d)``, and ``weight`` $W_{out}$, ``(d_output, d)``. The
    product $c \\odot x$ is formed one time block at a time, in the forward
    pass and again in the backward pass, so only ``c``, ``states`` (which
    the scan keeps anyway) and ``weight`` are saved. With $g = \\partial L /
    \\partial y$ and $h = g W_{out}$: $\\partial L / \\partial c = h \\odot x$,
    $\\partial L / \\partial x = h \\odot c$ and
    $\\partial L / \\partial W_{out} = \\sum_t g_t (c_t \\odot x_t)^T$.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, c: torch.Tensor, states: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        parts = [(c[:, block] * states[:, block]) @ weight.T for block in _time_blocks(c)]
        ctx.save_for_backward(c, states, weight)
        return torch.cat(parts, dim=1)

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_y: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        c, states, weight = ctx.saved_tensors
        grad_y = grad_y.to(c.dtype)  # a bf16 gradient when the forward product ran under autocast
        grad_c = torch.empty_like(c) if ctx.needs_input_grad[0] else None
        grad_states = torch.empty_like(c) if ctx.needs_input_grad[1] else None
        grad_weight = torch.zeros_like(weight, dtype=c.dtype)
        recurrence_weight = weight.to(c.dtype)
        for block in _time_blocks(c):
            gate, state, grad = c[:, block], states[:, block], grad_y[:, block]
            grad_gated = grad @ recurrence_weight
            grad_weight.addmm_(grad.flatten(0, 1).T, (gate * state).flatten(0, 1))
            if grad_c is not None:
                torch.mul(grad_gated, state, out=grad_c[:, block])
            if grad_states is not None:
                torch.mul(grad_gated, gate, out=grad_states[:, block])
        return grad_c, grad_states, grad_weight.to(weight.dtype)


def _time_blocks(x: torch.Tensor, elements: int = 1 << 18) -> list[slice]:
    """Return time slices of ``x`` ``(batch, time, d)`` of about ``elements`` values for the fused nodes."""
    return time_blocks(tuple(x.shape), elements)


def normalise_triple(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Divide $(a, b, c)$ by $\\max(1, \\sigma (1 + m))$ so that every $[[a, b], [c, 0]]$ is a contraction.

    The norm $\\sigma$ of :func:`contraction_norm_2x2` is computed in the
    inputs' dtype (float32 or float64; others are promoted to float32) and
    inflated by the margin $m$ of :func:`triple_margin`, which covers its
    round-off. Fused into one autograd node that saves only the inputs.
    """
    dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype, c.dtype) else torch.float32
    a, b, c = (x.to(dtype) for x in (a, b, c))
    return _NormaliseTriple.apply(a, b, c, 1.0 + triple_margin(dtype))


class TV(CoreBase):
    """Time-varying selective core with a prescribed plain L2 gain ``gamma``.

    The state is real, ``(batch, d_state)``.

    Args:
        d_input: Input channels.
        d_output: Output channels.
        d_state: State width.
        gamma: Initial gain bound.
        train_gamma: Whether ``gamma`` is a trainable positive parameter.
        rmin: Smallest decay at zero input at initialisation.
        rmax: Largest decay at zero input at initialisation.
        d_selector: Hidden width of the selector network (0: one linear map).
        selector_scale: Std of the initial selector weights relative to $1/\\sqrt{\\text{fan-in}}$.
    """

    structure = RecurrenceStructure.DIAGONAL
    certificate_kind = CertificateKind.GAIN
    # Storage ||z||^2 gives ||y||^2 <= gamma^2 ||u||^2 + ||z_0||^2, so ||y|| <= gamma ||u|| + ||z_0||.
    initial_state_gain = 1.0

    def __init__(
        self,
        d_input: int,
        d_output: int,
        d_state: int,
        gamma: float = 1.0,
        train_gamma: bool = False,
        rmin: float = 0.9,
        rmax: float = 0.99,
        d_selector: int = 0,
        selector_scale: float = 0.1,
    ) -> None:
        super().__init__(d_input, d_output, d_state)
        TVOptions(rmin=rmin, rmax=rmax, d_selector=d_selector, selector_scale=selector_scale)  # validates
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"gamma must be a positive finite number, got {gamma!r}")

        # 1. Decays at zero input: a = exp(-softplus(bias)) in [rmin, rmax], with softplus(alpha) = 1.
        decay = torch.sqrt(torch.rand(d_state, dtype=torch.float64) * (rmax**2 - rmin**2) + rmin**2)
        self.decay_bias = nn.Parameter(torch.log(torch.expm1(-torch.log(decay))).float())
        self.decay_rate = nn.Parameter(torch.full((d_state,), math.log(math.expm1(1.0))))

        # 2. Selector: u_t -> (delta, raw b, raw c), each d_state wide.
        if d_selector == 0:
            self.selector: nn.Module = nn.Linear(d_input, 3 * d_state)
        else:
            self.selector = nn.Sequential(
                nn.Linear(d_input, d_selector), nn.GELU(), nn.Linear(d_selector, 3 * d_state)
            )
        with torch.no_grad():
            for module in self.selector.modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, selector_scale / math.sqrt(module.in_features))
                    module.bias.zero_()
            last = self.selector if isinstance(self.selector, nn.Linear) else self.selector[-1]
            # b = c = sqrt(1 - a) puts [[a, b], [c, 0]] on the unit-norm boundary, so at zero input the
            # normaliser leaves a unchanged and each coordinate starts with a DC gain just below 1.
            edge = torch.atanh(torch.sqrt(1.0 - decay) * 0.999).float()
            last.bias[d_state:].copy_(torch.cat([edge, edge]))

        # 3. Input and output maps, normalised to spectral norm at most 1 when used.
        self.W_in = nn.Parameter(torch.empty(d_state, d_input))
        self.W_out = nn.Parameter(torch.empty(d_output, d_state))
        nn.init.orthogonal_(self.W_in)
        nn.init.orthogonal_(self.W_out)

        log_gamma = torch.tensor(math.log(gamma))
        if train_gamma:
            self.log_gamma = nn.Parameter(log_gamma)
        else:
            self.register_buffer("log_gamma", log_gamma)

    @property
    def gamma(self) -> torch.Tensor:
        """The core's gain bound, a positive 0-d tensor."""
        return torch.exp(self.log_gamma)

    def input_matrix(self) -> torch.Tensor:
        """Return $W_{in}$ with $\\|W_{in}\\|_2 \\le 1$, ``(d_state, d_input)``."""
        return contraction(self.W_in)

    def output_matrix(self) -> torch.Tensor:
        """Return $W_{out}$ with $\\|W_{out}\\|_2 \\le 1$, ``(d_output, d_state)``."""
        return contraction(self.W_out)

    def _selector_input(self, u: torch.Tensor) -> tuple[torch.Tensor, nn.Linear]:
        """Return the input of the selector's last linear map (``u`` for a one-map selector) and that map.

        The hidden layers of a larger selector run in the parameters' dtype.
        """
        if isinstance(self.selector, nn.Linear):
            return u, self.selector
        return self.selector[:-1](u.to(self.W_in.dtype)), self.selector[-1]

    def _select(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the selector's three outputs, each ``(batch, time, d_state)`` and contiguous."""
        hidden, last = self._selector_input(u)
        return _selector_outputs(hidden, last.weight, last.bias)

    def triples(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the normalised $(a, b, c)$, each ``(batch, time, d_state)``, for ``u`` of shape ``(batch, time, d_input)``.

        Every $[[a, b], [c, 0]]$ has spectral norm at most 1, and $a \\ge 0$.
        """
        dtype = recurrence_dtype(u.dtype)  # decays never in half precision
        delta, raw_b, raw_c = (part.to(dtype) for part in self._select(u.to(self.W_in.dtype)))
        rate = nn.functional.softplus(delta + self.decay_bias.to(dtype)) * nn.functional.softplus(
            self.decay_rate.to(dtype)
        )
        return normalise_triple(torch.exp(-rate), torch.tanh(raw_b), torch.tanh(raw_c))

    def _run_matrices(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Return $\\gamma W_{in}$ and $W_{out}$ in ``dtype``."""
        return (self.input_matrix().to(dtype) * self.gamma.to(dtype), self.output_matrix().to(dtype))

    def run(self, u: torch.Tensor, x0: torch.Tensor, backend: ScanBackend) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute ``(y, states)``; see :meth:`nssm_core.CoreBase.forward`."""
        dtype = recurrence_dtype(u.dtype)
        hidden, last = self._selector_input(u)
        w_in, w_out = parameter_transform(self, ("run", dtype), lambda: self._run_matrices(dtype))
        # The node forms the selector outputs and W_in u itself, block by block, and saves only its inputs.
        a, drives, c = _TVFront.apply(
            hidden.to(dtype), u.to(dtype), last.weight.to(dtype), last.bias.to(dtype), w_in,
            self.decay_bias.to(dtype), self.decay_rate.to(dtype), 1.0 + triple_margin(dtype),
        )
        states = backend.diagonal(a, drives, x0)
        y = _GatedOutput.apply(c, states[:, :-1], w_out)
        return y, states

    def bound(self) -> torch.Tensor:
        """Return ``gamma`` as a differentiable 0-d float64 tensor."""
        return self.gamma.to(torch.float64)


def build_tv(spec: CoreSpec, options: TVOptions) -> TV:
    """Registry factory of the ``tv`` core."""
    gamma = options.block_gamma or initial_block_gamma(spec.model_gamma, spec.n_layers)
    return TV(
        spec.d_input, spec.d_output, spec.d_state, gamma=gamma, train_gamma=options.train_gamma,
        rmin=options.rmin, rmax=options.rmax, d_selector=options.d_selector,
        selector_scale=options.selector_scale,
    )
