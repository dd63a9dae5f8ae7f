"""Base classes and input checks shared by the model and by plugin authors.

Subclassing :class:`CoreBase` or :class:`LayerBase` is optional: a plugin
only has to follow the protocols in :mod:`nssm_core`. The base classes add
the input, state and mode checks every core needs, so the error messages are
the same across plugins.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import nn

from ._certificate import Certificate, CertificateKind
from ._protocols import PluginKind, RecurrenceStructure, ScanBackend
from ._registry import get_registry

__all__ = ["CoreBase", "LayerBase", "check_input", "check_state", "recurrence_dtype", "resolve_backend"]


def recurrence_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the real dtype in which a core evaluates its recurrence for inputs of ``dtype``.

    float64 stays float64; everything else, bfloat16 and float16 under
    autocast included, becomes float32, so decays, normalisers and states
    never run in half precision.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_input(u: object, d_input: int, *, name: str = "u", check_finite: bool = True) -> torch.Tensor:
    """Validate an input sequence and promote it to ``(batch, time, d_input)``.

    Inputs of shape ``(time, d_input)`` or ``(d_input,)`` get leading batch
    (and time) axes of size 1. ``check_finite=False`` skips the scan for NaN
    and inf, a full pass over ``u``, for callers that have checked it already.
    Inside ``torch.compile`` the scan is always skipped, so the compiled graph
    has no data-dependent branch.

    Raises:
        TypeError: If ``u`` is not a floating-point tensor.
        ValueError: If its shape is wrong, its time axis is empty, or it
            contains NaN or inf.
    """
    if not isinstance(u, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, time, {d_input}), got {type(u).__name__}")
    if not u.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {u.dtype}; convert it with {name}.float()")
    passed_shape = tuple(u.shape)  # error messages show the shape the caller passed, not the promoted one
    if u.ndim == 1:
        u = u.reshape(1, 1, -1)
    elif u.ndim == 2:
        u = u.unsqueeze(0)
    elif u.ndim != 3:
        raise ValueError(
            f"{name} must have shape (batch, time, {d_input}), (time, {d_input}) or ({d_input},), "
            f"got {u.ndim}-D shape {passed_shape}"
        )
    if u.shape[-1] != d_input:
        raise ValueError(
            f"{name} has {u.shape[-1]} channels in its last dimension (shape {passed_shape}), "
            f"but the model expects d_input={d_input}"
        )
    if u.shape[1] == 0:
        raise ValueError(f"{name} has an empty time axis (shape {passed_shape}); pass at least one time step")
    # Under torch.compile the check is skipped: reading a tensor's value would split the compiled graph.
    if check_finite and not torch.compiler.is_compiling() and not bool(torch.isfinite(u).all()):
        bad = int((~torch.isfinite(u)).sum())
        raise ValueError(f"{name} contains {bad} NaN or inf values; clean or mask the data before calling the model")
    return u


def check_state(
    state: object, batch: int, d_state: int, *, dtype: torch.dtype, device: torch.device, name: str = "state"
) -> torch.Tensor:
    """Validate an initial state and broadcast it to ``(batch, d_state)``.

    Raises:
        TypeError: If ``state`` is not a tensor.
        ValueError: If its shape does not fit ``(batch, d_state)`` or it is not finite.
    """
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape ({batch}, {d_state}), got {type(state).__name__}")
    if state.ndim == 1:
        state = state.unsqueeze(0)
    if state.ndim != 2 or state.shape[-1] != d_state or state.shape[0] not in (1, batch):
        raise ValueError(
            f"{name} has shape {tuple(state.shape)}, expected ({batch}, {d_state}) for a batch of {batch} "
            f"(or (1, {d_state}) / ({d_state},) to share one state)"
        )
    if not bool(torch.isfinite(state).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return state.to(dtype=dtype, device=device).expand(batch, d_state)


def resolve_backend(mode: str | ScanBackend, structure: RecurrenceStructure) -> ScanBackend:
    """Return the scan backend that ``mode`` names, checking it can evaluate ``structure``.

    Raises:
        ValueError: If no backend is called ``mode`` or it lacks ``structure``.
    """
    registry = get_registry()
    if isinstance(mode, str):
        registry.get(PluginKind.BACKEND, mode)  # raises with the registered names
        backend = registry.backend(mode)
    elif isinstance(mode, ScanBackend):
        backend = mode
    else:
        raise TypeError(f"mode must be a backend name such as 'scan' or 'loop', got {mode!r}")
    if structure not in backend.structures:
        able = [name for name in registry.names(PluginKind.BACKEND) if structure in registry.backend(name).structures]
        raise ValueError(
            f"scan backend {backend.name!r} cannot evaluate {structure.value!r} recurrences; "
            f"use mode= one of {able}"
        )
    return backend


class CoreBase(nn.Module):
    """Convenience base class for dynamic cores.

    Subclasses set ``structure`` and ``certificate_kind`` (and, where a
    storage function proves one, ``initial_state_gain``: a constant $c$ with
    $\\|y\\| \\le \\gamma \\|u\\| + c \\|x_0\\|$), and implement :meth:`run`
    and :meth:`bound`. :meth:`forward` validates the input,
    the state and the mode before calling :meth:`run`.
    """

    structure: RecurrenceStructure = RecurrenceStructure.DIAGONAL
    certificate_kind: CertificateKind = CertificateKind.NONE
    complex_state: bool = False
    # A constant c with ||y|| <= bound * ||u|| + c * ||x_0|| for every input, when the core has one.
    initial_state_gain: float | None = None

    def __init__(self, d_input: int, d_output: int, d_state: int) -> None:
        super().__init__()
        for field_name, value in (("d_input", d_input), ("d_output", d_output), ("d_state", d_state)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{field_name} must be a positive integer, got {value!r}")
        self.d_input = d_input
        self.d_output = d_output
        self.d_state = d_state

    def state_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """Return the state dtype for inputs of ``dtype``: :func:`recurrence_dtype`, complex for complex-state cores."""
        real = recurrence_dtype(dtype)
        if not self.complex_state:
            return real
        return torch.complex128 if real == torch.float64 else torch.complex64

    def initial_state(
        self, batch: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Return the zero state, ``(batch, d_state)``."""
        return torch.zeros(batch, self.d_state, dtype=self.state_dtype(dtype), device=device)

    def forward(
        self,
        u: torch.Tensor,
        state: torch.Tensor | None = None,
        mode: str | ScanBackend = "scan",
        *,
        check_finite: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the core over a sequence.

        Args:
            u: Input, ``(batch, time, d_input)``; ``(time, d_input)`` and
                ``(d_input,)`` are promoted.
            state: Initial state ``(batch, d_state)``; zero when ``None``.
            mode: Name of a registered scan backend, or a backend object.
            check_finite: Check ``u`` for NaN and inf. :class:`~nssm_core.DeepSSM`
                checks its input once and passes ``False`` to its blocks' cores.

        Returns:
            ``(y, states)``: output ``(batch, time, d_output)`` and states
            ``x_0 .. x_T`` of shape ``(batch, time + 1, d_state)``.
        """
        u = check_input(u, self.d_input, check_finite=check_finite)
        backend = resolve_backend(mode, self.structure)
        batch = u.shape[0]
        if state is None:
            x0 = self.initial_state(batch, dtype=u.dtype, device=u.device)
        else:
            x0 = check_state(state, batch, self.d_state, dtype=self.state_dtype(u.dtype), device=u.device)
        return self.run(u, x0, backend)

    @abstractmethod
    def run(
        self, u: torch.Tensor, x0: torch.Tensor, backend: ScanBackend
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute ``(y, states)`` from a validated input and initial state."""

    def bound(self) -> torch.Tensor | None:
        """Return the certified bound as a differentiable 0-d float64 tensor, or ``None``."""
        return None

    def certificate(self) -> Certificate:
        """Return this core's certificate."""
        with torch.no_grad():
            value = self.bound()
        if value is None or self.certificate_kind is CertificateKind.NONE or not bool(torch.isfinite(value)):
            # A NaN or inf bound (from NaN or inf parameters) certifies nothing.
            return Certificate.uncertified()
        if not all(bool(torch.isfinite(tensor).all()) for tensor in self.state_dict().values()):
            # Finite bound, non-finite weights: the outputs are NaN or inf, so nothing is certified.
            return Certificate.uncertified()
        return Certificate(float(value), self.certificate_kind)


class LayerBase(nn.Module):
    """Convenience base class for static layers.

    Subclasses set ``certificate_kind`` and implement ``forward`` and, for
    bounded layers, :meth:`bound`.
    """

    certificate_kind: CertificateKind = CertificateKind.NONE

    def __init__(self, d_model: int) -> None:
        super().__init__()
        if not isinstance(d_model, int) or d_model <= 0:
            raise ValueError(f"d_model must be a positive integer, got {d_model!r}")
        self.d_model = d_model

    def bound(self) -> torch.Tensor | None:
        """Return the certified bound as a differentiable 0-d float64 tensor, or ``None``."""
        return None

    def certificate(self) -> Certificate:
        """Return this layer's certificate."""
        with torch.no_grad():
            value = self.bound()
        if value is None or self.certificate_kind is CertificateKind.NONE or not bool(torch.isfinite(value)):
            # A NaN or inf bound (from NaN or inf parameters) certifies nothing.
            return Certificate.uncertified()
        if not all(bool(torch.isfinite(tensor).all()) for tensor in self.state_dict().values()):
            # Finite bound, non-finite weights: the outputs are NaN or inf, so nothing is certified.
            return Certificate.uncertified()
        return Certificate(float(value), self.certificate_kind)
