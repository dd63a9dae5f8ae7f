"""The ``scan`` backend: a log-depth associative scan in pure PyTorch.

Pairs $(a, b)$ standing for the affine map $x \\mapsto a x + b$ combine as
$(a_1, b_1) \\cdot (a_2, b_2) = (a_2 a_1, a_2 b_1 + b_2)$. The inclusive scan
doubles its reach at each of $\\lceil \\log_2 T \\rceil$ levels (Hillis and
Steele, 1986). Only products of decays are formed, never $a^{-t}$, so long
sequences with small decays neither overflow nor lose accuracy.
"""

from __future__ import annotations

import logging

import torch

from nssm_core import RecurrenceStructure

from ._loop import LoopBackend

__all__ = ["ParallelScanBackend"]

logger = logging.getLogger("nssm")


class ParallelScanBackend:
    """Log-depth parallel prefix scan of diagonal recurrences.

    Dense recurrences are evaluated by the sequential reference, because a
    prefix scan of dense pairs would store a ``(d, d)`` matrix per time step.
    """

    name = "scan"
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
        """Evaluate $x_{t+1} = A x_t + b_t$ by the sequential reference."""
        if not getattr(self, "_dense_fallback_logged", False):
            logger.info("scan backend: dense recurrences run on the sequential 'loop' reference")
            self._dense_fallback_logged = True
        return LoopBackend().dense(a, b, x0)
