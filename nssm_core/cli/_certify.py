"""``nssm certify``: check a checkpoint's certificate numerically.

The command loads a checkpoint, prints its certificate report and measures
what the certificate bounds:

* the exact H-infinity norm of every LTI core (cores with ``lti_matrices()``),
  against the core's bound, with a relative round-off tolerance of 1e-6;
* a worst-case input search on every other certified core, on every
  certified static layer, and on the whole model, against their bounds
  with a relative round-off tolerance of 1e-6 in float64 (1e-3 in float32);
* for incremental certificates, the incremental search
  $\\|G(u_1) - G(u_2)\\| / \\|u_1 - u_2\\|$ as well.

A search returns the ratio of an input the model was run on, so it is a lower
bound of the true gain: a search can prove a certificate false, never true.

Exit status 0 means every measured value is within its certificate. Status 1
means a measured value exceeds its certificate, the certificate is invalid (NaN
or inf parameters, a non-finite bound) or the model has no certificate. Status 2
means the checkpoint or the data cannot be read.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .._certificate import CertificateKind, ModelCertificate
from .._model import DeepSSM
from ..analysis import hinf_norm, worst_case_gain
from ..checkpoint import load_checkpoint

__all__ = ["add_parser", "load_input_windows"]

HINF_RELATIVE_TOLERANCE = 1e-6
"""Relative excess of an exact H-infinity norm over its bound that is still round-off."""

SEARCH_RELATIVE_TOLERANCES = {torch.float64: 1e-6, torch.float32: 1e-3}
"""Relative excess of a searched ratio over its bound that is still round-off, per dtype.

The incremental ratio subtracts two outputs, so it inherits the model's round-off
amplified by up to 1e3 (the largest base-to-difference ratio the search uses).
"""


@dataclass
class Check:
    """One measured value compared with the bound that certifies it.

    Attributes:
        name: The part of the model, for example ``"block 0 core"`` or ``"model"``.
        method: ``"hinf"`` (exact H-infinity norm), ``"search"`` (worst-case
            input search) or ``"incremental search"``.
        measured: The measured gain; for searches, a lower bound of the true gain.
        bound: The certified bound.
        tolerance: Relative excess allowed for round-off.
        seconds: Time the measurement took.
    """

    name: str
    method: str
    measured: float
    bound: float
    tolerance: float
    seconds: float

    @property
    def ratio(self) -> float:
        """Measured value divided by the bound."""
        return self.measured / self.bound if self.bound > 0 else math.inf

    @property
    def passed(self) -> bool:
        """Whether the measured value is within the bound (``False`` for NaN)."""
        return self.measured <= self.bound * (1.0 + self.tolerance)

    def to_dict(self) -> dict[str, Any]:
        """Return the check as JSON-compatible data."""
        data = asdict(self)
        data.update(ratio=self.ratio, passed=self.passed)
        for key in ("measured", "ratio"):
            if not math.isfinite(data[key]):
                data[key] = str(data[key])  # JSON has no NaN or inf
        return data


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``nssm certify``."""
    parser = subparsers.add_parser(
        "certify",
        help="Check a checkpoint's certified bounds numerically; exit 1 if one is violated.",
        description=(
            "Print a checkpoint's certificate report, compute the exact H-infinity norm of every LTI core and run "
            "worst-case input searches on the model. Exit status 0: every measured value is within its "
            "certificate; 1: a value exceeds its certificate, the certificate is invalid or absent; 2: the "
            "checkpoint or data could not be read."
        ),
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="An nssm .safetensors checkpoint.")
    parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    parser.add_argument("--data", metavar="CSV", help="CSV file whose input windows start extra searches.")
    parser.add_argument(
        "--inputs",
        nargs="+",
        metavar="COLUMN",
        help="Input column names in --data, one per model input channel, separated by spaces or commas.",
    )

    parser.add_argument("--length", type=int, default=256, help="Time steps of the searched inputs. Default: 256.")
    parser.add_argument("--starts", type=int, default=8, help="Searches run side by side. Default: 8.")
    parser.add_argument("--steps", type=int, default=100, help="Gradient steps per search round. Default: 100.")
    parser.add_argument("--restarts", type=int, default=1, help="Extra search rounds. Default: 1.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the search. Default: 0.")

    parser.add_argument("--mode", default="scan", help="Scan backend the model runs with. Default: scan.")
    parser.add_argument("--threads", type=int, help="torch CPU threads. Default: torch's own choice.")
    parser.add_argument(
        "--dtype",
        choices=("float64", "stored"),
        default="float64",
        help=(
            "Precision of the searches: 'float64' runs a float64 copy (the exact map of the stored weights, "
            "free of float32 round-off); 'stored' runs the weights in their stored dtype. Default: float64."
        ),
    )
    parser.set_defaults(handler=run_certify)


def run_certify(args: argparse.Namespace) -> int:
    """Run ``nssm certify`` with parsed arguments; return the exit status."""
    for name in ("length", "starts"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    for name in ("steps", "restarts"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be a non-negative integer, got {getattr(args, name)}")
    if (args.data is None) != (args.inputs is None):
        raise ValueError("--data and --inputs go together: name the CSV file and its input columns")
    if args.threads is not None:
        if args.threads <= 0:
            raise ValueError(f"--threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)

    model, extra = load_checkpoint(args.checkpoint)
    windows = None
    if args.data is not None:
        columns = [name for item in args.inputs for name in item.split(",") if name]
        windows = load_input_windows(
            args.data, columns, d_input=model.d_input, length=args.length, count=args.starts,
            normalization=extra.get("normalization"),
        )

    report = certify_model(model, args, windows)
    report["checkpoint"] = str(args.checkpoint)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0 if report["passed"] else 1


def _nonfinite_tensors(model: torch.nn.Module) -> list[str]:
    names = []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() or tensor.is_complex():
            if not bool(torch.isfinite(tensor).all()):
                names.append(name)
    return names


def certify_model(model: DeepSSM, args: argparse.Namespace, windows: torch.Tensor | None) -> dict[str, Any]:
    """Build the report of ``nssm certify`` as JSON-compatible data.

    Args:
        model: The loaded model, in eval mode.
        args: Parsed arguments (search settings, ``mode`` and ``dtype``).
        windows: Normalised data windows ``(n, time, d_input)`` that start extra searches, or ``None``.
    """
    report: dict[str, Any] = {
        "model": {
            "d_input": model.d_input,
            "d_output": model.d_output,
            "config": model.config.model_dump(mode="json"),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        },
        "certificate": None,
        "invalid": [],
        "checks": [],
        "search": {
            "length": args.length, "starts": args.starts, "steps": args.steps, "restarts": args.restarts,
            "seed": args.seed, "mode": args.mode, "dtype": args.dtype, "data_windows": 0 if windows is None else
            int(windows.shape[0]),
        },
        "passed": False,
    }

    # 1. An invalid certificate is reported, never checked: NaN or inf weights certify nothing.
    bad = _nonfinite_tensors(model)
    if bad:
        report["invalid"].append(f"NaN or inf values in {', '.join(bad)}; the certificate is invalid")
        return report
    try:
        certificate = model.certificate()
    except (ValueError, RuntimeError) as error:  # torch.linalg errors are RuntimeErrors
        report["invalid"].append(f"the certificate could not be computed: {error}")
        return report
    report["certificate"] = certificate.to_dict()
    if certificate.bound is None:
        report["invalid"].extend(certificate.notes or ["the model has no certified bound"])
        return report

    # 2. Measure in the requested precision; the bounds come from the evaluated model itself.
    evaluated = model if args.dtype == "stored" else copy.deepcopy(model).double()
    dtype = next(evaluated.parameters()).dtype
    checks = _part_checks(evaluated, args, dtype)
    checks += _model_checks(evaluated, evaluated.certificate(), args, dtype, windows)
    report["checks"] = [check.to_dict() for check in checks]
    report["passed"] = all(check.passed for check in checks)
    return report


def _search_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"starts": args.starts, "steps": args.steps, "restarts": args.restarts, "seed": args.seed}


def _part_checks(model: DeepSSM, args: argparse.Namespace, dtype: torch.dtype) -> list[Check]:
    """Check every certified core and static layer against its own bound."""
    checks = []
    for index, block in enumerate(model.blocks):
        core = block.core
        core_certificate = core.certificate()
        if core_certificate.bound is not None:
            name = f"block {index} core"
            if callable(getattr(core, "lti_matrices", None)):
                started = time.perf_counter()
                with torch.no_grad():
                    norm = hinf_norm(*core.lti_matrices())
                checks.append(
                    Check(name, "hinf", norm, core_certificate.bound, HINF_RELATIVE_TOLERANCE,
                          time.perf_counter() - started)
                )
            else:
                checks += _searches(
                    name, lambda u, core=core: core(u, mode=args.mode), core.d_input, core_certificate.bound,
                    core_certificate.kind, args.length, _search_settings(args), dtype,
                )
        layer = block.layer
        layer_certificate = layer.certificate()
        if layer_certificate.bound is not None:
            # A static layer acts on each time step alone, so single steps suffice.
            checks += _searches(
                f"block {index} layer", layer, layer.d_model, layer_certificate.bound, layer_certificate.kind,
                1, {**_search_settings(args), "starts": max(args.starts, 16)}, dtype,
            )
    return checks


def _model_checks(
    model: DeepSSM,
    certificate: ModelCertificate,
    args: argparse.Namespace,
    dtype: torch.dtype,
    windows: torch.Tensor | None,
) -> list[Check]:
    """Run the searches on the whole model, from screened patterns and from data windows."""
    assert certificate.bound is not None  # checked by the caller
    kind = CertificateKind(certificate.kind)

    def run_model(u: torch.Tensor) -> torch.Tensor:
        return model(u, mode=args.mode)[0]

    checks = _searches(
        "model", run_model, model.d_input, certificate.bound, kind, args.length, _search_settings(args), dtype
    )
    if windows is not None:
        checks += _searches(
            "model (data starts)", run_model, model.d_input, certificate.bound, kind, args.length,
            {**_search_settings(args), "initial": windows}, dtype,
        )
    return checks


def _searches(
    name: str,
    function: Any,
    d_input: int,
    bound: float,
    kind: CertificateKind,
    length: int,
    settings: dict[str, Any],
    dtype: torch.dtype,
) -> list[Check]:
    """Run the plain search and, for incremental certificates, the incremental one."""
    checks = []
    methods = [("search", False)]
    if kind is CertificateKind.INCREMENTAL:
        methods.append(("incremental search", True))
    for method, incremental in methods:
        started = time.perf_counter()
        measured = worst_case_gain(function, d_input, length, incremental=incremental, dtype=dtype, **settings)
        tolerance = SEARCH_RELATIVE_TOLERANCES.get(dtype, 1e-3)
        checks.append(Check(name, method, measured, bound, tolerance, time.perf_counter() - started))
    return checks


def load_input_windows(
    path: str | Path,
    columns: list[str],
    *,
    d_input: int,
    length: int,
    count: int,
    normalization: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Read input columns from a CSV file and cut ``count`` evenly spaced windows.

    Args:
        path: CSV file with a header row.
        columns: Names of the input columns, one per model input channel.
        d_input: The model's input channels.
        length: Window length; the whole record when it is shorter.
        count: Number of windows (fewer when the record is short).
        normalization: The checkpoint's statistics ``{"u_mean": [...], "u_std": [...], ...}``;
            the inputs are normalised with ``u_mean`` and ``u_std`` when present.

    Returns:
        Windows ``(n, min(length, rows), d_input)`` in float64.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If a column is missing, a value is not a number, or the statistics do not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if len(columns) != d_input:
        raise ValueError(f"--inputs names {len(columns)} columns {columns}, but the model has d_input={d_input}")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = [name for name in (reader.fieldnames or []) if name]
        missing = [name for name in columns if name not in header]
        if missing:
            raise ValueError(f"{path} has no column {missing[0]!r}; its columns are {header}")
        rows = [[row.get(name) or "" for name in columns] for row in reader]

    # Shorter columns in one file leave empty cells at the end; trim those rows.
    while rows and all(not cell.strip() for cell in rows[-1]):
        rows.pop()
    values = []
    for number, row in enumerate(rows, start=2):
        try:
            values.append([float(cell) for cell in row])
        except ValueError:
            raise ValueError(f"{path} line {number}: input values {row} are not all numbers") from None
    if not values:
        raise ValueError(f"{path} has no rows of input data in columns {columns}")
    inputs = torch.tensor(values, dtype=torch.float64)
    if not bool(torch.isfinite(inputs).all()):
        raise ValueError(f"{path} contains NaN or inf in columns {columns}")

    if normalization and "u_mean" in normalization and "u_std" in normalization:
        mean = torch.tensor(normalization["u_mean"], dtype=torch.float64).reshape(-1)
        std = torch.tensor(normalization["u_std"], dtype=torch.float64).reshape(-1)
        if mean.numel() != d_input or std.numel() != d_input or not bool((std > 0).all()):
            raise ValueError(
                f"the checkpoint's normalization has u_mean {mean.tolist()} and u_std {std.tolist()}; "
                f"expected {d_input} values each, with positive std"
            )
        inputs = (inputs - mean) / std

    length = min(length, inputs.shape[0])
    last_start = inputs.shape[0] - length
    count = min(count, last_start + 1)
    offsets = torch.linspace(0, last_start, count).round().long().tolist()
    return torch.stack([inputs[offset : offset + length] for offset in offsets])


def _format_number(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)


def format_report(report: dict[str, Any]) -> str:
    """Return the human-readable text of a ``nssm certify`` report."""
    lines = [f"checkpoint: {report['checkpoint']}"]
    config = report["model"]["config"]
    lines.append(
        f"model: DeepSSM d_input={report['model']['d_input']} d_output={report['model']['d_output']} "
        f"param={config['param']} ff={config['ff']} n_layers={config['n_layers']} d_model={config['d_model']} "
        f"d_state={config['d_state']} dtype={report['model']['dtype']}"
    )
    certificate = report["certificate"]
    if certificate is not None:
        lines.append(
            f"certificate: kind {certificate['kind']}, bound "
            f"{_format_number(certificate['bound']) if certificate['bound'] is not None else 'none'}, "
            f"prescribed gamma {certificate['prescribed_gamma']}"
        )
        lines.append("factors (bound = encoder x each block's (1 + core x layer) x decoder x decoder scale):")
        for factor in certificate["factors"]:
            bound = "none" if factor["bound"] is None else _format_number(factor["bound"])
            lines.append(f"  {factor['name']:<18} {bound:>14}  {factor['kind']}")
    for reason in report["invalid"]:
        lines.append(f"invalid: {reason}")

    if report["checks"]:
        search = report["search"]
        lines.append(
            f"checks (searches: length {search['length']}, {search['starts']} starts, {search['steps']} steps, "
            f"{search['restarts']} restarts, {search['dtype']}, mode {search['mode']}):"
        )
        for check in report["checks"]:
            measured = float(check["measured"])
            ratio = float(check["ratio"])
            verdict = "ok" if check["passed"] else "VIOLATED"
            lines.append(
                f"  {check['name']:<20} {check['method']:<19} {_format_number(measured):>12} <= "
                f"{_format_number(check['bound']):<12} ratio {ratio:.4f}  {verdict}"
            )
    if report["passed"]:
        lines.append("result: passed (every measured value is within its certificate)")
    elif report["invalid"]:
        lines.append("result: failed (no valid certificate)")
    else:
        lines.append("result: failed (a measured value exceeds its certificate)")
    return "\n".join(lines)
