"""The ``loop`` backend: one time step after the other, the reference every other backend is checked against."""

from __future__ import annotations

import torch

from nssm_core import RecurrenceStructure

__all__ = ["LoopBackend"]


class LoopBackend:
    """Sequential evaluation of linear recurrences, $O(T)$ steps of Python."""

    name = "loop"
    structures = frozenset({RecurrenceStructure.DIAGONAL, RecurrenceStructure.DENSE})

    def diagonal(self, a: torch.Tensor, b: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Evaluate $x_{t+1} = a_t x_t + b_t$; see :class:`nssm_core.ScanBackend`."""
        time_varying = a.ndim == 3
        state = x0
        states = [state]
        for t in range(b.shape[1]):
            decay = a[:, t] if time_varying else a
            state = decay * state + b[:, t]
            states.append(state)
        return torch.stack(states, dim=1)

    def dense(self, a: torch.Tensor, b: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Evaluate $x_{t+1} = A x_t + b_t$; see :class:`nssm_core.ScanBackend`."""
        transposed = a.transpose(-1, -2)
        state = x0
        states = [state]
        for t in range(b.shape[1]):
            state = state @ transposed + b[:, t]
            states.append(state)
        return torch.stack(states, dim=1)
