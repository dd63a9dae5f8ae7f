"""Training checkpoints for ``--resume``: model, optimizer, scheduler and RNG state in one safetensors file.

Every tensor (weights, Adam moments, RNG states) is stored as a safetensors
tensor, and everything else (scheduler counters, learning rates, loss history)
as JSON in the file's metadata, so loading a checkpoint never unpickles or runs
code. One file contains the whole state, and it is written to a temporary file,
flushed to disk and renamed over the previous checkpoint, so a process killed
at any moment leaves either the old or the new checkpoint, never a mixture.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ._config import SSMConfig
from .checkpoint import FORMAT_NAME as MODEL_FORMAT_NAME
from .checkpoint import CheckpointError, save_tensors_atomically

__all__ = ["TRAIN_STATE_FORMAT", "TrainState", "check_resumable", "load_train_state", "save_train_state"]

TRAIN_STATE_FORMAT = "nssm-train-state"
TRAIN_STATE_VERSION = "1"

_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_ITEMS = "__items__"


@dataclass
class TrainState:
    """Everything needed to continue a training run exactly where it stopped.

    Attributes:
        step: Optimizer steps completed.
        config: The model's configuration.
        d_input: Input channels of the model.
        d_output: Output channels of the model.
        settings: Training settings that fix the run's trajectory (learning
            rate, schedule length, data fingerprint, ...); a resumed run must
            use the same.
        model: The model's ``state_dict``.
        optimizer: The optimizer's ``state_dict``.
        scheduler: The learning-rate scheduler's ``state_dict``.
        rng: Random generator states by name, one per process (``cpu/0``, ``cuda/1``, ...).
        progress: JSON-compatible history: losses, validation results, early-stopping counters.
        best_model: The ``state_dict`` with the best validation RMSE so far, if any.
        extra: JSON-compatible data kept with the run, such as normalisation statistics.
    """

    step: int
    config: SSMConfig
    d_input: int
    d_output: int
    settings: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, torch.Tensor] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)
    best_model: dict[str, torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Return a JSON-compatible skeleton of ``value``, moving its tensors into ``tensors`` under ``key``-based names."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(value, dict):
        return {_ITEMS: [[k, _encode(v, f"{key}/{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} at {key!r} in a training checkpoint")


def _decode(value: Any, tensors: dict[str, torch.Tensor], path: Path) -> Any:
    if isinstance(value, dict):
        if _TENSOR in value:
            name = value[_TENSOR]
            if name not in tensors:
                raise CheckpointError(f"{path} lacks the tensor {name!r}; the file is damaged")
            return tensors[name]
        if _TUPLE in value:
            return tuple(_decode(v, tensors, path) for v in value[_TUPLE])
        if _ITEMS in value:
            return {k: _decode(v, tensors, path) for k, v in value[_ITEMS]}
        raise CheckpointError(f"{path} contains an unknown entry {sorted(value)}; the file is damaged")
    if isinstance(value, list):
        return [_decode(v, tensors, path) for v in value]
    return value


def save_train_state(path: str | os.PathLike[str], state: TrainState) -> Path:
    """Write ``state`` to ``path`` atomically: temporary file, flush to disk, rename.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = {
        "model": _encode(state.model, "model", tensors),
        "optimizer": _encode(state.optimizer, "optimizer", tensors),
        "scheduler": _encode(state.scheduler, "scheduler", tensors),
        "rng": _encode(state.rng, "rng", tensors),
        "best_model": _encode(state.best_model, "best_model", tensors),
    }
    metadata = {
        "format": TRAIN_STATE_FORMAT,
        "format_version": TRAIN_STATE_VERSION,
        "step": str(state.step),
        "d_input": str(state.d_input),
        "d_output": str(state.d_output),
        "config": state.config.model_dump_json(),
        "settings": json.dumps(state.settings),
        "progress": json.dumps(state.progress),
        "extra": json.dumps(state.extra),
        "state": json.dumps(skeleton),
    }
    save_tensors_atomically(path, tensors, metadata)
    return path


def load_train_state(path: str | os.PathLike[str]) -> TrainState:
    """Read a checkpoint written by :func:`save_train_state`; nothing on disk changes.

    Raises:
        FileNotFoundError: If the file does not exist.
        CheckpointError: If the file is truncated, not a safetensors file, an nssm
            model file rather than a training checkpoint, or its contents are damaged.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({error}); it may be truncated by an interrupted copy"
        ) from error

    kind = metadata.get("format")
    if kind == MODEL_FORMAT_NAME:
        raise CheckpointError(
            f"{path} is an nssm model file (weights only) without optimizer state; --resume needs the "
            f"checkpoint.safetensors that --checkpoint-every writes"
        )
    if kind != TRAIN_STATE_FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not an nssm training checkpoint (format {kind!r})")
    if metadata.get("format_version") != TRAIN_STATE_VERSION:
        raise CheckpointError(
            f"{path} has training-checkpoint version {metadata.get('format_version')!r}; "
            f"this nssm reads version {TRAIN_STATE_VERSION}"
        )
    try:
        skeleton = json.loads(metadata["state"])
        state = TrainState(
            step=int(metadata["step"]),
            config=SSMConfig.model_validate_json(metadata["config"]),
            d_input=int(metadata["d_input"]),
            d_output=int(metadata["d_output"]),
            settings=json.loads(metadata["settings"]),
            model=_decode(skeleton["model"], tensors, path),
            optimizer=_decode(skeleton["optimizer"], tensors, path),
            scheduler=_decode(skeleton["scheduler"], tensors, path),
            rng=_decode(skeleton["rng"], tensors, path),
            progress=json.loads(metadata["progress"]),
            best_model=_decode(skeleton["best_model"], tensors, path),
            extra=json.loads(metadata["extra"]),
        )
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} has invalid training-checkpoint metadata: {error}") from error
    return state


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{key} (checkpoint {saved.get(key)!r}, this run {current.get(key)!r})"
            for key in keys if saved.get(key) != current.get(key)]


def check_resumable(
    state: TrainState, path: Path, config: SSMConfig, d_input: int, d_output: int, settings: dict[str, Any]
) -> None:
    """Check that ``state`` belongs to a run with this model configuration, data and settings.

    Raises:
        CheckpointError: Naming every field that differs.
    """
    model_differences = _differences(
        {"d_input": state.d_input, "d_output": state.d_output, **state.config.model_dump()},
        {"d_input": d_input, "d_output": d_output, **config.model_dump()},
    )
    if model_differences:
        raise CheckpointError(
            f"{path} was written for another model configuration; differing fields: "
            f"{'; '.join(model_differences)}. Pass the same model options, or start a new run in another --out"
        )
    setting_differences = _differences(state.settings, settings)
    if setting_differences:
        raise CheckpointError(
            f"{path} was written by a run with other training settings or data; differing: "
            f"{'; '.join(setting_differences)}. Pass the same options, or start a new run in another --out"
        )
