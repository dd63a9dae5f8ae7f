"""Time nssm, an idealised copy of it and its dense-products floor, to see how close eager PyTorch can come.

``bench_vs_neural_ssm.py`` compares nssm with its compute floor, the matrix
products alone. This script estimates how much of the remaining gap a pure
PyTorch (eager) implementation of the same model could close. Next to the
model and the floor it times an *idealised* model, which computes wrong
values, and whose scan and pair sort cost less than any correct eager
implementation of those two steps:

- Every diagonal scan is replaced by one elementwise product, ``x_{t+1} = a_t b_t``,
  written next to the initial state. A correct scan has to read the drives
  and write the states at least once. In eager mode its sequential
  dependency also costs either one small operation per time step or several
  passes over the sequence (the chunked scan makes about three).
- Every pair sort of the ``TLIP`` layer is replaced by one ``relu``, where the
  correct sort needs a comparison and two shifted minimum and maximum
  operations.

Everything else (products, the output and residual sums, the ``tv`` core's
normalisation) runs as in nssm. The three variants alternate in one process
for ``--rounds`` rounds, and each cell is the fastest run.

Usage::

    python benchmarks/floor_gap.py                      # 16,384 steps, lru, l2n and tv
    python benchmarks/floor_gap.py --lengths 4096 --cores l2n --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_neural_ssm import GAMMA, SHAPE, _record_products, _replay_products, _run_model  # noqa: E402

import nssm_plugins.backends._scan as scan_backends  # noqa: E402
import nssm_plugins.layers._lipschitz as lipschitz  # noqa: E402
from nssm_core import DeepSSM, SSMConfig  # noqa: E402


def _one_pass_scan(self: object, a: torch.Tensor, b: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Return ``x_0`` followed by ``a_t b_t``: the cost of one pass in place of a diagonal scan, with wrong values."""
    return torch.cat([x0.unsqueeze(1), a * b], dim=1)


def _one_op_sort(z: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Return ``relu(z)``: one operation in place of the centered pair sort, with wrong values."""
    return torch.relu(z)


@contextlib.contextmanager
def idealised() -> Iterator[None]:
    """Replace the ``mode="scan"`` diagonal scan and the TLIP pair sort by their one-pass versions within the block."""
    saved_scan = scan_backends.DefaultScanBackend.diagonal
    saved_sort = lipschitz.centered_sort_halves
    scan_backends.DefaultScanBackend.diagonal = _one_pass_scan  # type: ignore[method-assign]
    lipschitz.centered_sort_halves = _one_op_sort
    try:
        yield
    finally:
        scan_backends.DefaultScanBackend.diagonal = saved_scan  # type: ignore[method-assign]
        lipschitz.centered_sort_halves = saved_sort


def build(core: str) -> DeepSSM:
    """Build the model of ``bench_vs_neural_ssm.py``: d_model 32, d_state 64, 4 blocks, TLIP layers."""
    fields = {"d_model": SHAPE["d_model"], "d_state": SHAPE["d_state"], "n_layers": SHAPE["n_layers"],
              "param": core, "ff": "TLIP"}
    if GAMMA[core] is not None:
        fields["gamma"] = GAMMA[core]
    return DeepSSM(d_input=SHAPE["d_input"], d_output=SHAPE["d_output"], config=SSMConfig(**fields))


def timed(run: Callable[[], None]) -> float:
    """Return the wall-clock seconds of one call of ``run``."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def measure(core: str, task: str, length: int, rounds: int) -> dict[str, float]:
    """Return the fastest seconds of the model, the idealised model and the floor."""
    torch.manual_seed(0)
    model = build(core)
    u = torch.randn(SHAPE["batch"], length, SHAPE["d_input"])

    def run_model() -> None:
        _run_model(model, u, task, "scan")
        model.zero_grad(set_to_none=True)

    def run_idealised() -> None:
        with idealised():
            run_model()

    floor = _replay_products(_record_products(model, u, task, "scan"))
    variants = {"nssm": run_model, "idealised": run_idealised, "floor": floor}
    for run in variants.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            times[name].append(timed(run))
    return {name: min(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", nargs="+", default=["lru", "l2n", "tv"], choices=sorted(GAMMA))
    parser.add_argument("--lengths", nargs="+", type=int, default=[16384])
    parser.add_argument("--rounds", type=int, default=5, help="number of timed runs of each variant (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="number of torch threads (default 2)")
    args = parser.parse_args(argv)
    for name in ("rounds", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if any(length < 2 for length in args.lengths):
        parser.error(f"every --lengths value must be at least 2, got {args.lengths}")
    torch.set_num_threads(args.threads)

    print("| core | steps | task | nssm s | idealised s | floor s | nssm / floor | idealised / floor |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for length in args.lengths:
        for core in dict.fromkeys(args.cores):  # each core once, in the order given
            for task in ("forward", "backward"):
                seconds = measure(core, task, length, args.rounds)
                label = "fwd+bwd" if task == "backward" else task
                print(
                    f"| {core} | {length} | {label} | {seconds['nssm']:.3f} | {seconds['idealised']:.3f} "
                    f"| {seconds['floor']:.3f} | {seconds['nssm'] / seconds['floor']:.2f} "
                    f"| {seconds['idealised'] / seconds['floor']:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
