"""The ``assoc`` and ``scan`` backends.

``assoc`` is a log-depth associative scan in pure PyTorch.

Pairs $(a, b)$ standing for the affine map $x \\mapsto a x + b$ combine as
$(a_1, b_1) \\cdot (a_2, b_2) = (a_2 a_1, a_2 b_1 + b_2)$. The inclusive scan
doubles its reach at each of $\\lceil \\log_2 T \\rceil$ levels (Hillis and
Steele, 1986). Only products of decays are formed, never $a^{-t}$, so long
sequences with small decays neither overflow nor lose accuracy.

Dense time-invariant recurrences use a chunked scan instead (see
:meth:`ParallelScanBackend.dense`), because pairs of dense matrices would
store a ``(d, d)`` matrix per time step.

``scan``, the default mode, runs each structure on the fastest correct method
measured on CPU. Diagonal recurrences use the chunked scan of
:mod:`._chunked`, whose custom backward pass supports first-order gradients
only. Dense recurrences use the chunked dense scan below.
"""

from __future__ import annotations

import torch
from einops import rearrange

from nssm_core import RecurrenceStructure

from ._chunked import chunked_diagonal_scan

__all__ = ["DefaultScanBackend", "ParallelScanBackend"]


class ParallelScanBackend:
    """Log-depth parallel prefix scan of diagonal recurrences and chunked scan of dense ones.

    A prefix scan of dense pairs would store a ``(d, d)`` matrix per time
    step. Because a dense ``A`` is time-invariant, :meth:`dense` instead
    shares the powers of ``A`` across time steps.

    Attributes:
        dense_chunk: Chunk length of the dense scan. Longer chunks mean fewer
            sequential carry steps but more work per step.
    """

    name = "assoc"
    dense_chunk = 64
    structures = frozenset({RecurrenceStructure.DIAGONAL, RecurrenceStructure.DENSE})

    def diagonal(self, a: torch.Tensor, b: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Evaluate $x_{t+1} = a_t x_t + b_t$; see :class:`nssm_core.ScanBackend`."""
        steps = b.shape[1]
        # Time-invariant decays are kept with a batch axis of 1 and broadcast.
        decays = a if a.ndim == 3 else a.expand(1, steps, a.shape[-1])

        # Fold the initial state into the first drive: x_1 = a_0 x_0 + b_0.
        first = decays[:, :1] * x0.unsqueeze(1) + b[:, :1]
        drives = torch.cat([first, b[:, 1:]], dim=1)

        offset = 1
        while offset < steps:
            shifted_drives = decays[:, offset:] * drives[:, :-offset] + drives[:, offset:]
            shifted_decays = decays[:, offset:] * decays[:, :-offset]
            drives = torch.cat([drives[:, :offset], shifted_drives], dim=1)
            decays = torch.cat([decays[:, :offset], shifted_decays], dim=1)
            offset *= 2
        return torch.cat([x0.unsqueeze(1), drives], dim=1)

    def dense(self, a: torch.Tensor, b: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Evaluate $x_{t+1} = A x_t + b_t$ by a chunked scan; see :class:`nssm_core.ScanBackend`.

        The sequence is cut into chunks of ``dense_chunk`` steps. Within a
        chunk, the zero-state response $h_k = \\sum_{j \\le k} A^{k-j} b_j$
        comes from a log-depth scan that shares one power $A^{2^l}$ per level
        across all positions. The chunks' initial states follow sequentially
        from $x_{(c+1)L} = A^L x_{cL} + h_{L-1}$, and every state is then
        $x_{cL+k+1} = h_k + A^{k+1} x_{cL}$ with the powers $A^1 .. A^L$.
        Only positive powers of $A$ are formed.
        """
        steps = b.shape[1]
        chunk = min(self.dense_chunk, steps)
        chunks = -(-steps // chunk)
        a = a.to(b.dtype)

        # 1. Zero-state response inside each chunk, (batch, chunks, chunk, d).
        padded = torch.nn.functional.pad(b, (0, 0, 0, chunks * chunk - steps))
        responses = rearrange(padded, "b (c l) d -> b c l d", l=chunk)
        level_power = a
        offset = 1
        while offset < chunk:
            shifted = responses[:, :, :-offset] @ level_power.transpose(-1, -2)
            responses = torch.cat([responses[:, :, :offset], responses[:, :, offset:] + shifted], dim=2)
            level_power = level_power @ level_power
            offset *= 2

        # 2. Powers A^1 .. A^chunk by doubling, (chunk, d, d).
        powers = a.unsqueeze(0)
        while powers.shape[0] < chunk:
            powers = torch.cat([powers, powers[-1] @ powers], dim=0)
        powers = powers[:chunk]

        # 3. Initial state of every chunk, carried sequentially, (batch, chunks, d).
        carry_matrix = powers[-1].transpose(-1, -2)
        carries = [x0]
        for index in range(chunks - 1):
            carries.append(carries[-1] @ carry_matrix + responses[:, index, -1])
        initial = torch.stack(carries, dim=1)

        # 4. Add the free response of each chunk's initial state.
        states = responses + torch.einsum("kij,bcj->bcki", powers, initial)
        states = rearrange(states, "b c l d -> b (c l) d")[:, :steps]
        return torch.cat([x0.unsqueeze(1), states], dim=1)


class DefaultScanBackend(ParallelScanBackend):
    """The ``scan`` mode: the chunked diagonal scan and the chunked dense scan.

    At 4096 steps its diagonal forward-plus-backward took 8.7 ms against
    81 ms for the log-depth scan (one CPU thread; ``benchmarks/`` and
    ``docs/benchmarks.md``). Use ``mode="assoc"`` for double backward.
    """

    name = "scan"

    def diagonal(self, a: torch.Tensor, b: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Evaluate $x_{t+1} = a_t x_t + b_t$ with the chunked scan; see :class:`nssm_core.ScanBackend`."""
        return chunked_diagonal_scan(a, b, x0)
