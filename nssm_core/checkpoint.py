"""Model checkpoints: weights in safetensors with the config as JSON metadata.

A checkpoint is one ``.safetensors`` file. Its metadata contains the model's
:class:`~nssm_core.SSMConfig`, the input and output widths and any extra
JSON (for example normalisation statistics), so loading it never runs code.
Files are written to a temporary file and renamed, so a failure leaves any
earlier checkpoint intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._config import SSMConfig
from ._model import DeepSSM

__all__ = [
    "CheckpointError",
    "atomic_write_text",
    "load_checkpoint",
    "make_readable",
    "save_checkpoint",
    "save_tensors_atomically",
]

FORMAT_NAME = "nssm-checkpoint"
FORMAT_VERSION = "1"


class CheckpointError(ValueError):
    """A file is not a readable nssm checkpoint, or does not fit the model."""


def make_readable(path: str | os.PathLike[str]) -> None:
    """Give a temporary file the permissions a new file gets under the process umask.

    ``tempfile.mkstemp`` creates files readable by their owner only; the
    files nssm renames into place should read like any other output.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        make_readable(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_tensors_atomically(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file through a temporary file in the same folder, flushed to disk, and a rename.

    A failure at any point leaves an existing file at ``path`` unchanged.
    """
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    try:
        save_file(tensors, temporary, metadata=metadata)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        make_readable(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_checkpoint(model: DeepSSM, path: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
    """Save ``model`` to ``path`` (a ``.safetensors`` file), atomically.

    Args:
        model: The model to save.
        path: Destination file.
        extra: JSON-compatible data stored with the weights, returned by :func:`load_checkpoint`.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "d_input": str(model.d_input),
        "d_output": str(model.d_output),
        "config": model.config.model_dump_json(),
        "extra": json.dumps(extra or {}),
    }
    tensors = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    save_tensors_atomically(path, tensors, metadata)
    return path


def _read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error}); is it truncated?") from error
    if metadata.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is a safetensors file but not an nssm checkpoint (no 'format: {FORMAT_NAME}')")
    return metadata


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[DeepSSM, dict[str, Any]]:
    """Load a model saved by :func:`save_checkpoint`.

    Args:
        path: The ``.safetensors`` file, or a folder holding ``model.safetensors``.

    Returns:
        ``(model, extra)``: the model in eval mode and the extra data saved with it.

    Raises:
        FileNotFoundError: If the file does not exist.
        CheckpointError: If the file is not an nssm checkpoint, is truncated,
            or its weights do not fit its config.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    metadata = _read_metadata(path)
    try:
        config = SSMConfig.model_validate_json(metadata["config"])
        model = DeepSSM(int(metadata["d_input"]), int(metadata["d_output"]), config=config)
        extra = json.loads(metadata.get("extra", "{}"))
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"{path} has invalid nssm metadata: {error}") from error
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"could not read the weights of {path}: {error}") from error
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"the weights in {path} do not fit its config: {error}") from error
    model.eval()
    return model, extra
