"""Lipschitz-bounded static layers: ``LMLP`` (sandwich layers) and ``TLIP`` (GroupSort network).

``LMLP`` follows the sandwich layers of R. Wang and I. R. Manchester, "Direct
Parameterization of Lipschitz-Bounded Deep Networks", ICML 2023. ``TLIP``
stacks norm-bounded linear maps and GroupSort activations (pairs of channels
sorted), as in C. Anil, J. Lucas and R. Grosse, "Sorting Out Lipschitz
Function Approximation", ICML 2019.

Both layers are $L$-Lipschitz with $L$ = ``scale``: every piece is
1-Lipschitz in exact arithmetic, and an input scaling $\\sqrt{L}$ and an
output scaling $\\sqrt{L}$ give the bound. The weight normalisations use an
exact SVD (:func:`~nssm_core.spectral_norm_upper`), never power iteration.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from nssm_core import (
    CertificateKind,
    LayerBase,
    LayerSpec,
    contraction,
    parameter_transform,
    safety_margin,
    spectral_norm_upper,
)

__all__ = [
    "LMLP",
    "TLIP",
    "LMLPOptions",
    "SandwichLayer",
    "TLIPOptions",
    "cayley",
    "centered_group_sort",
    "centered_sort_halves",
    "group_sort",
    "halves_order",
]

_SQRT2 = math.sqrt(2.0)


class _LipschitzOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scale: float = Field(1.0, gt=0.0, description="Lipschitz bound of the layer.")
    centered: bool = Field(
        True,
        description="Subtract the layer's value at 0 so that f(0) = 0, making the Lipschitz bound a gain bound too.",
    )


class LMLPOptions(_LipschitzOptions):
    """Options of the ``LMLP`` layer."""


class TLIPOptions(_LipschitzOptions):
    """Options of the ``TLIP`` layer."""


def _check_sizes(d_hidden: int, nl_layers: int, scale: float) -> None:
    for name, value in (("d_hidden", d_hidden), ("nl_layers", nl_layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")


def _scaled_bound(scale: float, reference: torch.Tensor) -> torch.Tensor:
    """Return ``scale`` as a 0-d float64 tensor, inflated to cover the rounding of two $\\sqrt{L}$ factors."""
    return torch.tensor(scale * (1.0 + safety_margin(reference.dtype)), dtype=torch.float64, device=reference.device)


def cayley(weight: torch.Tensor, n: int) -> torch.Tensor:
    """Map a free matrix to a matrix with orthonormal columns by the Cayley transform.

    With ``weight`` $= [U; V]$, $U$ of shape ``(n, n)`` and $V$ of shape
    ``(m, n)``, $M = U - U^T + V^T V$ and the result is
    $[(I + M)^{-1} (I - M);\\ -2 V (I + M)^{-1}]$. $I + M$ is invertible for
    every $U, V$ because $x^T (I + M) x = \\|x\\|^2 + \\|V x\\|^2 > 0$.

    Args:
        weight: Free matrix of shape ``(n + m, n)``.
        n: Number of columns.

    Returns:
        A matrix of shape ``(n + m, n)`` whose columns are orthonormal up to round-off.
    """
    if weight.ndim != 2 or weight.shape[1] != n or weight.shape[0] < n:
        raise ValueError(f"cayley expects a matrix of shape (n + m, n) with n={n}, got {tuple(weight.shape)}")
    u, v = weight[:n], weight[n:]
    identity = torch.eye(n, dtype=weight.dtype, device=weight.device)
    m = u - u.T + v.T @ v
    top = torch.linalg.solve(identity + m, identity - m)
    # -2 V (I + M)^{-1} = -2 ((I + M)^{-T} V^T)^T
    bottom = -2.0 * torch.linalg.solve((identity + m).T, v.T).T
    return torch.cat([top, bottom], dim=0)


def group_sort(x: torch.Tensor) -> torch.Tensor:
    """Sort each pair of channels ``(2i, 2i + 1)`` of ``x`` in ascending order.

    Sorting is a 1-Lipschitz map in the Euclidean norm. With an odd number of
    channels the last one is passed through unchanged, which keeps the map
    1-Lipschitz.
    """
    width = x.shape[-1]
    paired = width - width % 2
    pairs = rearrange(x[..., :paired], "... (group two) -> ... group two", two=2)
    sorted_pairs = rearrange(torch.sort(pairs, dim=-1).values, "... group two -> ... (group two)")
    if paired == width:
        return sorted_pairs
    return torch.cat([sorted_pairs, x[..., paired:]], dim=-1)


def centered_group_sort(z: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Compute ``group_sort(z + bias) - group_sort(bias)`` without cancellation.

    For a pair $(p, q)$ of ``z`` with biases $(c, d)$ and $\\delta = d - c$,
    the two outputs equal
    $\\min(p + \\mathrm{relu}(-\\delta), q + \\mathrm{relu}(\\delta))$ and
    $\\max(p - \\mathrm{relu}(\\delta), q - \\mathrm{relu}(-\\delta))$.
    Forming the difference directly subtracts two values of the size of the
    bias, so a small ``z`` loses its digits to round-off (in float32 a layer
    with unit biases then overshoots its bound near 0). This form is exactly
    0 at ``z = 0`` in floating point and rounds relative to the size of the
    result. With an odd number of channels the last one is ``z`` itself.

    It runs as the autograd node of :func:`centered_sort_halves`, which
    saves a boolean mask per pair instead of the intermediate tensors, on
    the channels reordered into halves and back.

    Args:
        z: Pre-activations without bias, ``(..., width)``.
        bias: Bias, ``(width,)``.
    """
    order = halves_order(z.shape[-1]).to(z.device)
    return centered_sort_halves(z[..., order], bias)[..., torch.argsort(order)]


def halves_order(width: int) -> torch.Tensor:
    """Return the channel order that puts pair members first, then pair partners: ``0, 2, .., 1, 3, ..``.

    An odd last channel, which :func:`group_sort` passes through, stays last.
    Indexing the rows of a weight with it makes a product return the pairs
    as two contiguous halves, the layout :func:`centered_sort_halves` reads.
    """
    paired = width - width % 2
    return torch.tensor([*range(0, paired, 2), *range(1, paired, 2), *range(paired, width)], dtype=torch.long)


def centered_sort_halves(z: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """:func:`centered_group_sort` on channels stored as halves, ``z[..., halves_order(width)]``.

    The result is in the same layout: the lower member of pair $i$ at
    channel $i$, the higher at channel $n + i$ ($n$ pairs), an odd last
    channel last. ``bias`` keeps the interleaved order of
    :func:`centered_group_sort`. Both members of every pair are then read
    and written as contiguous runs of channels. For a float32 ``(8, 2048, 32)``
    input on 2 CPU threads this took 0.32 ms, against 0.58 ms for a sort of
    the interleaved pairs with strided reads and an interleaving copy.

    Args:
        z: Pre-activations without bias in the halves layout, ``(..., width)``.
        bias: Bias in the interleaved order, ``(width,)``.
    """
    width = z.shape[-1]
    paired = width - width % 2
    if paired == 0:
        return z
    bias_pairs = rearrange(bias[:paired], "(group two) -> group two", two=2)
    delta = (bias_pairs[:, 1] - bias_pairs[:, 0]).to(z.dtype)
    result, _ = _CenteredHalfSort.apply(z, torch.relu(-delta), torch.relu(delta))
    return result


def _writes_into_views() -> bool:
    """Return whether results may be written into slices with ``out=``: not under functorch transforms or compile."""
    return not torch.compiler.is_compiling() and not torch._C._are_functorch_transforms_active()


class _CenteredHalfSort(torch.autograd.Function):
    """The pair sort of :func:`centered_sort_halves` with shifts ``r1 = relu(-delta)``, ``r2 = relu(delta)``.

    With $n$ pairs, $p$ is ``z[..., :n]`` and $q$ is ``z[..., n:2n]``. The
    outputs $\\min(p + r_1, q + r_2)$ and $\\max(p - r_2, q - r_1)$ are
    written to the same two halves, and an odd last channel is copied. Only
    the mask $s = (p + r_1 \\le q + r_2)$ is saved: where it is true, low came
    from $p + r_1$ and high from $q - r_1$, elsewhere from $q + r_2$ and
    $p - r_2$, and the gradient is routed accordingly.
    """

    generate_vmap_rule = True  # torch.func transforms (jacrev, vmap) work through the node

    @staticmethod
    def forward(z: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        n = r1.shape[-1]
        p, q, rest = z[..., :n], z[..., n : 2 * n], z[..., 2 * n :]
        first_candidate, second_candidate = p + r1, q + r2
        # In exact arithmetic p + r1 <= q + r2 is true exactly when p - r2 <= q - r1, so one mask routes both outputs.
        first = first_candidate <= second_candidate
        if not _writes_into_views():
            low = torch.minimum(first_candidate, second_candidate)
            return torch.cat([low, torch.maximum(p - r2, q - r1), rest], dim=-1), first
        out = torch.empty_like(z)
        torch.minimum(first_candidate, second_candidate, out=out[..., :n])
        torch.maximum(torch.sub(p, r2, out=first_candidate), torch.sub(q, r1, out=second_candidate), out=out[..., n : 2 * n])
        if rest.shape[-1]:
            out[..., 2 * n :] = rest
        return out, first

    @staticmethod
    def setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: tuple) -> None:  # type: ignore[override]
        _, first = output
        ctx.mark_non_differentiable(first)
        ctx.save_for_backward(first)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor, _grad_first: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        (first,) = ctx.saved_tensors
        n = first.shape[-1]
        grad_low, grad_high, grad_rest = grad[..., :n], grad[..., n : 2 * n], grad[..., 2 * n :]
        if _writes_into_views():
            grad_z = torch.empty_like(grad)
            torch.where(first, grad_low, grad_high, out=grad_z[..., :n])
            torch.where(first, grad_high, grad_low, out=grad_z[..., n : 2 * n])
            if grad_rest.shape[-1]:
                grad_z[..., 2 * n :] = grad_rest
        else:
            routed = [torch.where(first, grad_low, grad_high), torch.where(first, grad_high, grad_low)]
            grad_z = torch.cat([*routed, grad_rest], dim=-1)
        difference = grad_low - grad_high
        leading = tuple(range(difference.ndim - 1))
        # Each shift's gradient is summed on its own: subtracting two rounded sums loses digits in bf16.
        zeros = torch.zeros_like(difference)
        grad_r1 = torch.where(first, difference, zeros).sum(dim=leading)
        grad_r2 = torch.where(first, zeros, difference).sum(dim=leading)
        return grad_z, grad_r1, grad_r2


class SandwichLayer(nn.Module):
    """One 1-Lipschitz sandwich layer ``(..., d_in) -> (..., d_out)``.

    With activation: $h' = \\sqrt{2} A^T \\Psi \\mathrm{relu}(\\sqrt{2} \\Psi^{-1} B h + b)$.
    Without: the linear sandwich layer $h' = 2 A^T B h$. Here $[A^T; B^T]$,
    with $A^T$ of shape ``(d_out, d_out)`` and $B^T$ of shape ``(d_in, d_out)``,
    is the Cayley transform of a free matrix divided by
    $\\max(1, \\|\\cdot\\|_2)$, so $A A^T + B B^T \\preceq I$, and
    $\\Psi = \\mathrm{diag}(e^{\\tanh(d)})$ is positive.

    Why it is 1-Lipschitz: with $v = \\sqrt{2} \\Psi^{-1} B h + b$ and
    $w = \\mathrm{relu}(v)$, ReLU has slopes in $[0, 1]$, so the increments
    satisfy $\\Delta w^T \\Lambda (\\Delta v - \\Delta w) \\ge 0$ for
    $\\Lambda = 2 \\Psi^2$. With $\\Delta z = \\Psi \\Delta w$ this gives
    $\\|\\Delta h\\|^2 - \\|\\Delta h'\\|^2 \\ge \\|\\Delta h - \\sqrt{2} B^T \\Delta z\\|^2 \\ge 0$.

    ReLU is positively homogeneous, so
    $\\Psi \\mathrm{relu}(\\Psi^{-1} v + b) = \\mathrm{relu}(v + \\Psi b)$. The
    layer computes the right-hand side, which avoids the round-off of
    $\\Psi \\Psi^{-1}$. For the same reason $\\Psi$ only rescales the free
    bias $b$, so bounding it to $(e^{-1}, e)$ costs no expressiveness and keeps
    it finite for any raw value.

    Args:
        d_in: Input channels.
        d_out: Output channels.
        activation: ``False`` builds the linear sandwich layer (no $\\Psi$, no bias).
    """

    def __init__(self, d_in: int, d_out: int, activation: bool = True) -> None:
        super().__init__()
        self.d_in = d_in
        self.d_out = d_out
        self.activation = activation
        # Free matrix [U; V] of the Cayley transform. At initialisation V^T V has expectation (d_in / d_out) I.
        self.weight = nn.Parameter(torch.randn(d_out + d_in, d_out) / math.sqrt(d_out))
        if activation:
            self.psi_raw = nn.Parameter(torch.zeros(d_out))
            bound = 1.0 / math.sqrt(d_in)
            self.bias = nn.Parameter(torch.empty(d_out).uniform_(-bound, bound))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the normalised $(A^T, B^T)$, shapes ``(d_out, d_out)`` and ``(d_in, d_out)``.

        The Cayley transform is computed in float64. Its spectral norm is 1 up
        to round-off, so the divisor $\\max(1, \\sigma)$ only removes that
        round-off, and it is left out of the gradient.
        """
        dtype = self.weight.dtype
        q = cayley(self.weight.to(torch.float64), self.d_out)
        sigma = spectral_norm_upper(q.detach()) * (1.0 + safety_margin(dtype))
        q = (q / torch.clamp(sigma, min=1.0)).to(dtype)
        return q[: self.d_out], q[self.d_out :]

    def psi(self) -> torch.Tensor:
        """Return the diagonal of $\\Psi$, ``(d_out,)``, in $(e^{-1}, e)$."""
        return torch.exp(torch.tanh(self.psi_raw))

    def forward(self, h: torch.Tensor, centered: bool = True) -> torch.Tensor:
        """Apply the layer to ``h`` of shape ``(..., d_in)``.

        Args:
            h: Input.
            centered: Subtract the value at ``h = 0``, so the layer maps 0 to 0.

        Returns:
            The output, ``(..., d_out)``.
        """
        a_t, b_t = (factor.to(h.dtype) for factor in self.factors())
        if not self.activation:
            return 2.0 * (h @ b_t) @ a_t.T
        shift = (self.psi() * self.bias).to(h.dtype)
        v = _SQRT2 * (h @ b_t)
        if centered:
            # relu(v + shift) - relu(shift) equals max(v - relu(-shift), -relu(shift)), which is
            # exactly 0 at v = 0 and does not cancel two values of the size of the shift.
            z = torch.maximum(v - torch.relu(-shift), -torch.relu(shift))
        else:
            z = torch.relu(v + shift)
        return _SQRT2 * (z @ a_t.T)


class LMLP(LayerBase):
    """Lipschitz MLP made of sandwich layers, with Lipschitz bound ``scale``.

    $f(x) = \\sqrt{L}\\, S_{out}(S_k(\\cdots S_1(\\sqrt{L} x)))$: ``nl_layers``
    ReLU sandwich layers (:class:`SandwichLayer`) of width ``d_hidden`` and a
    linear sandwich layer back to ``d_model``. Each piece is 1-Lipschitz, so
    $\\|f(x_1) - f(x_2)\\| \\le L \\|x_1 - x_2\\|$: an incremental bound.

    Biases and $f(0)$: the biases make the uncentered map send 0 to a
    non-zero constant. A Lipschitz bound then bounds output differences but
    not the output itself, since a zero input gives a non-zero output. Inside
    a ``DeepSSM`` with an incremental core this matters: the model's
    certificate is ``incremental``, which the certificate algebra also treats
    as a plain gain bound, and that is only true when every block maps 0 to 0. With ``centered=True`` (the
    default) each sandwich layer subtracts its value at 0, a constant that
    leaves the Lipschitz constant unchanged, so $f(0) = 0$ and
    $\\|f(x)\\| \\le L \\|x\\|$ is true as well. With ``centered=False`` only output
    differences are bounded, which no certificate kind expresses, so the layer
    declares no certificate and a ``DeepSSM`` with ``gamma`` rejects it.

    Args:
        d_model: Input and output channels.
        d_hidden: Width of the hidden sandwich layers.
        nl_layers: Number of hidden (ReLU) sandwich layers.
        scale: Lipschitz bound $L$.
        centered: Make every sandwich layer map 0 to 0.
    """

    certificate_kind = CertificateKind.INCREMENTAL

    def __init__(
        self, d_model: int, d_hidden: int, nl_layers: int = 1, scale: float = 1.0, centered: bool = True
    ) -> None:
        super().__init__(d_model)
        _check_sizes(d_hidden, nl_layers, scale)
        self.d_hidden = d_hidden
        self.scale = float(scale)
        self.centered = centered
        if not centered:
            # f(0) != 0 bounds output differences only, and an incremental certificate also
            # promises ||f(x)|| <= L ||x||, so an uncentered layer certifies nothing.
            self.certificate_kind = CertificateKind.NONE
        widths = [d_model] + [d_hidden] * nl_layers
        self.hidden = nn.ModuleList(SandwichLayer(widths[i], widths[i + 1]) for i in range(nl_layers))
        self.output = SandwichLayer(d_hidden, d_model, activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``x`` of shape ``(..., d_model)``."""
        root = math.sqrt(self.scale)
        h = x * root
        for layer in self.hidden:
            h = layer(h, centered=self.centered)
        return self.output(h) * root

    def bound(self) -> torch.Tensor:
        """Return the Lipschitz bound ``scale`` as a 0-d float64 tensor (with a round-off margin)."""
        return _scaled_bound(self.scale, self.output.weight)


class TLIP(LayerBase):
    """GroupSort network of norm-bounded linear maps, with Lipschitz bound ``scale``.

    $f(x) = \\sqrt{L}\\, W_{k+1} g(\\cdots g(W_1 \\sqrt{L} x + b_1) \\cdots)$
    where $g$ sorts each pair of channels (:func:`group_sort`) and every
    $W_i$ is divided by $\\max(1, \\|W_i\\|_2)$, its spectral norm from an
    exact SVD. Every piece is 1-Lipschitz, so the layer has the incremental
    bound $L$.

    Biases make the uncentered map send 0 to a non-zero constant, with the
    same consequence as for :class:`LMLP`: only output differences are
    bounded. With ``centered=True`` (the default) each hidden layer subtracts
    its value at 0, $g(b_i)$, so $f(0) = 0$ and the bound is a gain bound too.
    With ``centered=False`` the layer declares no certificate.

    Args:
        d_model: Input and output channels.
        d_hidden: Width of the hidden layers. With an odd width the last
            channel is not sorted (passed through).
        nl_layers: Number of hidden layers (linear map and GroupSort).
        scale: Lipschitz bound $L$.
        centered: Make every hidden layer map 0 to 0.
    """

    certificate_kind = CertificateKind.INCREMENTAL

    def __init__(
        self, d_model: int, d_hidden: int, nl_layers: int = 1, scale: float = 1.0, centered: bool = True
    ) -> None:
        super().__init__(d_model)
        _check_sizes(d_hidden, nl_layers, scale)
        self.d_hidden = d_hidden
        self.scale = float(scale)
        self.centered = centered
        if not centered:
            # f(0) != 0 bounds output differences only, and an incremental certificate also
            # promises ||f(x)|| <= L ||x||, so an uncentered layer certifies nothing.
            self.certificate_kind = CertificateKind.NONE
        widths = [d_model] + [d_hidden] * nl_layers + [d_model]
        self.weights = nn.ParameterList()
        for d_in, d_out in zip(widths[:-1], widths[1:]):
            weight = torch.empty(d_out, d_in)
            nn.init.orthogonal_(weight)  # spectral norm 1, so the normalisation starts inactive
            self.weights.append(nn.Parameter(weight))
        self.biases = nn.ParameterList(
            nn.Parameter(torch.empty(d_out).uniform_(-1.0 / math.sqrt(d_in), 1.0 / math.sqrt(d_in)))
            for d_in, d_out in zip(widths[:-2], widths[1:-1])
        )

    def normalised_weights(self) -> list[torch.Tensor]:
        """Return every $W_i / \\max(1, \\|W_i\\|_2)$, in signal order."""
        return [contraction(weight) for weight in self.weights]

    def _forward_weights(self, dtype: torch.dtype) -> list[torch.Tensor]:
        """Return the normalised weights in ``dtype``, the first and last multiplied by $\\sqrt{L}$.

        With ``centered=True`` the hidden channels are reordered by
        :func:`halves_order` (rows of the weight before a sort, columns of the
        weight after it), so the sorts run on the contiguous halves of
        :func:`centered_sort_halves`. A permutation of hidden channels does
        not change the map or any spectral norm.
        """
        root = math.sqrt(self.scale)
        weights = [w.to(dtype) for w in self.normalised_weights()]
        # The two factors sqrt(scale) are folded into the first and last weights, so that no scaled
        # copy of the activations is made or saved for the backward pass.
        weights[0] = weights[0] * root
        weights[-1] = weights[-1] * root
        if self.centered:
            order = halves_order(self.d_hidden).to(weights[0].device)
            # Rows: the channels a sort reads. Columns: the channels the previous sort wrote.
            for index in range(len(weights) - 1):
                weights[index] = weights[index][order]
            for index in range(1, len(weights)):
                weights[index] = weights[index][:, order]
        return weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``x`` of shape ``(..., d_model)``."""
        weights = parameter_transform(self, ("forward", x.dtype), lambda: self._forward_weights(x.dtype))
        *hidden_weights, output_weight = weights
        h = x
        for weight, bias in zip(hidden_weights, self.biases):
            bias = bias.to(x.dtype)
            if self.centered:
                h = centered_sort_halves(h @ weight.T, bias)
            else:
                h = group_sort(h @ weight.T + bias)
        return h @ output_weight.T

    def bound(self) -> torch.Tensor:
        """Return the Lipschitz bound ``scale`` as a 0-d float64 tensor (with a round-off margin)."""
        return _scaled_bound(self.scale, self.weights[0])


def build_lmlp(spec: LayerSpec, options: LMLPOptions) -> LMLP:
    """Registry factory of the ``LMLP`` layer."""
    return LMLP(spec.d_model, spec.d_hidden, spec.nl_layers, options.scale, options.centered)


def build_tlip(spec: LayerSpec, options: TLIPOptions) -> TLIP:
    """Registry factory of the ``TLIP`` layer."""
    return TLIP(spec.d_model, spec.d_hidden, spec.nl_layers, options.scale, options.centered)
