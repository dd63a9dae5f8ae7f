"""Training and simulation of a DeepSSM on input/output records (system identification).

:func:`train` fits a model by free-run simulation error on one or several
records, cut into windows and right-padded to a common length with the padded
samples masked out of the loss. It runs data-parallel when given a
:class:`~nssm_core._distributed.DistributedContext` of several processes,
stops early on a validation RMSE, and writes resumable checkpoints.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ._distributed import DistributedContext
from ._model import DeepSSM
from ._train_state import TrainState, check_resumable, save_train_state
from .data import PaddedBatch, Record, pad_records, window_records

__all__ = [
    "TrainResult",
    "fit_percent",
    "make_windows",
    "masked_squared_error",
    "rmse",
    "run_padded",
    "simulate",
    "train",
    "valid_count",
]

logger = logging.getLogger("nssm.training")


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        losses: Training loss per optimizer step: mean squared error over the
            step's valid samples in normalised units, over all processes.
        seconds: Wall-clock training time, summed over resumed sessions.
        validation: ``(step, rmse)`` pairs: validation RMSE in normalised units
            after that many steps.
        best_step: Step of the lowest validation RMSE; the model ends with
            that step's parameters. ``None`` without validation.
        stopped_early: Whether training stopped because the validation RMSE
            did not improve for ``patience`` evaluations.
        resumed_step: Step the run resumed from, 0 for a new run.
    """

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    validation: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None
    stopped_early: bool = False
    resumed_step: int = 0

    @property
    def steps(self) -> int:
        """Optimizer steps completed."""
        return len(self.losses)


def make_windows(record: Record, window: int, stride: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a record into windows ``(n, window, channels)``; ``window=0`` keeps the whole record.

    Windows start every ``stride`` samples (``window // 2`` by default) and
    the last window ends at the last sample.
    """
    windows = window_records([record], window, stride)
    return torch.stack([w.u for w in windows]), torch.stack([w.y for w in windows])


def masked_squared_error(prediction: torch.Tensor, batch: PaddedBatch, washout: int = 0) -> torch.Tensor:
    """Return the sum of squared errors over the valid samples of ``batch`` after ``washout`` steps.

    Args:
        prediction: Model output ``(batch, time, d_output)`` for ``batch.u``.
        batch: The padded batch with its targets and lengths.
        washout: Samples at the start of each record left out.

    Returns:
        A scalar; padded samples (at or after a record's length) add nothing.
    """
    error = (prediction - batch.y)[:, washout:] ** 2
    if batch.padded:
        error = error * batch.mask(washout)[:, washout:]
    return error.sum()


def valid_count(lengths: torch.Tensor, washout: int, channels: int) -> int:
    """Return the number of loss terms of records with ``lengths``: ``sum(max(0, length - washout)) * channels``."""
    return int((lengths - washout).clamp_min(0).sum()) * channels


def run_padded(
    model: DeepSSM, batch: PaddedBatch | torch.Tensor, lengths: torch.Tensor | None = None, mode: str = "scan"
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run right-padded records in one batch and take each record's final state at its own length.

    The model is causal, so padding after a record's end cannot change its
    earlier outputs; the outputs at padded steps are set to zero. The final
    state of record ``i`` is the state after its last valid sample,
    ``x_{length_i}``, read from each block's state sequence.

    Args:
        model: A :class:`~nssm_core.DeepSSM` (not wrapped in DDP).
        batch: A :class:`~nssm_core.data.PaddedBatch`, or inputs ``(batch, time, d_input)``.
        lengths: Valid lengths ``(batch,)``, needed when ``batch`` is a tensor.
        mode: Scan backend.

    Returns:
        ``(y, states)``: outputs ``(batch, time, d_output)`` with zeros after each
        record's end, and one ``(batch, d_state)`` final state per block.
    """
    if isinstance(batch, PaddedBatch):
        u, lengths = batch.u, batch.lengths
    else:
        u = batch
        if lengths is None:
            raise ValueError("run_padded needs the valid lengths of a padded input tensor")
    lengths = torch.as_tensor(lengths, dtype=torch.long, device=u.device)
    if lengths.shape != (u.shape[0],) or bool((lengths < 1).any()) or bool((lengths > u.shape[1]).any()):
        raise ValueError(f"lengths must hold {u.shape[0]} values between 1 and {u.shape[1]}, got {lengths.tolist()}")

    # Each block returns its whole state sequence x_0 .. x_T; DeepSSM keeps only x_T. A long input runs
    # in time blocks, and then every block of the model returns one piece per time block, in time order.
    sequences: list[torch.Tensor] = []
    handles = [
        block.register_forward_hook(lambda _module, _inputs, output: sequences.append(output[1]))
        for block in model.blocks
    ]
    recompute = model.recompute_time_blocks
    model.recompute_time_blocks = False  # recomputed blocks would return their states without a graph
    try:
        y, _ = model(u, mode=mode)
    finally:
        model.recompute_time_blocks = recompute
        for handle in handles:
            handle.remove()

    depth = len(model.blocks)
    pieces = [sequences[index::depth] for index in range(depth)]
    # Each piece starts with the state the previous piece ended in.
    whole = [torch.cat([parts[0], *(part[:, 1:] for part in parts[1:])], dim=1) for parts in pieces]
    rows = torch.arange(u.shape[0], device=u.device)
    final_states = [states[rows, lengths] for states in whole]
    valid = torch.arange(u.shape[1], device=u.device)[None, :] < lengths[:, None]
    return y * valid.unsqueeze(-1).to(y.dtype), final_states


def _fingerprint(records: Sequence[Record]) -> str:
    digest = hashlib.sha256()
    for record in records:
        for tensor in (record.u, record.y):
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().to(torch.float64).cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _check_arguments(epochs: int, lr: float, batch_size: int, patience: int | None, eval_every: int) -> None:
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr}")
    if batch_size < 0:
        raise ValueError(f"batch size must be 0 (all windows) or positive, got {batch_size}")
    if patience is not None and patience <= 0:
        raise ValueError(f"patience must be a positive number of evaluations, got {patience}")
    if eval_every <= 0:
        raise ValueError(f"eval_every must be positive, got {eval_every}")


class _BatchSchedule:
    """Global batches of window indices: all windows every step, or shuffled batches of a fixed size.

    The permutation of epoch ``e`` depends only on ``(seed, e)``, so the batch
    of any step is known without stored state and is the same on every process.
    """

    def __init__(self, n_windows: int, batch_size: int, seed: int) -> None:
        self.n_windows = n_windows
        self.batch_size = n_windows if batch_size == 0 or batch_size >= n_windows else batch_size
        self.batches_per_epoch = n_windows // self.batch_size
        self.seed = seed
        self._cached: tuple[int, torch.Tensor] | None = None

    @property
    def full(self) -> bool:
        return self.batch_size == self.n_windows

    def indices(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step, self.batches_per_epoch)
        if self._cached is None or self._cached[0] != epoch:
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2**63))
            self._cached = (epoch, torch.randperm(self.n_windows, generator=generator))
        start = position * self.batch_size
        return self._cached[1][start : start + self.batch_size]


def _rng_states(context: DistributedContext) -> dict[str, torch.Tensor]:
    """Gather every process's generator states (collective: all processes must call it)."""
    states: dict[str, torch.Tensor] = {}
    for rank, state in enumerate(context.all_gather(torch.get_rng_state())):
        states[f"cpu/{rank}"] = state
    if context.device.type == "cuda":
        cuda_state = torch.cuda.get_rng_state(context.device)
        for rank, state in enumerate(context.all_gather(cuda_state)):
            states[f"cuda/{rank}"] = state
    return states


def _restore_rng(rng: dict[str, torch.Tensor], context: DistributedContext, seed: int) -> None:
    cpu = rng.get(f"cpu/{context.rank}")
    if cpu is None:
        # NOTE: with another number of processes the dropout streams restart, so the
        # resumed run no longer equals an uninterrupted one (the batches still do).
        logger.warning("checkpoint has no random state for rank %d; reseeding dropout", context.rank)
        torch.manual_seed(seed + context.rank)
        return
    torch.set_rng_state(cpu)
    cuda = rng.get(f"cuda/{context.rank}")
    if context.device.type == "cuda" and cuda is not None:
        torch.cuda.set_rng_state(cuda, context.device)


@torch.no_grad()
def _validation_rmse(model: DeepSSM, batch: PaddedBatch, washout: int, mode: str, context: DistributedContext) -> float:
    """Return the validation RMSE in normalised units, each process simulating every ``world_size``-th record."""
    was_training = model.training
    model.eval()
    rows = torch.arange(context.rank, batch.u.shape[0], context.world_size)
    totals = torch.zeros(2, dtype=torch.float64, device=context.device)
    if rows.numel():
        part = batch.select(rows)
        prediction, _ = model(part.u, mode=mode)
        totals[0] = masked_squared_error(prediction, part, washout).double()
        totals[1] = valid_count(part.lengths, washout, part.y.shape[2])
    model.train(was_training)
    totals = context.all_reduce_sum(totals)
    return math.sqrt(float(totals[0]) / float(totals[1]))


def train(
    model: DeepSSM,
    record: Record | Sequence[Record],
    *,
    epochs: int = 1000,
    lr: float = 3e-3,
    window: int = 0,
    washout: int = 0,
    mode: str = "scan",
    progress: bool = True,
    stride: int | None = None,
    batch_size: int = 0,
    seed: int = 0,
    validation: Sequence[Record] | None = None,
    patience: int | None = None,
    eval_every: int = 1,
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 0,
    checkpoint_extra: dict[str, Any] | None = None,
    resume: TrainState | None = None,
    resume_path: str | Path | None = None,
    context: DistributedContext | None = None,
) -> TrainResult:
    """Fit ``model`` to normalised records by free-run simulation error.

    Each step is one Adam step on a batch of windows, with the learning rate
    decayed by a cosine schedule to 5% of ``lr`` over ``epochs`` steps. The
    loss is the mean squared error over the valid samples after the first
    ``washout`` of each window, every window simulated from the zero state;
    windows of different lengths are right-padded and the padding masked out.

    Under several processes the model is wrapped in
    :class:`~torch.nn.parallel.DistributedDataParallel` and each process takes
    every ``world_size``-th window of the global batch. Each process divides its
    sum of squared errors by the global number of loss terms and multiplies by
    ``world_size``, so DDP's gradient average equals the gradient of the
    global mean, as in a single process.

    Args:
        model: The model, trained in place, on ``context.device``.
        record: Normalised training record, or several.
        epochs: Optimizer steps.
        lr: Initial learning rate.
        window: Window length, or 0 for whole records.
        washout: Samples at the start of each window left out of the loss.
        mode: Scan backend.
        progress: Show a progress bar (on rank 0).
        stride: Distance between window starts; ``window // 2`` by default.
        batch_size: Windows per step, 0 for all; smaller batches are drawn
            from a per-epoch shuffle seeded by ``seed``.
        seed: Seed of the batch shuffle; process ``r > 0`` seeds its dropout with ``seed + r``.
        validation: Normalised validation records, simulated whole.
        patience: Stop after this many evaluations without a lower validation
            RMSE; needs ``validation``. Without it, training runs all steps.
        eval_every: Steps between validation evaluations.
        checkpoint_path: File for resumable checkpoints (written by rank 0).
        checkpoint_every: Steps between checkpoints; 0 writes none.
        checkpoint_extra: JSON-compatible data stored in each checkpoint.
        resume: A loaded checkpoint to continue from.
        resume_path: Where ``resume`` was read from, for messages.
        context: The process's place in a data-parallel run; one process by default.

    Returns:
        The loss history, validation results and training time. With
        validation, the model ends with its best validation parameters.

    Raises:
        ValueError: If an argument is invalid or a window is not longer than ``washout``.
        CheckpointError: If ``resume`` belongs to another configuration, data or settings.
        FloatingPointError: If the loss stops being finite.
    """
    _check_arguments(epochs, lr, batch_size, patience, eval_every)
    if patience is not None and not validation:
        raise ValueError("patience (early stopping) needs validation records")
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be 0 (off) or positive, got {checkpoint_every}")
    if checkpoint_every and checkpoint_path is None:
        raise ValueError("checkpoint_every needs a checkpoint_path")
    context = context or DistributedContext()
    records = [record] if isinstance(record, Record) else list(record)

    # 1. Windows, padded once; each step selects its rows.
    windows = window_records(records, window, stride)
    too_short = [w for w in windows if len(w) <= washout]
    if too_short:
        raise ValueError(
            f"washout ({washout}) must be shorter than every training window; {too_short[0].name} has "
            f"{len(too_short[0])} samples"
        )
    dtype = next(model.parameters()).dtype
    data = pad_records(windows, dtype).to(context.device)
    schedule = _BatchSchedule(len(windows), batch_size, seed)
    if schedule.batch_size < context.world_size:
        raise ValueError(
            f"a step's batch of {schedule.batch_size} window(s) cannot be split over {context.world_size} processes; "
            f"use a shorter --window or a --batch-size of at least {context.world_size}"
        )
    validation_batch = pad_records(list(validation), dtype).to(context.device) if validation else None
    d_output = data.y.shape[2]

    settings = {
        "epochs": epochs, "lr": lr, "window": window, "stride": stride, "washout": washout,
        "batch_size": batch_size, "seed": seed, "mode": mode, "patience": patience, "eval_every": eval_every,
        "train_data_sha256": _fingerprint(records),
        "validation_data_sha256": _fingerprint(validation) if validation else None,
    }

    # 2. Optimizer, schedule and, when resuming, their saved state.
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=0.05 * lr)
    result = TrainResult()
    best_value = math.inf
    best_state: dict[str, torch.Tensor] | None = None
    bad_evaluations = 0
    previous_seconds = 0.0
    if resume is not None:
        path = Path(resume_path or "checkpoint")
        check_resumable(resume, path, model.config, model.d_input, model.d_output, settings)
        model.load_state_dict(resume.model, strict=True)
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        saved = resume.progress
        result.losses = [float(v) for v in saved["losses"]]
        result.validation = [(int(s), float(v)) for s, v in saved["validation"]]
        result.best_step = saved["best_step"]
        result.stopped_early = bool(saved["stopped_early"])
        result.resumed_step = resume.step
        best_value = float(saved["best_value"])
        bad_evaluations = int(saved["bad_evaluations"])
        previous_seconds = float(saved["seconds"])
        if resume.best_model is not None:
            best_state = {k: v.to(context.device) for k, v in resume.best_model.items()}
        _restore_rng(resume.rng, context, seed)
        if len(result.losses) != resume.step:
            raise ValueError(f"{path}: {len(result.losses)} losses recorded for {resume.step} steps; the file is damaged")
    elif context.rank > 0:
        torch.manual_seed(seed + context.rank)

    network: torch.nn.Module = model
    if context.distributed:
        device_ids = [context.device] if context.device.type == "cuda" else None
        # NOTE: every built-in core and layer gives all its parameters a gradient; a plugin
        # with unused parameters needs find_unused_parameters=True, which DDP's error names.
        network = DistributedDataParallel(model, device_ids=device_ids)

    def write_checkpoint(step: int, seconds: float) -> None:
        rng = _rng_states(context)
        if not context.is_main:
            return
        progress_state = {
            "losses": result.losses, "validation": result.validation, "best_step": result.best_step,
            "best_value": best_value, "bad_evaluations": bad_evaluations, "stopped_early": result.stopped_early,
            "seconds": seconds, "world_size": context.world_size,
        }
        state = TrainState(
            step=step, config=model.config, d_input=model.d_input, d_output=model.d_output, settings=settings,
            model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
            rng=rng, progress=progress_state, best_model=best_state, extra=checkpoint_extra or {},
        )
        save_train_state(checkpoint_path, state)  # type: ignore[arg-type]

    # 3. The loop.
    start_step = len(result.losses)
    model.train()
    start = time.perf_counter()
    bar = tqdm(
        range(start_step, epochs), desc="train", unit="step", initial=start_step, total=epochs,
        # None lets tqdm turn itself off when stderr is not a terminal, so logs get no bar updates.
        disable=None if (progress and context.is_main) else True, leave=False,
    )
    last_checkpoint = start_step
    full_local = data
    if context.distributed:
        full_local = data.select(torch.arange(context.rank, data.u.shape[0], context.world_size))
    for step in bar:
        if result.stopped_early:
            break
        if schedule.full:
            global_lengths, local = data.lengths, full_local
        else:
            indices = schedule.indices(step)
            global_lengths = data.lengths[indices.to(data.lengths.device)]
            local = data.select(indices[context.rank :: context.world_size])
        denominator = valid_count(global_lengths, washout, d_output)

        optimizer.zero_grad()
        prediction, _ = network(local.u, mode=mode)
        squared = masked_squared_error(prediction, local, washout)
        loss = squared * (context.world_size / denominator)
        total = context.all_reduce_sum(squared.detach().double().reshape(1))
        value = float(total[0]) / denominator
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss became {value}; lower the learning rate (--lr {lr / 3:.2g})")
        loss.backward()
        optimizer.step()
        scheduler.step()
        result.losses.append(value)
        bar.set_postfix(loss=f"{value:.4f}")
        done = step + 1

        if validation_batch is not None and (done % eval_every == 0 or done == epochs):
            current = _validation_rmse(model, validation_batch, washout, mode, context)
            result.validation.append((done, current))
            if current < best_value:
                best_value, result.best_step, bad_evaluations = current, done, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_evaluations += 1
                if patience is not None and bad_evaluations >= patience:
                    result.stopped_early = True
        if checkpoint_every and (done % checkpoint_every == 0 or done == epochs or result.stopped_early):
            write_checkpoint(done, previous_seconds + time.perf_counter() - start)
            last_checkpoint = done

    # 4. Wrap up: a last checkpoint, the best parameters, the reduced time.
    seconds = previous_seconds + time.perf_counter() - start
    if checkpoint_every and last_checkpoint != len(result.losses):
        write_checkpoint(len(result.losses), seconds)
    if best_state is not None:
        model.load_state_dict(best_state)
    result.seconds = context.all_reduce_max(seconds)
    model.eval()
    return result


@torch.no_grad()
def simulate(model: DeepSSM, u: torch.Tensor, mode: str = "scan") -> torch.Tensor:
    """Run the model in eval mode from the zero state on ``u`` of shape ``(time, d_input)``; return ``(time, d_output)``.

    The input is moved to the model's device and dtype; the result is float64 on the CPU.
    """
    was_training = model.training
    model.eval()
    parameter = next(model.parameters())
    y, _ = model(u.to(parameter.device, parameter.dtype).unsqueeze(0), mode=mode)
    model.train(was_training)
    return y[0].to("cpu", torch.float64)


def rmse(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Root-mean-square error over all samples and channels."""
    return float(torch.sqrt(torch.mean((prediction - target) ** 2)))


def fit_percent(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Return the fit $100 (1 - \\|y - \\hat y\\| / \\|y - \\bar y\\|)$ in percent (100 is perfect)."""
    denominator = torch.linalg.vector_norm(target - target.mean(0))
    return float(100.0 * (1.0 - torch.linalg.vector_norm(target - prediction) / denominator))
