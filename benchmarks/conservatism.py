"""Measure how conservative the certified bound of each certified core is.

For every certified core in the registry (or those named with ``--cores``),
a DeepSSM with ``LGLU`` layers and a prescribed gamma is built, and the
worst-case input search (:func:`nssm_core.analysis.worst_case_gain`) looks
for the largest $\\|y\\| / \\|u\\|$ at initialisation and again after a short
training on the Cascaded Tanks estimation record. The table reports the
ratio (largest gain found) / (certified bound). A ratio near 1 means the
bound is tight. A small ratio means the bound is conservative or the search
is weak, because the search only finds a lower bound of the true gain. Each
block's core is also measured exactly, by the H-infinity norm, when it is LTI.

Run from the repository root::

    python benchmarks/conservatism.py --steps 300 --output conservatism.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import time
from pathlib import Path

import torch

from nssm_core import CertificateKind, DeepSSM, PluginKind, get_registry
from nssm_core.analysis import hinf_norm, worst_case_gain

DATA = Path(__file__).resolve().parent.parent / "nssm_core" / "data" / "cascaded_tanks.csv"


def load_cascaded_tanks(path: Path) -> dict[str, torch.Tensor]:
    """Read the columns ``uEst, yEst, uVal, yVal`` as float64 tensors ``(time, 1)``."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {
        name: torch.tensor([float(row[name]) for row in rows if row[name].strip()], dtype=torch.float64).unsqueeze(-1)
        for name in ("uEst", "yEst", "uVal", "yVal")
    }


def core_hinf_ratios(model: DeepSSM) -> list[float]:
    """Return H-infinity norm / bound of every LTI core in the model."""
    ratios = []
    for block in model.blocks:
        core = block.core
        if callable(getattr(core, "lti_matrices", None)):
            with torch.no_grad():
                ratios.append(hinf_norm(*core.lti_matrices()) / float(core.bound()))
    return ratios


def searched_ratio(model: DeepSSM, windows: torch.Tensor, args: argparse.Namespace) -> tuple[float, float]:
    """Return (largest gain found) / bound, from screened patterns and from data windows, and the bound."""
    evaluated = DeepSSM(model.d_input, model.d_output, config=model.config).double()
    evaluated.load_state_dict(model.state_dict())
    evaluated.eval()
    bound = evaluated.certificate().bound
    settings = {"starts": args.search_starts, "steps": args.search_steps, "restarts": args.restarts, "seed": args.seed}
    found = worst_case_gain(evaluated, 1, args.search_length, dtype=torch.float64, **settings)
    from_data = worst_case_gain(evaluated, 1, initial=windows, dtype=torch.float64, **settings)
    return max(found, from_data) / bound, bound


def train(model: DeepSSM, u: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> float:
    """Fit the model to one normalised record with Adam on the mean squared error; return the last loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    loss = torch.tensor(math.nan)
    for _ in range(steps):
        optimizer.zero_grad()
        prediction, _ = model(u, mode="scan")
        loss = torch.mean((prediction - y) ** 2)
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())


def measure_core(name: str, data: dict[str, torch.Tensor], args: argparse.Namespace) -> dict[str, object]:
    """Build, measure, train and measure again one core; return a table row."""
    torch.manual_seed(args.seed)
    model = DeepSSM(
        1, 1, d_model=args.d_model, d_state=args.d_state, n_layers=args.n_layers, param=name, ff="LGLU",
        gamma=args.gamma,
    )
    u_mean, u_std = data["uEst"].mean(), data["uEst"].std()
    y_mean, y_std = data["yEst"].mean(), data["yEst"].std()
    u_est = ((data["uEst"] - u_mean) / u_std).float().unsqueeze(0)
    y_est = ((data["yEst"] - y_mean) / y_std).float().unsqueeze(0)
    u_val = ((data["uVal"] - u_mean) / u_std).float().unsqueeze(0)

    # Data windows start extra searches: evenly spaced slices of the estimation input.
    length = min(args.search_length, u_est.shape[1])
    offsets = torch.linspace(0, u_est.shape[1] - length, args.search_starts).long().tolist()
    windows = torch.cat([u_est[:, offset : offset + length] for offset in offsets]).double()

    started = time.perf_counter()
    initial_ratio, bound = searched_ratio(model, windows, args)
    initial_hinf = core_hinf_ratios(model)
    loss = train(model, u_est, y_est, args.steps, args.lr)
    trained_ratio, trained_bound = searched_ratio(model, windows, args)
    trained_hinf = core_hinf_ratios(model)
    with torch.no_grad():
        prediction, _ = model(u_val, mode="scan")
    rmse = float(torch.sqrt(torch.mean((prediction.double()[0] * y_std + y_mean - data["yVal"]) ** 2)))
    return {
        "core": name,
        "certificate": model.certificate().kind,
        "bound": bound,
        "ratio_init": initial_ratio,
        "ratio_trained": trained_ratio,
        "bound_trained": trained_bound,
        "core_hinf_ratio_init": initial_hinf,
        "core_hinf_ratio_trained": trained_hinf,
        "train_mse": loss,
        "test_rmse_volts": rmse,
        "seconds": time.perf_counter() - started,
    }


def format_table(rows: list[dict[str, object]]) -> str:
    """Return the rows as a Markdown table."""
    lines = [
        "| core | certificate | found / bound at init | found / bound trained | core H-inf / bound (trained) "
        "| test RMSE (V) | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        hinf = row["core_hinf_ratio_trained"]
        hinf_text = ", ".join(f"{value:.3f}" for value in hinf) if hinf else "not LTI"
        lines.append(
            f"| {row['core']} | {row['certificate']} | {row['ratio_init']:.3f} | {row['ratio_trained']:.3f} "
            f"| {hinf_text} | {row['test_rmse_volts']:.3f} | {row['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cores", nargs="+", help="Core names; by default every certified core in the registry.")
    parser.add_argument("--gamma", type=float, default=2.0, help="Prescribed model gain. Default: 2.")
    parser.add_argument("--d-model", type=int, default=16, help="Default: 16.")
    parser.add_argument("--d-state", type=int, default=16, help="Default: 16.")
    parser.add_argument("--n-layers", type=int, default=2, help="Default: 2.")
    parser.add_argument("--steps", type=int, default=300, help="Adam steps on the estimation record. Default: 300.")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate. Default: 3e-3.")
    parser.add_argument("--search-length", type=int, default=512, help="Searched input length. Default: 512.")
    parser.add_argument("--search-starts", type=int, default=8, help="Searches side by side. Default: 8.")
    parser.add_argument("--search-steps", type=int, default=150, help="Search steps per round. Default: 150.")
    parser.add_argument("--restarts", type=int, default=2, help="Extra search rounds. Default: 2.")
    parser.add_argument("--seed", type=int, default=0, help="Default: 0.")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads. Default: 1.")
    parser.add_argument("--output", type=Path, help="Also write the rows and the settings as JSON here.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    registry = get_registry()
    names = args.cores or [
        entry.name for entry in registry.entries(PluginKind.CORE) if entry.certificate is not CertificateKind.NONE
    ]
    data = load_cascaded_tanks(DATA)
    rows = []
    for name in names:
        row = measure_core(name, data, args)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(format_table(rows))
    if args.output is not None:
        machine = f"{platform.machine()} {platform.processor() or ''}, {args.threads} thread(s), torch {torch.__version__}"
        settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
        args.output.write_text(json.dumps({"machine": machine, "settings": settings, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
