"""``nssm train``: fit a DeepSSM to input/output data and write metrics, a checkpoint and a plot.

Under ``torchrun`` it trains data-parallel, and rank 0 alone evaluates the
model and writes files.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import typing
from pathlib import Path
from typing import Any

import torch

from .._config import SSMConfig
from .._distributed import init_distributed, shutdown_distributed
from .._model import DeepSSM
from .._train_state import TrainState, load_train_state
from ..analysis import worst_case_gain
from ..checkpoint import atomic_write_text, make_readable, save_checkpoint
from ..data import Normalizer, Record, cascaded_tanks, load_records, record_statistics, split_record
from ..training import TrainResult, fit_percent, rmse, simulate, train

__all__ = ["CHECKPOINT_NAME", "add_parser", "run_training"]

# Defaults of the main job: a certified model on the bundled Cascaded Tanks data.
# They differ from SSMConfig's generic defaults and are listed in the help text.
TRAIN_DEFAULTS: dict[str, Any] = {
    "param": "l2n",
    "ff": "LGLU",
    "gamma": 5.0,
    "d_model": 16,
    "d_state": 32,
    "n_layers": 2,
    "dropout": 0.05,
}

_SKIPPED_FIELDS = {"core_options", "layer_options", "gamma"}

# File name of the resumable training checkpoint inside --out.
CHECKPOINT_NAME = "checkpoint.safetensors"
_RESUME_FROM_OUT = "<out>/" + CHECKPOINT_NAME


def _parse_gamma(text: str) -> float | None:
    if text.strip().lower() in {"none", "off"}:
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid gamma {text!r}: give a positive number or 'none'") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"invalid gamma {text!r}: it must be positive and finite")
    return value


def _parse_json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"invalid JSON {text!r}: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"rho\": 0.8}}', got {text!r}")
    return value


def _column_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated column names, got {text!r}")
    return names


class _JoinColumns(argparse.Action):
    """Argparse action that stores the column names of all values (``a b``, ``a,b`` or both) as one flat list."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, [name for names in values for name in names])  # type: ignore[union-attr]


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (SSMConfig fields)")
    for name, info in SSMConfig.model_fields.items():
        if name in _SKIPPED_FIELDS:
            continue
        flag = "--" + name.replace("_", "-")
        default = TRAIN_DEFAULTS.get(name, info.default)
        help_text = info.description
        annotation = info.annotation
        if annotation is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif annotation in (int, float, str):
            group.add_argument(flag, dest=name, type=annotation, default=default, help=help_text)
        else:
            args = typing.get_args(annotation)
            base = next((a for a in args if a in (int, float, str)), str)
            group.add_argument(flag, dest=name, type=base, default=default, help=help_text)
    group.add_argument(
        "--gamma",
        type=_parse_gamma,
        default=TRAIN_DEFAULTS["gamma"],
        help="Prescribed L2 gain of the model on normalised signals, or 'none' for no certificate.",
    )
    group.add_argument("--core-options", type=_parse_json_object, default={}, help="Extra core options as JSON.")
    group.add_argument("--layer-options", type=_parse_json_object, default={}, help="Extra layer options as JSON.")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``nssm train``."""
    parser = subparsers.add_parser(
        "train",
        help="Train a DeepSSM on input/output data (default: the bundled Cascaded Tanks benchmark).",
        description=(
            "Train a DeepSSM by free-run simulation error. Without --data it uses the bundled Cascaded Tanks "
            "benchmark: the estimation record for training and the test record for evaluation. Signals are "
            "normalised with training-record statistics; gamma bounds the gain between normalised signals. "
            "Writes metrics.json, model.safetensors, config.json and test_prediction.png to --out. "
            "Under torchrun it trains data-parallel (docs/training.md)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data", action="append", metavar="PATH",
        help="Training data: a CSV file with a header row, a glob such as 'runs/*.csv', or an .npz file of "
        "records (u_0, y_0, u_1, y_1, ...). Repeat for several; without it, the bundled Cascaded Tanks data.",
    )
    data.add_argument(
        "--inputs", nargs="+", type=_column_list, action=_JoinColumns, metavar="COLUMN",
        help="Input column names of the CSV files, separated by spaces or commas.",
    )
    data.add_argument(
        "--outputs", nargs="+", type=_column_list, action=_JoinColumns, metavar="COLUMN",
        help="Output column names of the CSV files, separated by spaces or commas.",
    )
    data.add_argument("--test-data", action="append", metavar="PATH", help="Test records, in the forms --data takes.")
    data.add_argument(
        "--test-fraction", type=float, help="Fraction of each --data record held out from its end as test data."
    )
    data.add_argument(
        "--val-data", action="append", metavar="PATH", help="Validation records, in the forms --data takes."
    )
    data.add_argument(
        "--val-fraction", type=float,
        help="Fraction of each training record (after the test split) held out from its end for validation.",
    )

    run = parser.add_argument_group("training")
    run.add_argument(
        "--epochs", type=int, default=2000,
        help="Optimizer steps. A step takes --batch-size windows; with 0, all windows (one pass over the data).",
    )
    run.add_argument("--lr", type=float, default=0.01, help="Initial Adam learning rate (cosine decay to 5%%).")
    run.add_argument("--window", type=int, default=0, help="Training window length in samples; 0 = whole records.")
    run.add_argument("--stride", type=int, default=None, help="Samples between window starts; window/2 when not given.")
    run.add_argument("--washout", type=int, default=0, help="Samples at the start of each window left out of the loss.")
    run.add_argument("--batch-size", type=int, default=0, help="Windows per step over all processes; 0 = all windows.")
    run.add_argument(
        "--patience", type=int, default=None,
        help="Stop after this many validation evaluations without a lower validation RMSE (needs validation data).",
    )
    run.add_argument("--eval-every", type=int, default=1, help="Steps between validation evaluations.")
    run.add_argument("--mode", default="scan", help="Scan backend used for training and simulation.")
    run.add_argument(
        "--training-block-elements", type=int, default=None,
        help="Values (windows x steps x d_model) per time block of a training step; long windows run in time "
        "blocks with the states carried between them. Default: the model's (2^19).",
    )
    run.add_argument(
        "--recompute-time-blocks", action="store_true",
        help="Keep only the states between time blocks and recompute each block in the backward pass: "
        "training memory stops growing with the window length, at the cost of a second forward pass.",
    )
    run.add_argument("--seed", type=int, default=0, help="Random seed.")
    run.add_argument("--threads", type=int, default=None, help="CPU threads for torch; torch's own choice when not given.")
    run.add_argument(
        "--search-steps", type=int, default=100, help="Steps of the worst-case input search for the empirical gain."
    )
    run.add_argument("--out", type=Path, default=Path("runs/train"), help="Output folder.")
    run.add_argument("--quiet", action="store_true", help="Hide the progress bar.")

    resume = parser.add_argument_group("checkpoints and parallel training")
    resume.add_argument(
        "--checkpoint-every", type=int, default=0, metavar="N",
        help=f"Write a resumable checkpoint to --out/{CHECKPOINT_NAME} every N steps; 0 = none.",
    )
    resume.add_argument(
        "--resume", nargs="?", const=_RESUME_FROM_OUT, default=None, metavar="PATH",
        help=f"Continue from a checkpoint: PATH, or --out/{CHECKPOINT_NAME} when no PATH is given "
        "(a new run starts if that file does not exist yet).",
    )
    resume.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="Device; with cuda each process uses GPU LOCAL_RANK."
    )
    resume.add_argument(
        "--dist-backend", choices=("auto", "gloo", "nccl"), default="auto",
        help="torch.distributed backend under torchrun; auto = nccl with --device cuda, gloo on CPU.",
    )
    resume.add_argument(
        "--dist-init-method", default="env://", metavar="URL",
        help="Rendezvous of the processes: env:// (MASTER_ADDR and MASTER_PORT, set by torchrun) or "
        "file:///path/on/a/shared/filesystem.",
    )
    _add_config_options(parser)
    parser.set_defaults(handler=run_training)


def _split_tails(records: list[Record], fraction: float) -> tuple[list[Record], list[Record]]:
    pairs = [split_record(record, fraction) for record in records]
    return [head for head, _ in pairs], [tail for _, tail in pairs]


def _load_data(args: argparse.Namespace) -> tuple[list[Record], list[Record], list[Record] | None]:
    """Return the training, test and validation records (validation ``None`` unless requested)."""
    if args.data is None:
        if args.inputs or args.outputs or args.test_data or args.test_fraction:
            raise ValueError("--inputs, --outputs, --test-data and --test-fraction need --data CSV")
        estimation, test = cascaded_tanks()
        train_records, test_records = [estimation], [test]
    else:
        train_records = load_records(args.data, args.inputs, args.outputs)
        if args.test_data is not None and args.test_fraction is not None:
            raise ValueError("give either --test-data or --test-fraction, not both")
        if args.test_data is not None:
            test_records = load_records(args.test_data, args.inputs, args.outputs)
        elif args.test_fraction is not None:
            train_records, test_records = _split_tails(train_records, args.test_fraction)
        else:
            raise ValueError("--data needs a test record: pass --test-data CSV or --test-fraction F (for example 0.2)")

    if args.val_data is not None and args.val_fraction is not None:
        raise ValueError("give either --val-data or --val-fraction, not both")
    validation = load_records(args.val_data, args.inputs, args.outputs) if args.val_data else None
    if args.val_fraction is not None:
        train_records, validation = _split_tails(train_records, args.val_fraction)
    widths = {(r.u.shape[1], r.y.shape[1]) for r in [*train_records, *test_records, *(validation or [])]}
    if len(widths) > 1:
        raise ValueError(f"training, test and validation records differ in their (input, output) channels: {widths}")
    return train_records, test_records, validation


def _config_from_args(args: argparse.Namespace) -> SSMConfig:
    fields = {name: getattr(args, name) for name in SSMConfig.model_fields if hasattr(args, name)}
    return SSMConfig(**fields)


def _save_plot(path: Path, measured: torch.Tensor, simulated: torch.Tensor, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(measured.shape[1], 1, figsize=(9, 3 * measured.shape[1]), squeeze=False)
    for channel in range(measured.shape[1]):
        axis = axes[channel, 0]
        axis.plot(measured[:, channel].numpy(), label="measured", linewidth=1.2)
        axis.plot(simulated[:, channel].numpy(), label="simulated", linewidth=1.2, linestyle="--")
        axis.set_xlabel("sample")
        axis.set_ylabel(f"output {channel}")
        axis.legend(loc="best")
    axes[0, 0].set_title(title)
    figure.tight_layout()
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(descriptor)
    try:
        figure.savefig(temporary, dpi=110)
        make_readable(temporary)
        os.replace(temporary, path)
    finally:
        plt.close(figure)
        Path(temporary).unlink(missing_ok=True)



def _check_arguments(args: argparse.Namespace) -> None:
    for flag, value, minimum in (
        ("--epochs", args.epochs, 1),
        ("--threads", args.threads, 1),
        ("--batch-size", args.batch_size, 0),
        ("--checkpoint-every", args.checkpoint_every, 0),
        ("--patience", args.patience, 1),
        ("--eval-every", args.eval_every, 1),
        ("--stride", args.stride, 1),
        ("--training-block-elements", args.training_block_elements, 1),
    ):
        if value is not None and value < minimum:
            word = "positive" if minimum == 1 else "0 or positive"
            raise ValueError(f"{flag} must be {word}, got {value}")
    if args.patience is not None and args.val_data is None and args.val_fraction is None:
        raise ValueError("--patience needs validation data: pass --val-data PATH or --val-fraction F")


def _load_resume_state(args: argparse.Namespace) -> tuple[TrainState | None, Path | None]:
    """Read the checkpoint named by ``--resume``; this writes nothing, so a bad file leaves the disk unchanged."""
    if args.resume is None:
        return None, None
    if args.resume == _RESUME_FROM_OUT:
        path = args.out / CHECKPOINT_NAME
        if not path.exists():
            print(f"nssm train: no checkpoint at {path} yet; starting a new run", file=sys.stderr)
            return None, None
    else:
        path = Path(args.resume)
    return load_train_state(path), path


def _evaluate(
    model: DeepSSM, normalizer: Normalizer, records: list[Record], mode: str
) -> tuple[list[torch.Tensor], dict[str, float]]:
    """Simulate each record from its input alone; return the outputs and the pooled RMSE and fit in data units."""
    outputs = [normalizer.denormalize_y(simulate(model, normalizer.normalize_u(r.u), mode=mode)) for r in records]
    prediction = torch.cat(outputs)
    target = torch.cat([r.y for r in records])
    return outputs, {"rmse": rmse(prediction, target), "fit_percent": fit_percent(prediction, target)}


def _write_results(
    args: argparse.Namespace,
    model: DeepSSM,
    normalizer: Normalizer,
    records: tuple[list[Record], list[Record], list[Record] | None],
    result: TrainResult,
    world_size: int,
) -> None:
    """Evaluate the trained model; write metrics.json, model.safetensors, config.json and the plot."""
    train_records, test_records, validation = records
    config = model.config
    simulated, test = _evaluate(model, normalizer, test_records, args.mode)
    _, train_fit = _evaluate(model, normalizer, train_records, args.mode)
    target = torch.cat([r.y for r in test_records])
    mean_prediction = torch.cat([r.y for r in train_records]).mean(0).expand_as(target)
    certificate = model.certificate()
    search_length = min(min(len(r) for r in test_records), 256)
    empirical = worst_case_gain(
        model, model.d_input, length=search_length, starts=4, steps=args.search_steps, seed=args.seed
    )

    metrics: dict[str, Any] = {
        "test_rmse": test["rmse"],
        "test_fit_percent": test["fit_percent"],
        "train_rmse": train_fit["rmse"],
        "constant_mean_test_rmse": rmse(mean_prediction, target),
        "prescribed_gamma": config.gamma,
        "certified_gain_bound": certificate.bound,
        "initial_state_transient_bound": certificate.transient_bound,
        "certificate_kind": certificate.kind,
        "empirical_gain_lower_bound": empirical,
        "train_seconds": result.seconds,
        "final_train_loss": result.losses[-1],
        "epochs": args.epochs,
        "steps_completed": result.steps,
        "resumed_from_step": result.resumed_step,
        "processes": world_size,
        "test_samples": target.shape[0],
        "train_samples": sum(len(r) for r in train_records),
        "train_records": len(train_records),
        "test_records": len(test_records),
        "units_note": "RMSE in the data's output units; gains between normalised signals",
    }
    if validation:
        _, validation_fit = _evaluate(model, normalizer, validation, args.mode)
        metrics.update({
            "validation_rmse": validation_fit["rmse"],
            "validation_records": len(validation),
            "best_step": result.best_step,
            "stopped_early": result.stopped_early,
        })

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    extra = {
        "normalization": normalizer.to_dict(),
        "record_statistics": record_statistics(train_records),
        "metrics": metrics,
    }
    save_checkpoint(model, out / "model.safetensors", extra=extra)
    atomic_write_text(
        out / "config.json",
        json.dumps(
            {"d_input": model.d_input, "d_output": model.d_output, "config": config.model_dump(), **extra}, indent=2
        ),
    )
    first_rmse = rmse(simulated[0], test_records[0].y)
    _save_plot(
        out / "test_prediction.png",
        test_records[0].y,
        simulated[0],
        f"{test_records[0].name}: RMSE {first_rmse:.3f}, gamma {config.gamma}",
    )
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))

    print(json.dumps({key: metrics[key] for key in list(metrics)[:9]}, indent=2))
    print(f"wrote {out / 'metrics.json'}, {out / 'model.safetensors'}, {out / 'config.json'}, "
          f"{out / 'test_prediction.png'}")


def run_training(args: argparse.Namespace) -> int:
    """Run ``nssm train`` with parsed arguments; return the exit status.

    Every process of a ``torchrun`` launch runs this function: all load the
    same data and train together, and rank 0 alone writes the output files.
    """
    _check_arguments(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    train_records, test_records, validation = _load_data(args)
    config = _config_from_args(args)
    resume, resume_path = _load_resume_state(args)

    context = init_distributed(args.device, args.dist_backend, args.dist_init_method)
    try:
        torch.manual_seed(args.seed)
        normalizer = Normalizer.fit(train_records)
        model = DeepSSM(train_records[0].u.shape[1], train_records[0].y.shape[1], config=config)
        if args.training_block_elements is not None:
            model.training_block_elements = args.training_block_elements
        model.recompute_time_blocks = args.recompute_time_blocks
        model.to(context.device)
        checkpoint_extra = {
            "normalization": normalizer.to_dict(),
            "record_statistics": record_statistics(train_records),
        }
        result = train(
            model,
            [normalizer.normalize(r) for r in train_records],
            epochs=args.epochs,
            lr=args.lr,
            window=args.window,
            stride=args.stride,
            washout=args.washout,
            batch_size=args.batch_size,
            seed=args.seed,
            validation=[normalizer.normalize(r) for r in validation] if validation else None,
            patience=args.patience,
            eval_every=args.eval_every,
            mode=args.mode,
            progress=not args.quiet,
            checkpoint_path=args.out / CHECKPOINT_NAME,
            checkpoint_every=args.checkpoint_every,
            checkpoint_extra=checkpoint_extra,
            resume=resume,
            resume_path=resume_path,
            context=context,
        )
        if context.is_main:
            model.to("cpu")
            records = (train_records, test_records, validation)
            _write_results(args, model, normalizer, records, result, context.world_size)
        context.barrier()
        # DDP keeps its reducer alive through hooks on the parameters; free it while the process
        # group still exists rather than during interpreter shutdown.
        del model, result
        gc.collect()
    finally:
        shutdown_distributed(context)
    return 0
