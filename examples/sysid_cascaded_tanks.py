"""Identify the Cascaded Tanks benchmark with a certified DeepSSM, from Python.

The benchmark is a two-tank water system: pump voltage in, water level of the
lower tank out (in volts), with overflow saturation. The script follows the
standard protocol: train on the estimation record, then simulate the test
record from its input alone (free run from the zero state) and report the
RMSE in volts. Inputs and outputs are normalised with estimation-record
statistics.

The data ship with nssm as ``nssm_core/data/cascaded_tanks.csv`` (CC BY-SA 4.0,
from nonlinearbenchmark.org; see ``CASCADED_TANKS_LICENSE.md`` beside it).

The default run is short, a smoke test of the pipeline; the RMSE of a full
run needs ``--epochs 2000`` or more.

Usage::

    python examples/sysid_cascaded_tanks.py
    python examples/sysid_cascaded_tanks.py --epochs 2000 --plot tanks.png
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from importlib.resources import files

import torch

from nssm_core import DeepSSM, SSMConfig


def load_cascaded_tanks() -> dict[str, torch.Tensor]:
    """Return the four records ``uEst, yEst, uVal, yVal`` as float64 tensors of shape ``(1, 1024, 1)``."""
    text = (files("nssm_core") / "data" / "cascaded_tanks.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    records = {}
    for column in ("uEst", "yEst", "uVal", "yVal"):
        values = [float(row[column]) for row in rows]
        records[column] = torch.tensor(values, dtype=torch.float64).reshape(1, -1, 1)
    return records


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=60, help="Full-batch training steps (default: 60).")
    parser.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate (default: 5e-3).")
    parser.add_argument("--param", default="l2n", help="Registry name of the dynamic core (default: l2n).")
    parser.add_argument("--ff", default="LGLU", help="Registry name of the static layer (default: LGLU).")
    parser.add_argument(
        "--gamma",
        type=float,
        default=5.0,
        help="Prescribed L2 gain on normalised signals; 0 trains an unconstrained model (default: 5).",
    )
    parser.add_argument("--d-model", type=int, default=16, help="Width between blocks (default: 16).")
    parser.add_argument("--d-state", type=int, default=16, help="State width of each core (default: 16).")
    parser.add_argument("--n-layers", type=int, default=2, help="Number of residual blocks (default: 2).")
    parser.add_argument("--mode", default="scan", help="Scan backend that runs the recurrences (default: scan).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed (default: 0).")
    parser.add_argument("--plot", metavar="PNG", help="Save a plot of the test-record simulation to this file.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> float:
    """Train, simulate the test record and return its RMSE in volts."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    data = load_cascaded_tanks()

    # Normalise with estimation-record statistics only.
    u_mean, u_std = data["uEst"].mean(), data["uEst"].std()
    y_mean, y_std = data["yEst"].mean(), data["yEst"].std()
    u_train = ((data["uEst"] - u_mean) / u_std).float()
    y_train = ((data["yEst"] - y_mean) / y_std).float()
    u_test = ((data["uVal"] - u_mean) / u_std).float()

    config = SSMConfig(
        d_model=args.d_model,
        d_state=args.d_state,
        n_layers=args.n_layers,
        param=args.param,
        ff=args.ff,
        gamma=args.gamma if args.gamma > 0 else None,
    )
    model = DeepSSM(1, 1, config=config)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        optimizer.zero_grad()
        prediction, _ = model(u_train, mode=args.mode)
        loss = torch.nn.functional.mse_loss(prediction, y_train)
        loss.backward()
        optimizer.step()
        if epoch == 1 or epoch % max(1, args.epochs // 10) == 0 or epoch == args.epochs:
            print(f"epoch {epoch:5d}  training MSE (normalised) {loss.item():.4f}")
    elapsed = time.perf_counter() - started

    model.eval()
    with torch.no_grad():
        simulated, _ = model(u_test, mode=args.mode)
    simulated_volts = simulated.double() * y_std + y_mean
    rmse = math.sqrt(float((simulated_volts - data["yVal"]).pow(2).mean()))

    certificate = model.certificate()
    print(f"trained {args.epochs} epochs in {elapsed:.1f} s")
    print(f"test-record simulation RMSE: {rmse:.3f} V")
    if certificate.bound is None:
        print("certificate: none (unconstrained model)")
    else:
        print(f"certificate: {certificate.kind} bound {certificate.bound:.4f} on normalised signals")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(9, 3.5))
        seconds = torch.arange(data["yVal"].shape[1]) * 4.0
        axis.plot(seconds, data["yVal"].flatten(), label="measured", color="black", linewidth=1)
        axis.plot(seconds, simulated_volts.flatten(), label=f"simulated (RMSE {rmse:.3f} V)", linewidth=1)
        axis.set_xlabel("time [s]")
        axis.set_ylabel("lower tank level [V]")
        axis.set_title("Cascaded Tanks, test record: free-run simulation")
        axis.legend()
        figure.tight_layout()
        figure.savefig(args.plot, dpi=120)
        print(f"saved {args.plot}")
    return rmse


if __name__ == "__main__":
    main()
