"""``nssm train``: fit a DeepSSM to input/output data and write metrics, a checkpoint and a plot."""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import typing
from pathlib import Path
from typing import Any

import torch

from .._config import SSMConfig
from .._model import DeepSSM
from ..analysis import worst_case_gain
from ..checkpoint import atomic_write_text, save_checkpoint
from ..data import Normalizer, Record, cascaded_tanks, load_record, split_record
from ..training import fit_percent, rmse, simulate, train

__all__ = ["add_parser", "run_training"]

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
            "Writes metrics.json, model.safetensors, config.json and test_prediction.png to --out."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, help="CSV file with a header row; without it, the bundled Cascaded Tanks data.")
    data.add_argument("--inputs", type=_column_list, help="Comma-separated input column names of --data.")
    data.add_argument("--outputs", type=_column_list, help="Comma-separated output column names of --data.")
    data.add_argument("--test-data", type=Path, help="CSV file of the test record, with the same columns.")
    data.add_argument(
        "--test-fraction", type=float, help="Fraction of --data held out from the end as the test record."
    )

    run = parser.add_argument_group("training")
    run.add_argument("--epochs", type=int, default=2000, help="Optimizer steps (one step per pass over the data).")
    run.add_argument("--lr", type=float, default=0.01, help="Initial Adam learning rate (cosine decay to 5%%).")
    run.add_argument("--window", type=int, default=0, help="Training window length in samples; 0 = whole record.")
    run.add_argument("--washout", type=int, default=0, help="Samples at the start of each window left out of the loss.")
    run.add_argument("--mode", default="scan", help="Scan backend used for training and simulation.")
    run.add_argument("--seed", type=int, default=0, help="Random seed.")
    run.add_argument("--threads", type=int, default=None, help="CPU threads for torch; torch's own choice when not given.")
    run.add_argument(
        "--search-steps", type=int, default=100, help="Steps of the worst-case input search for the empirical gain."
    )
    run.add_argument("--out", type=Path, default=Path("runs/train"), help="Output folder.")
    run.add_argument("--quiet", action="store_true", help="Hide the progress bar.")
    _add_config_options(parser)
    parser.set_defaults(handler=run_training)


def _load_data(args: argparse.Namespace) -> tuple[Record, Record]:
    if args.data is None:
        if args.inputs or args.outputs or args.test_data or args.test_fraction:
            raise ValueError("--inputs, --outputs, --test-data and --test-fraction need --data CSV")
        return cascaded_tanks()
    if not args.inputs or not args.outputs:
        raise ValueError("--data needs --inputs and --outputs (comma-separated column names)")
    record = load_record(args.data, args.inputs, args.outputs)
    if args.test_data is not None and args.test_fraction is not None:
        raise ValueError("give either --test-data or --test-fraction, not both")
    if args.test_data is not None:
        return record, load_record(args.test_data, args.inputs, args.outputs)
    if args.test_fraction is None:
        raise ValueError("--data needs a test record: pass --test-data CSV or --test-fraction F (for example 0.2)")
    return split_record(record, args.test_fraction)


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
        os.replace(temporary, path)
    finally:
        plt.close(figure)
        Path(temporary).unlink(missing_ok=True)


def run_training(args: argparse.Namespace) -> int:
    """Run ``nssm train`` with parsed arguments; return the exit status."""
    if args.epochs <= 0:
        raise ValueError(f"--epochs must be positive, got {args.epochs}")
    if args.threads is not None:
        if args.threads <= 0:
            raise ValueError(f"--threads must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)
    train_record, test_record = _load_data(args)
    config = _config_from_args(args)
    torch.manual_seed(args.seed)

    normalizer = Normalizer.fit(train_record)
    model = DeepSSM(train_record.u.shape[1], train_record.y.shape[1], config=config)
    result = train(
        model,
        normalizer.normalize(train_record),
        epochs=args.epochs,
        lr=args.lr,
        window=args.window,
        washout=args.washout,
        mode=args.mode,
        progress=not args.quiet,
    )

    simulated = normalizer.denormalize_y(simulate(model, normalizer.normalize_u(test_record.u), mode=args.mode))
    simulated_train = normalizer.denormalize_y(simulate(model, normalizer.normalize_u(train_record.u), mode=args.mode))
    mean_prediction = train_record.y.mean(0).expand_as(test_record.y)
    certificate = model.certificate()
    search_length = min(len(test_record), 256)
    empirical = worst_case_gain(
        model, model.d_input, length=search_length, starts=4, steps=args.search_steps, seed=args.seed
    )

    metrics = {
        "test_rmse": rmse(simulated, test_record.y),
        "test_fit_percent": fit_percent(simulated, test_record.y),
        "train_rmse": rmse(simulated_train, train_record.y),
        "constant_mean_test_rmse": rmse(mean_prediction, test_record.y),
        "prescribed_gamma": config.gamma,
        "certified_gain_bound": certificate.bound,
        "certificate_kind": certificate.kind,
        "empirical_gain_lower_bound": empirical,
        "train_seconds": result.seconds,
        "final_train_loss": result.losses[-1],
        "epochs": args.epochs,
        "test_samples": len(test_record),
        "train_samples": len(train_record),
        "units_note": "RMSE in the data's output units; gains between normalised signals",
    }

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    extra = {"normalization": normalizer.to_dict(), "metrics": metrics}
    save_checkpoint(model, out / "model.safetensors", extra=extra)
    atomic_write_text(
        out / "config.json",
        json.dumps(
            {"d_input": model.d_input, "d_output": model.d_output, "config": config.model_dump(), **extra}, indent=2
        ),
    )
    _save_plot(
        out / "test_prediction.png",
        test_record.y,
        simulated,
        f"{test_record.name}: RMSE {metrics['test_rmse']:.3f}, gamma {config.gamma}",
    )
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))

    print(json.dumps({key: metrics[key] for key in list(metrics)[:9]}, indent=2))
    print(f"wrote {out / 'metrics.json'}, {out / 'model.safetensors'}, {out / 'config.json'}, "
          f"{out / 'test_prediction.png'}")
    return 0

