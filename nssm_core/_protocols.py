"""Interfaces of the three plugin kinds: dynamic cores, static layers and scan backends.

Shapes are batch-first everywhere: inputs ``(batch, time, channels)`` and
states ``(batch, d_state)``. A core's trajectory of states is
``(batch, time + 1, d_state)`` and contains ``x_0 .. x_T``; the output ``y_t`` is
computed from ``x_t``, before the update to ``x_{t+1}``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from ._certificate import CertificateKind

__all__ = [
    "CoreSpec",
    "DynamicCore",
    "LTICore",
    "LayerSpec",
    "PluginKind",
    "RecurrenceStructure",
    "ScanBackend",
    "StaticLayer",
]


class PluginKind(str, enum.Enum):
    """The kinds of entry a plugin can register."""

    CORE = "core"
    LAYER = "layer"
    BACKEND = "backend"


class RecurrenceStructure(str, enum.Enum):
    """Linear recurrences that a dynamic core requests from a scan backend.

    * ``diagonal``: $x_{t+1} = a_t \\odot x_t + b_t$ with ``a`` either
      time-invariant of shape ``(d,)`` or time-varying of shape
      ``(batch, time, d)``, real or complex.
    * ``dense``: $x_{t+1} = A x_t + b_t$ with a time-invariant matrix ``A`` of
      shape ``(d, d)``.
    """

    DIAGONAL = "diagonal"
    DENSE = "dense"


@runtime_checkable
class ScanBackend(Protocol):
    """An algorithm that evaluates linear recurrences over time.

    Attributes:
        name: The registry name, also the ``mode=`` value that selects it.
        structures: The recurrence structures this backend implements.
    """

    name: str
    structures: frozenset[RecurrenceStructure]

    def diagonal(self, a: torch.Tensor, b: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Evaluate $x_{t+1} = a_t \\odot x_t + b_t$.

        Args:
            a: Decays, ``(d,)`` (time-invariant) or ``(batch, time, d)``.
            b: Drives, ``(batch, time, d)``.
            x0: Initial states, ``(batch, d)``.

        Returns:
            The states ``x_0 .. x_T``, ``(batch, time + 1, d)``.
        """
        ...

    def dense(self, a: torch.Tensor, b: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Evaluate $x_{t+1} = A x_t + b_t$ with a time-invariant ``A`` of shape ``(d, d)``.

        Args:
            a: State matrix, ``(d, d)``.
            b: Drives, ``(batch, time, d)``.
            x0: Initial states, ``(batch, d)``.

        Returns:
            The states ``x_0 .. x_T``, ``(batch, time + 1, d)``.
        """
        ...


@dataclass(frozen=True)
class CoreSpec:
    """Sizes and context a core factory receives from the model builder.

    Attributes:
        d_input: Input channels.
        d_output: Output channels.
        d_state: State width.
        n_layers: Number of blocks in the model that hosts the core (1 for a standalone core).
        model_gamma: The gain prescribed for the whole model, or ``None``. A core
            may use it to choose its initial gain.
    """

    d_input: int
    d_output: int
    d_state: int
    n_layers: int = 1
    model_gamma: float | None = None


@dataclass(frozen=True)
class LayerSpec:
    """Sizes a static-layer factory receives from the model builder.

    Attributes:
        d_model: Input and output channels.
        d_hidden: Hidden width for layers that have one.
        nl_layers: Number of hidden layers for layers that stack them.
        dropout: Dropout probability inside the layer, where it has dropout.
    """

    d_model: int
    d_hidden: int
    nl_layers: int = 1
    dropout: float = 0.0


@runtime_checkable
class DynamicCore(Protocol):
    """A recurrent linear or selective map ``(batch, time, d_input) -> (batch, time, d_output)``.

    Attributes:
        d_input: Input channels.
        d_output: Output channels.
        d_state: State width.
        structure: The recurrence the core requests from its scan backend.
        certificate_kind: What :meth:`bound` bounds.
    """

    d_input: int
    d_output: int
    d_state: int
    structure: RecurrenceStructure
    certificate_kind: CertificateKind

    def __call__(
        self,
        u: torch.Tensor,
        state: torch.Tensor | None = None,
        mode: str | ScanBackend = "scan",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the core on ``u`` of shape ``(batch, time, d_input)``.

        Returns:
            ``(y, states)`` with ``y`` of shape ``(batch, time, d_output)`` and
            ``states`` of shape ``(batch, time + 1, d_state)``.
        """
        ...

    def initial_state(
        self, batch: int, *, dtype: torch.dtype, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Return the zero state, ``(batch, d_state)`` (complex for complex-state cores)."""
        ...

    def bound(self) -> torch.Tensor | None:
        """Return the certified bound as a differentiable 0-d float64 tensor, or ``None``."""
        ...


@runtime_checkable
class LTICore(DynamicCore, Protocol):
    """A dynamic core that is a linear time-invariant system."""

    def lti_matrices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return a real float64 realisation ``(A, B, C, D)``: $x_{t+1} = A x_t + B u_t$, $y_t = C x_t + D u_t$.

        Complex-diagonal cores return the equivalent real system of twice the
        state width (real and imaginary parts stacked).
        """
        ...


@runtime_checkable
class StaticLayer(Protocol):
    """A memoryless map applied at every time step, ``(..., d_model) -> (..., d_model)``.

    Attributes:
        d_model: Input and output channels.
        certificate_kind: What :meth:`bound` bounds.
    """

    d_model: int
    certificate_kind: CertificateKind

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``x`` of shape ``(..., d_model)``."""
        ...

    def bound(self) -> torch.Tensor | None:
        """Return the certified bound as a differentiable 0-d float64 tensor, or ``None``."""
        ...
