"""Standalone models with the older ``neural-ssm`` names: ``PureLRUR`` and ``SimpleRNN``.

Both are called like a :class:`~nssm_core.DeepSSM`, ``(y, states) = model(u, mode=...)``,
on inputs of shape ``(batch, time, channels)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from nssm_core import Certificate, PluginKind, ScanBackend, check_input, get_registry

from ._l2ru import L2RU
from ._lru import LRU

__all__ = ["PureLRUR", "SimpleRNN"]

logger = logging.getLogger("nssm")

_PURE_CORES = ("l2ru", "lru")


class PureLRUR(nn.Module):
    """A bare ``l2ru`` or ``lru`` core of width ``n``: no encoder, no blocks, no decoder.

    Args:
        n: Input, output and state width (``lru``: number of complex modes).
        gamma: Gain bound of the ``l2ru`` core (1.0 when ``None``). ``lru``
            has no bound and takes ``gamma=None``.
        param: ``"l2ru"`` (certified, incremental) or ``"lru"`` (uncertified).

    Raises:
        ValueError: If ``param`` is neither core, or ``gamma`` is set for ``lru``.

    Example:
        >>> import torch
        >>> from nssm_plugins import PureLRUR
        >>> model = PureLRUR(4, gamma=0.5)
        >>> y, states = model(torch.randn(2, 30, 4), mode="scan")
        >>> tuple(y.shape), tuple(states.shape)
        ((2, 30, 4), (2, 31, 4))
    """

    def __init__(self, n: int, gamma: float | None = None, param: str = "l2ru") -> None:
        super().__init__()
        if param == "l2ru":
            self.core: L2RU | LRU = L2RU(n, gamma=1.0 if gamma is None else gamma)
        elif param == "lru":
            if gamma is not None:
                raise ValueError(
                    f"param='lru' has no prescribed gain, got gamma={gamma!r}; pass gamma=None or param='l2ru'"
                )
            self.core = LRU(n, n, n)
        else:
            raise ValueError(f"param must be one of {list(_PURE_CORES)}, got {param!r}")
        self.param = param
        self.n = n

    def forward(
        self, u: torch.Tensor, state: torch.Tensor | None = None, mode: str | ScanBackend = "scan"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the core on ``u`` of shape ``(batch, time, n)``.

        Returns:
            ``(y, states)``: output ``(batch, time, n)`` and the core's states
            ``x_0 .. x_T``, ``(batch, time + 1, n)`` (complex for ``lru``).
        """
        return self.core(u, state=state, mode=mode)

    def certificate(self) -> Certificate:
        """Return the core's certificate (uncertified for ``lru``)."""
        return self.core.certificate()


class SimpleRNN(nn.Module):
    """Baseline: a ``torch.nn.RNN`` and a linear readout, called like a :class:`~nssm_core.DeepSSM`.

    No gain is certified.

    Args:
        d_input: Input channels.
        d_output: Output channels.
        d_hidden: Hidden state width.
        n_layers: Stacked recurrent layers.
        nonlinearity: ``"tanh"`` or ``"relu"``.
        dropout: Dropout between recurrent layers (``torch.nn.RNN`` semantics).
    """

    def __init__(
        self,
        d_input: int,
        d_output: int,
        d_hidden: int = 32,
        n_layers: int = 1,
        nonlinearity: str = "tanh",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        sizes = (("d_input", d_input), ("d_output", d_output), ("d_hidden", d_hidden), ("n_layers", n_layers))
        for name, value in sizes:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.d_input = d_input
        self.d_output = d_output
        self.rnn = nn.RNN(
            d_input, d_hidden, num_layers=n_layers, nonlinearity=nonlinearity, dropout=dropout, batch_first=True
        )
        self.readout = nn.Linear(d_hidden, d_output)
        self._mode_logged = False

    def forward(
        self,
        u: torch.Tensor,
        state: Sequence[torch.Tensor] | None = None,
        mode: str | ScanBackend = "scan",
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the RNN over ``u`` of shape ``(batch, time, d_input)``.

        Args:
            u: Input; ``(time, d_input)`` and ``(d_input,)`` are promoted.
            state: One hidden state per layer, each ``(batch, d_hidden)``; zeros when ``None``.
            mode: A registered backend name, checked but not used: ``torch.nn.RNN``
                always runs its own sequential kernel.

        Returns:
            ``(y, states)``: output ``(batch, time, d_output)`` and a list with
            each layer's final hidden state ``(batch, d_hidden)``.
        """
        u = check_input(u, self.d_input)
        if isinstance(mode, str):
            get_registry().get(PluginKind.BACKEND, mode)  # raises with the registered names
        if not self._mode_logged:
            logger.info("SimpleRNN ignores mode=%r: torch.nn.RNN runs its own sequential kernel", mode)
            self._mode_logged = True
        hidden = None
        if state is not None:
            if len(state) != self.rnn.num_layers:
                raise ValueError(f"state must hold {self.rnn.num_layers} tensors (one per layer), got {len(state)}")
            hidden = torch.stack([s.to(u.dtype) for s in state], dim=0)
        out, final = self.rnn(u, hidden)
        return self.readout(out), list(final.unbind(0))

    @staticmethod
    def certificate() -> Certificate:
        """Return the certificate of an uncertified model."""
        return Certificate.uncertified()

