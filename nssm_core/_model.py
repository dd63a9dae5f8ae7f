"""Model assembly: the residual block (SSL) and ``DeepSSM``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ._base import CoreBase, check_input
from ._certificate import (
    CertificateFactor,
    CertificateKind,
    ModelCertificate,
    safety_margin,
    spectral_norm_upper,
)
from ._config import SSMConfig
from ._protocols import CoreSpec, DynamicCore, LayerSpec, PluginKind, ScanBackend, StaticLayer
from ._registry import get_registry
from ._transforms import reuse_parameter_transforms

__all__ = ["SSL", "DeepSSM", "build_core", "build_layer"]


def build_core(config: SSMConfig, spec: CoreSpec) -> DynamicCore:
    """Build the dynamic core named by ``config.param`` with its validated options."""
    entry = get_registry().get(PluginKind.CORE, config.param)
    return entry.factory(spec, config.core_plugin_options())


def build_layer(config: SSMConfig, spec: LayerSpec) -> StaticLayer:
    """Build the static layer named by ``config.ff`` with its validated options."""
    entry = get_registry().get(PluginKind.LAYER, config.ff)
    return entry.factory(spec, config.layer_plugin_options())


class SSL(nn.Module):
    """Residual block ``x + dropout(layer(core(x)))``.

    Its certified bound is $1 + \\gamma_{core} L_{layer}$ and its kind is the
    weaker of the two parts' kinds (the identity path is incremental).

    Args:
        core: A dynamic core mapping ``d_model`` channels to ``d_model`` channels.
        layer: A static layer on ``d_model`` channels.
        dropout: Dropout probability after the layer (identity in eval mode).
    """

    def __init__(self, core: DynamicCore, layer: StaticLayer, dropout: float = 0.0) -> None:
        super().__init__()
        self.core = core
        self.layer = layer
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        state: torch.Tensor | None = None,
        mode: str | ScanBackend = "scan",
        *,
        check_finite: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the block to ``x`` of shape ``(batch, time, d_model)``.

        ``check_finite=False`` lets a core derived from :class:`~nssm_core.CoreBase`
        skip its scan of ``x`` for NaN and inf (:class:`DeepSSM` checks its input once).

        Returns:
            ``(output, states)`` with the core's states ``(batch, time + 1, d_state)``.
        """
        if isinstance(self.core, CoreBase):
            core_out, states = self.core(x, state=state, mode=mode, check_finite=check_finite)
        else:
            core_out, states = self.core(x, state=state, mode=mode)
        return x + self.dropout(self.layer(core_out)), states

    @property
    def certificate_kind(self) -> CertificateKind:
        """Kind of the block's certificate."""
        return CertificateKind.weakest([self.core.certificate_kind, self.layer.certificate_kind])

    def bound(self) -> torch.Tensor | None:
        """Return $1 + \\gamma_{core} L_{layer}$ as a differentiable float64 tensor, or ``None``."""
        if self.certificate_kind is CertificateKind.NONE:
            return None
        core_bound = self.core.bound()
        layer_bound = self.layer.bound()
        if core_bound is None or layer_bound is None:
            return None
        return 1.0 + core_bound * layer_bound


class DeepSSM(nn.Module):
    """Deep state-space model: linear encoder, ``n_layers`` residual blocks, linear decoder.

    With ``gamma`` set, the decoder is scaled by
    $s = \\gamma / (\\sigma(E)\\,\\sigma(D) \\prod_i b_i)$ at every call, where
    $b_i = 1 + \\gamma_i L_i$ are the block bounds, so the model's L2 gain (or
    Lipschitz constant, for incremental certificates) is at most ``gamma``
    whatever the trained parameters. A certificate is a statement about eval
    mode, where dropout is the identity, and about the normalised signals the
    model receives.

    Args:
        d_input: Input channels.
        d_output: Output channels.
        config: The configuration; keyword ``fields`` override its values.
        **fields: :class:`~nssm_core.SSMConfig` fields, used alone or on top of ``config``.

    Example:
        >>> import torch
        >>> from nssm_core import DeepSSM
        >>> model = DeepSSM(1, 1, d_model=8, d_state=8, n_layers=2, param="l2n", ff="LGLU", gamma=2.0)
        >>> y, states = model(torch.randn(4, 50, 1), mode="scan")
        >>> tuple(y.shape), len(states)
        ((4, 50, 1), 2)
    """

    def __init__(self, d_input: int, d_output: int, config: SSMConfig | None = None, **fields: Any) -> None:
        super().__init__()
        for name, value in (("d_input", d_input), ("d_output", d_output)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if config is None:
            config = SSMConfig(**fields)
        elif not isinstance(config, SSMConfig):
            raise TypeError(f"config must be an SSMConfig, got {type(config).__name__}")
        elif fields:
            config = SSMConfig.model_validate({**config.model_dump(), **fields})
        self.config = config
        self.d_input = d_input
        self.d_output = d_output

        d_model = config.d_model
        self.encoder = nn.Linear(d_input, d_model, bias=False)
        core_spec = CoreSpec(
            d_input=d_model,
            d_output=d_model,
            d_state=config.d_state,
            n_layers=config.n_layers,
            model_gamma=config.gamma,
        )
        layer_spec = LayerSpec(
            d_model=d_model, d_hidden=config.d_hidden, nl_layers=config.nl_layers, dropout=config.dropout
        )
        self.blocks = nn.ModuleList(
            SSL(build_core(config, core_spec), build_layer(config, layer_spec), config.dropout)
            for _ in range(config.n_layers)
        )
        self.decoder = nn.Linear(d_model, d_output, bias=False)
        self._carried_states: list[torch.Tensor] | None = None
        self.initial_states: nn.ParameterList | None = None
        if config.learn_initial_state:
            complex_cores = [block.core for block in self.blocks if getattr(block.core, "complex_state", False)]
            if complex_cores:
                raise ValueError(
                    f"learn_initial_state=True needs cores with real states, but {config.param!r} has complex "
                    "states; choose a real-state core such as 'l2n', 'l2nt' or 'tv', or set learn_initial_state=False"
                )
            self.initial_states = nn.ParameterList(
                nn.Parameter(torch.zeros(block.core.d_state)) for block in self.blocks
            )
        if config.gamma is not None:
            # The registry entries passed the config check, but an instance may still opt out
            # (for example a layer built with options that void its bound).
            first = self.blocks[0]
            for part, module, name in (("core", first.core, config.param), ("layer", first.layer, config.ff)):
                if module.certificate_kind is CertificateKind.NONE:
                    raise ValueError(
                        f"gamma={config.gamma} asks for a certified model, but the {part} {name!r} built with "
                        f"these options has no certified bound; change its options or set gamma=None"
                    )

    @property
    def gamma(self) -> float | None:
        """The prescribed gain, or ``None``."""
        return self.config.gamma

    @property
    def certificate_kind(self) -> CertificateKind:
        """Kind of the model's certificate."""
        return CertificateKind.weakest(block.certificate_kind for block in self.blocks)

    def _natural_bound(self) -> torch.Tensor | None:
        """Return $\\sigma(E) \\sigma(D) \\prod_i b_i$ in float64 with gradients, or ``None``."""
        if self.certificate_kind is CertificateKind.NONE:
            return None
        total = spectral_norm_upper(self.encoder.weight) * spectral_norm_upper(self.decoder.weight)
        for block in self.blocks:
            block_bound = block.bound()
            if block_bound is None:
                return None
            total = total * block_bound
        return total

    def decoder_scale(self) -> torch.Tensor | None:
        """Return the factor applied to the decoder so the bound equals ``gamma``, or ``None`` without gamma.

        The factor is computed in float64, shrunk by a round-off margin for the
        parameters' dtype and rounded towards zero when cast, so the realised
        model stays within ``gamma``.
        """
        if self.gamma is None:
            return None
        natural = self._natural_bound()
        if natural is None:
            raise RuntimeError("gamma is set but a part of the model has no bound; the config check should prevent this")
        dtype = self.decoder.weight.dtype
        scale = self.gamma / natural.clamp_min(1e-300) * (1.0 - safety_margin(dtype))
        rounded = scale.to(dtype)
        # Round towards zero: a float32 cast can land one unit above the float64 value.
        # Written without a Python branch on the value, so torch.compile does not break the graph here.
        too_big = rounded.detach().double() > scale.detach()
        below = torch.nextafter(rounded.detach(), torch.zeros_like(rounded))
        return rounded - torch.where(too_big, rounded.detach() - below, torch.zeros_like(rounded))

    def zero_states(
        self, batch: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> list[torch.Tensor]:
        """Return one zero state per block, ``(batch, d_state)`` each, to run the model from rest."""
        return [block.core.initial_state(batch, dtype=dtype, device=device) for block in self.blocks]

    def reset(self) -> None:
        """Forget the states carried from the previous call (used with ``reset_state=False``)."""
        self._carried_states = None

    def __getstate__(self) -> dict[str, Any]:
        """Return the attributes for ``copy.deepcopy`` and pickling, with the carried states detached.

        The states carried from the last call may belong to its autograd
        graph, and only graph leaves can be copied.
        """
        state = self.__dict__.copy()
        if state.get("_carried_states") is not None:
            state["_carried_states"] = [s.detach() for s in state["_carried_states"]]
        return state

    def forward(
        self,
        u: torch.Tensor,
        state: Sequence[torch.Tensor | None] | None = None,
        mode: str | ScanBackend = "scan",
        reset_state: bool = True,
        detach_state: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the model over an input sequence.

        Args:
            u: Input ``(batch, time, d_input)``; ``(time, d_input)`` and
                ``(d_input,)`` are promoted to 3-D.
            state: One initial state per block, each ``(batch, d_state)``, for
                example the ``states`` of a previous call. When ``None``: the
                learned initial states with ``learn_initial_state=True``, else zero states.
            mode: Name of a registered scan backend (``"scan"``, ``"loop"``, ...).
            reset_state: With ``state=None``, ``True`` starts from zero states and
                ``False`` continues from the final states of the previous call.
            detach_state: Detach the returned (and carried) states from the graph.

        Returns:
            ``(y, states)``: output ``(batch, time, d_output)`` and a list with
            each block's final state ``(batch, d_state)``.

        Raises:
            TypeError: If ``u`` or a state is not a tensor or ``mode`` is not a name.
            ValueError: If a shape is wrong, the input is not finite, or ``mode``
                names no registered backend.
        """
        u = check_input(u, self.d_input)
        parameter_dtype = self.encoder.weight.dtype
        if u.dtype != parameter_dtype:
            raise TypeError(
                f"u has dtype {u.dtype} but the model's parameters are {parameter_dtype}; convert the input "
                f"with u.to({parameter_dtype}) or the model with model.to({u.dtype})"
            )
        if not isinstance(mode, (str, ScanBackend)):
            raise TypeError(f"mode must be a backend name such as 'scan' or 'loop', got {mode!r}")
        if state is None and not reset_state and self._carried_states is not None:
            if self._carried_states[0].shape[0] == u.shape[0]:
                state = self._carried_states
        if state is None and self.initial_states is not None:
            state = [initial.to(u.dtype).expand(u.shape[0], -1) for initial in self.initial_states]
        if state is None:
            state = [None] * len(self.blocks)
        elif isinstance(state, torch.Tensor) or len(state) != len(self.blocks):
            got = "a single tensor" if isinstance(state, torch.Tensor) else f"{len(state)} states"
            raise ValueError(f"state must be a list of {len(self.blocks)} tensors (one per block), got {got}")

        scale = self.decoder_scale()
        weight = self.decoder.weight if scale is None else self.decoder.weight * scale
        length = self._time_block_length(u)
        # Each block's parameter transforms (normalised weights, decays) are computed once per call,
        # not once per time block.
        with reuse_parameter_transforms():
            if length is None:
                y, final_states = self._run_blocks(u, state, mode, weight, keep_graph=True)
            elif torch.is_grad_enabled() and self.recompute_time_blocks and _can_recompute():
                y, final_states = _RecomputedTimeBlocks.run(self, u, list(state), mode, weight, length)
            else:
                # A long sequence runs in time blocks with the states carried between them: every
                # temporary is then small enough to stay in cache and to reuse freed memory.
                keep_graph = torch.is_grad_enabled()
                outputs = []
                for start in range(0, u.shape[1], length):
                    block = u[:, start : start + length]
                    part, state = self._run_blocks(block, state, mode, weight, keep_graph=keep_graph)
                    outputs.append(part)
                y, final_states = torch.cat(outputs, dim=1), state
        if detach_state:
            final_states = [s.detach() for s in final_states]
        self._carried_states = final_states
        return y, final_states

    _DEFAULT_BLOCK_ELEMENTS = 1 << 19
    _inference_block_elements: int | None = _DEFAULT_BLOCK_ELEMENTS
    _training_block_elements: int | None = _DEFAULT_BLOCK_ELEMENTS
    _recompute_time_blocks: bool = False

    @property
    def inference_block_elements(self) -> int | None:
        """Values per time block (batch x steps x d_model) when :meth:`forward` runs without autograd.

        A positive integer ($2^{19}$ by default), or ``None`` to run every
        sequence whole. Blocks are at least 256 steps long, and a sequence
        shorter than two blocks runs whole.

        Raises:
            ValueError: When set to anything else.
        """
        return self._inference_block_elements

    @inference_block_elements.setter
    def inference_block_elements(self, value: int | None) -> None:
        self._inference_block_elements = _check_block_elements("inference_block_elements", value)

    @property
    def training_block_elements(self) -> int | None:
        """Values per time block (batch x steps x d_model) when :meth:`forward` runs with autograd.

        A positive integer ($2^{19}$ by default), or ``None`` to run every
        sequence whole. A block has
        ``max(256, training_block_elements // (batch * d_model))`` steps, and a
        sequence shorter than two blocks runs whole. Without dropout (or in
        eval mode) the outputs and gradients equal those of the whole sequence
        up to round-off. Dropout masks are drawn block by block, so they differ
        from those of a one-pass call.

        Raises:
            ValueError: When set to anything else.
        """
        return self._training_block_elements

    @training_block_elements.setter
    def training_block_elements(self, value: int | None) -> None:
        self._training_block_elements = _check_block_elements("training_block_elements", value)

    @property
    def recompute_time_blocks(self) -> bool:
        """With autograd, keep only the states at the time-block boundaries and recompute each block in backward.

        ``False`` by default. Memory then no longer grows with the sequence
        length beyond the input and output, at the cost of a second forward
        pass. It takes effect when the sequence is split into time blocks (see
        :attr:`training_block_elements`), and under neither ``torch.compile``
        nor ``torch.func`` transforms. It gives first-order gradients only:
        differentiating the gradients again (``create_graph=True``, for
        example for a gradient penalty) raises an error.

        Raises:
            ValueError: When set to anything but ``True`` or ``False``.
        """
        return self._recompute_time_blocks

    @recompute_time_blocks.setter
    def recompute_time_blocks(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"recompute_time_blocks must be True or False, got {value!r}")
        self._recompute_time_blocks = value

    def _time_block_length(self, u: torch.Tensor) -> int | None:
        """Return the time-block length for this call, or ``None`` to run the sequence whole."""
        elements = self.training_block_elements if torch.is_grad_enabled() else self.inference_block_elements
        if elements is None:
            return None
        length = max(256, elements // max(1, u.shape[0] * self.encoder.out_features))
        return length if u.shape[1] >= 2 * length else None

    def _run_blocks(
        self,
        u: torch.Tensor,
        state: Sequence[torch.Tensor | None],
        mode: str | ScanBackend,
        decoder_weight: torch.Tensor,
        *,
        keep_graph: bool,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run encoder, blocks and decoder on validated inputs; return ``(y, final states)``."""
        x = self.encoder(u)
        final_states = []
        for block, block_state in zip(self.blocks, state):
            x, states = block(x, state=block_state, mode=mode, check_finite=False)
            # Without a graph, a copy of the last state lets the block's state sequence be freed.
            final_states.append(states[:, -1] if keep_graph else states[:, -1].clone())
        return torch.nn.functional.linear(x, decoder_weight), final_states

    def step(
        self,
        u: torch.Tensor,
        state: Sequence[torch.Tensor | None] | None = None,
        mode: str | ScanBackend = "loop",
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Advance the model by one time step or a short chunk, for streaming inference.

        The outputs equal those of one :meth:`forward` call on the whole
        sequence, and the cost of a call depends only on the length of ``u``,
        not on how many steps came before.

        Args:
            u: One step ``(batch, d_input)`` or a chunk ``(batch, time, d_input)``.
            state: The per-block states returned by the previous call. When ``None``: the
                learned initial states with ``learn_initial_state=True``, else zero states.
            mode: Scan backend; the sequential ``"loop"`` suits single steps.

        Returns:
            ``(y, state)``: output ``(batch, d_output)`` for a single step or
            ``(batch, time, d_output)`` for a chunk, and the new per-block states.
        """
        if isinstance(u, torch.Tensor) and u.ndim == 2:
            y, states = self.forward(u.unsqueeze(1), state=state, mode=mode)
            return y[:, 0], states
        if isinstance(u, torch.Tensor) and u.ndim != 3:
            raise ValueError(
                f"step expects u of shape (batch, {self.d_input}) or (batch, time, {self.d_input}), "
                f"got {u.ndim}-D shape {tuple(u.shape)}"
            )
        return self.forward(u, state=state, mode=mode)

    @torch.no_grad()
    def certificate(self) -> ModelCertificate:
        """Return the model's certificate report: bound, kind and the factors it is made of."""
        factors = [self._factor("encoder", spectral_norm_upper(self.encoder.weight), CertificateKind.INCREMENTAL)]
        notes: list[str] = []
        for index, block in enumerate(self.blocks):
            core_cert = block.core.certificate()
            layer_cert = block.layer.certificate()
            factors.append(CertificateFactor(f"block {index} core", core_cert.bound, core_cert.kind.value))
            factors.append(CertificateFactor(f"block {index} layer", layer_cert.bound, layer_cert.kind.value))
            for part, cert, declared in (
                ("core", core_cert, block.core.certificate_kind),
                ("layer", layer_cert, block.layer.certificate_kind),
            ):
                name = self.config.param if part == "core" else self.config.ff
                if declared is CertificateKind.NONE:
                    notes.append(f"block {index} {part} {name!r} has no certified bound")
                elif not cert.certified:
                    notes.append(f"block {index} {part} {name!r}: bound is NaN or inf (invalid parameters)")
        factors.append(self._factor("decoder", spectral_norm_upper(self.decoder.weight), CertificateKind.INCREMENTAL))
        scale = self.decoder_scale()
        if scale is not None:
            factors.append(self._factor("decoder scale", scale.double().abs(), CertificateKind.INCREMENTAL))

        kind = self.certificate_kind
        natural = self._natural_bound()
        bound: float | None = None
        # A bound read from a few parameters (such as a core's gamma) can look valid while other
        # weights are NaN or inf, and such a model's outputs are not bounded by anything.
        invalid = [name for name, tensor in self.state_dict().items() if not bool(torch.isfinite(tensor).all())]
        if invalid:
            notes.append(f"parameters with NaN or inf values: {', '.join(invalid)}")
            kind = CertificateKind.NONE
        if kind is not CertificateKind.NONE and natural is not None:
            total = natural * (1.0 if scale is None else scale.double().abs())
            bound = float(total)
            if not math.isfinite(bound):
                notes.append("the bound is not finite: a parameter is NaN or inf")
                kind, bound = CertificateKind.NONE, None
        gains, transient = self._initial_state_terms(kind, scale, notes)
        return ModelCertificate(
            prescribed_gamma=self.gamma,
            bound=bound,
            kind=kind.value,
            factors=factors,
            notes=notes,
            initial_state_gains=gains,
            transient_bound=transient,
        )

    def _initial_state_terms(
        self, kind: CertificateKind, scale: torch.Tensor | None, notes: list[str]
    ) -> tuple[list[float] | None, float | None]:
        """Return the coefficients $c_i$ of the initial states and $\\sum_i c_i \\|x_{0,i}\\|$.

        Core $i$ gives $\\|\\text{core}(x)\\| \\le \\gamma_i \\|x\\| + g_i \\|x_{0,i}\\|$
        (``initial_state_gain``), its layer multiplies that by $L_i$ and the
        blocks after it by $b_j$, so
        $c_i = \\sigma(D)\\, s \\prod_{j > i} b_j \\, L_i \\, g_i$.
        """
        if self.initial_states is None or kind is CertificateKind.NONE:
            return None, None
        free_gains = [getattr(block.core, "initial_state_gain", None) for block in self.blocks]
        if any(gain is None for gain in free_gains):
            notes.append(f"core {self.config.param!r} declares no initial_state_gain, so the transient is unbounded")
            return None, None
        tail = spectral_norm_upper(self.decoder.weight) * (1.0 if scale is None else scale.double().abs())
        gains: list[float] = [0.0] * len(self.blocks)
        for index in reversed(range(len(self.blocks))):
            block = self.blocks[index]
            gains[index] = float(tail * block.layer.bound() * free_gains[index])
            tail = tail * block.bound()
        transient = sum(
            gain * float(torch.linalg.vector_norm(initial.double()))
            for gain, initial in zip(gains, self.initial_states)
        )
        return gains, transient

    @staticmethod
    def _factor(name: str, value: torch.Tensor, kind: CertificateKind) -> CertificateFactor:
        return CertificateFactor(name, float(value), kind.value)


def _check_block_elements(name: str, value: object) -> int | None:
    """Return ``value`` if it is a positive integer or ``None``.

    Raises:
        ValueError: Otherwise, naming the setting ``name`` and its default.
    """
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(
            f"{name} must be a positive integer (values per time block) or None (no time blocks), "
            f"got {value!r}; the default is {DeepSSM._DEFAULT_BLOCK_ELEMENTS}"
        )
    return value


def _can_recompute() -> bool:
    """Return whether the recomputing autograd node may run: not while compiling or under a functorch transform."""
    return not torch.compiler.is_compiling() and not torch._C._are_functorch_transforms_active()


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    """Return whether autocast is on for ``device_type`` and its dtype."""
    try:
        return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError):  # torch before 2.4 had per-device functions
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()


def _random_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return the CPU generator state and, for a CUDA device, that device's state."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


class _RecomputedTimeBlocks(torch.autograd.Function):
    """Run a :class:`DeepSSM` over time blocks without a graph, and rebuild one block's graph at a time in backward.

    The forward pass keeps the per-block states at every block boundary and
    the random-generator states (for dropout). The backward pass walks the
    blocks from last to first. It recomputes a block with autograd from its
    saved start states and takes the gradients for the block's output slice
    and its final states. The gradients of its start states go on to the
    previous block. ``torch.utils.checkpoint`` applied to each time block
    gives the same gradients. On the benchmark model (``l2n``, batch 8, 2 CPU
    threads) it was slower, 0.86 s against 0.76 s at 16,384 steps, and its
    peak memory at 65,536 steps was 1.4 GB against 0.55 GB.
    """

    @staticmethod
    def run(
        model: DeepSSM,
        u: torch.Tensor,
        state: list[torch.Tensor | None],
        mode: str | ScanBackend,
        decoder_weight: torch.Tensor,
        length: int,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return ``(y, final states)`` of ``model`` on ``u`` with memory independent of the length."""
        present = tuple(s is not None for s in state)
        params = tuple(p for p in model.parameters() if p.requires_grad)
        initial_states = [s for s in state if s is not None]
        y, *finals = _RecomputedTimeBlocks.apply(
            model, mode, length, present, u, decoder_weight, *initial_states, *params
        )
        return y, finals

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        model: DeepSSM,
        mode: str | ScanBackend,
        length: int,
        present: tuple[bool, ...],
        u: torch.Tensor,
        decoder_weight: torch.Tensor,
        *tensors: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        initial_states = iter(tensors[: sum(present)])
        state: list[torch.Tensor | None] = [next(initial_states) if p else None for p in present]
        starts, generators, outputs = [], [], []
        with reuse_parameter_transforms():
            for start in range(0, u.shape[1], length):
                starts.append([None if s is None else s.detach() for s in state])
                generators.append(_random_state(u.device))
                part, state = model._run_blocks(
                    u[:, start : start + length], state, mode, decoder_weight, keep_graph=False
                )
                outputs.append(part)
        ctx.model, ctx.mode, ctx.length, ctx.present = model, mode, length, present
        ctx.starts, ctx.generators = starts, generators
        # The backward pass recomputes under the same autocast setting, so bf16 blocks stay bf16.
        ctx.autocast = _autocast_state(u.device.type)
        ctx.params = tensors[sum(present) :]
        ctx.save_for_backward(u, decoder_weight, *ctx.params)
        ctx.set_materialize_grads(False)
        return (torch.cat(outputs, dim=1), *state)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor | None, *grad_finals: torch.Tensor | None) -> tuple[Any, ...]:
        u, decoder_weight, *_ = ctx.saved_tensors  # unpacking also checks that nothing was changed in place
        model, length, params = ctx.model, ctx.length, ctx.params
        want_u = ctx.needs_input_grad[4]
        grad_u = torch.zeros_like(u) if want_u else None
        grad_weight = torch.zeros_like(decoder_weight)
        grad_params: list[torch.Tensor | None] = [None] * len(params)
        grad_state: list[torch.Tensor | None] = list(grad_finals)
        devices = [u.device] if u.device.type == "cuda" else []
        for index in reversed(range(len(ctx.starts))):
            block = slice(index * length, (index + 1) * length)
            cpu_state, cuda_state = ctx.generators[index]
            enabled, dtype = ctx.autocast
            autocast = torch.autocast(u.device.type, dtype=dtype, enabled=enabled)
            with torch.enable_grad(), autocast, torch.random.fork_rng(devices=devices), reuse_parameter_transforms():
                torch.set_rng_state(cpu_state)
                if cuda_state is not None:
                    torch.cuda.set_rng_state(cuda_state, u.device)
                start_state = [None if s is None else s.detach().requires_grad_(True) for s in ctx.starts[index]]
                u_block = u[:, block].detach().requires_grad_(want_u)
                weight = decoder_weight.detach().requires_grad_(True)
                y, finals = model._run_blocks(u_block, start_state, ctx.mode, weight, keep_graph=True)
            outputs, grads = [], []
            if grad_y is not None:
                outputs.append(y)
                grads.append(grad_y[:, block])
            for final, grad in zip(finals, grad_state):
                if grad is not None:
                    outputs.append(final)
                    grads.append(grad)
            if not outputs:
                continue
            leaves = [s for s in start_state if s is not None]
            inputs = [weight, *leaves, *params] + ([u_block] if want_u else [])
            result = torch.autograd.grad(outputs, inputs, grads, allow_unused=True)
            grad_weight += result[0] if result[0] is not None else 0.0
            leaf_grads = iter(result[1 : 1 + len(leaves)])
            grad_state = [next(leaf_grads) if s is not None else None for s in start_state]
            for k, grad in enumerate(result[1 + len(leaves) : 1 + len(leaves) + len(params)]):
                if grad is not None:
                    grad_params[k] = grad if grad_params[k] is None else grad_params[k] + grad
            if want_u and result[-1] is not None:
                grad_u[:, block] = result[-1]
        initial = [g for g, p in zip(grad_state, ctx.present) if p]
        return (None, None, None, None, grad_u, grad_weight, *initial, *grad_params)
