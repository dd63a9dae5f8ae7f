"""Training and simulation of a DeepSSM on input/output records (system identification)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ._model import DeepSSM
from .data import Record

__all__ = ["TrainResult", "fit_percent", "make_windows", "rmse", "simulate", "train"]


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        losses: Training loss (mean squared error, normalised units) per epoch.
        seconds: Wall-clock training time.
    """

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def make_windows(record: Record, window: int, stride: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a record into windows ``(n, window, channels)``; ``window=0`` keeps the whole record.

    Windows start every ``stride`` samples (``window // 2`` by default) and
    the last window ends at the last sample.
    """
    length = len(record)
    if window < 0:
        raise ValueError(f"window must be 0 (whole record) or a positive length, got {window}")
    if window == 0 or window >= length:
        return record.u.unsqueeze(0), record.y.unsqueeze(0)
    stride = stride or max(1, window // 2)
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    u = torch.stack([record.u[s : s + window] for s in starts])
    y = torch.stack([record.y[s : s + window] for s in starts])
    return u, y


def train(
    model: DeepSSM,
    record: Record,
    *,
    epochs: int = 1000,
    lr: float = 3e-3,
    window: int = 0,
    washout: int = 0,
    mode: str = "scan",
    progress: bool = True,
) -> TrainResult:
    """Fit ``model`` to a normalised record by free-run simulation error.

    Each epoch is one Adam step on all windows of the record at once, with
    the learning rate decayed by a cosine schedule to 5% of ``lr``. The loss
    is the mean squared error after the first ``washout`` samples of each
    window, every window simulated from the zero state.

    Args:
        model: The model, trained in place.
        record: Normalised training record.
        epochs: Optimizer steps.
        lr: Initial learning rate.
        window: Window length, or 0 for the whole record.
        washout: Samples at the start of each window left out of the loss.
        mode: Scan backend.
        progress: Show a progress bar.

    Returns:
        The loss history and the training time.
    """
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr}")
    dtype = next(model.parameters()).dtype
    u, y = make_windows(record, window)
    u, y = u.to(dtype), y.to(dtype)
    if washout >= u.shape[1]:
        raise ValueError(f"washout ({washout}) must be shorter than the window ({u.shape[1]} samples)")

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=0.05 * lr)
    result = TrainResult()
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc="train", unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        optimizer.zero_grad()
        prediction, _ = model(u, mode=mode)
        loss = torch.mean((prediction[:, washout:] - y[:, washout:]) ** 2)
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss became {value}; lower the learning rate (--lr {lr / 3:.2g})")
        loss.backward()
        optimizer.step()
        scheduler.step()
        result.losses.append(value)
        bar.set_postfix(loss=f"{value:.4f}")
    result.seconds = time.perf_counter() - start
    model.eval()
    return result


@torch.no_grad()
def simulate(model: DeepSSM, u: torch.Tensor, mode: str = "scan") -> torch.Tensor:
    """Run the model in eval mode from the zero state on ``u`` of shape ``(time, d_input)``; return ``(time, d_output)``."""
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    y, _ = model(u.to(dtype).unsqueeze(0), mode=mode)
    model.train(was_training)
    return y[0].to(torch.float64)


def rmse(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Root-mean-square error over all samples and channels."""
    return float(torch.sqrt(torch.mean((prediction - target) ** 2)))


def fit_percent(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Return the fit $100 (1 - \\|y - \\hat y\\| / \\|y - \\bar y\\|)$ in percent (100 is perfect)."""
    denominator = torch.linalg.vector_norm(target - target.mean(0))
    return float(100.0 * (1.0 - torch.linalg.vector_norm(target - prediction) / denominator))
