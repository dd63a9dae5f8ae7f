"""Measure how nssm's time grows with the sequence length in a warm process, as in a training loop.

``bench_vs_neural_ssm.py`` times every case in a fresh process after a short
warm-up, so its longest cases also pay for mapping gigabytes of fresh memory
(page faults), which a process that keeps running pays only once. Here one
process builds the benchmark model, calls it once at every length, then
times the lengths in turn for ``--rounds`` rounds. The table gives the
fastest and the median run per length and the ratio of each to those of
the shortest length.

Usage::

    python benchmarks/growth.py                               # 16,384 and 65,536 steps
    python benchmarks/growth.py --lengths 4096 16384 --cores l2n --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_neural_ssm import GAMMA, SHAPE, _run_model  # noqa: E402
from floor_gap import build  # noqa: E402


def measure(core: str, task: str, lengths: list[int], rounds: int) -> dict[int, list[float]]:
    """Return the seconds of every timed run, per length."""
    torch.manual_seed(0)
    model = build(core)
    inputs = {length: torch.randn(SHAPE["batch"], length, SHAPE["d_input"]) for length in lengths}

    def run(length: int) -> float:
        start = time.perf_counter()
        _run_model(model, inputs[length], task, "scan")
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    for length in lengths:  # warm-up
        run(length)
    times: dict[int, list[float]] = {length: [] for length in lengths}
    for _ in range(rounds):
        for length in lengths:
            times[length].append(run(length))
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="The ratios compare each length with the shortest one."
    )
    parser.add_argument("--cores", nargs="+", default=["lru", "l2n", "tv"], choices=sorted(GAMMA))
    parser.add_argument("--lengths", nargs="+", type=int, default=[16384, 65536])
    parser.add_argument("--rounds", type=int, default=5, help="number of timed runs per length (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="number of torch threads (default 2)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    lengths = sorted(set(args.lengths))
    if len(lengths) < 2 or lengths[0] < 2:
        parser.error(f"--lengths needs at least two different values of at least 2, got {args.lengths}")
    torch.set_num_threads(args.threads)

    print("| core | task | steps | fastest s | median s | fastest ratio | median ratio |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for core in dict.fromkeys(args.cores):  # each core once, in the order given
        for task in ("forward", "backward"):
            times = measure(core, task, lengths, args.rounds)
            base_fastest, base_median = min(times[lengths[0]]), statistics.median(times[lengths[0]])
            label = "fwd+bwd" if task == "backward" else task
            for length in lengths:
                fastest, median = min(times[length]), statistics.median(times[length])
                print(
                    f"| {core} | {label} | {length} | {fastest:.3f} | {median:.3f} "
                    f"| {fastest / base_fastest:.2f} | {median / base_median:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
