"""Time nssm against neural-ssm 0.44 on the same DeepSSM shapes, side by side.

Every measurement runs in a fresh subprocess, so its peak resident memory
(``ru_maxrss``) belongs to that measurement alone. neural-ssm runs in its own
virtual environment (created on first use with
``python -m venv VENV && VENV/bin/pip install torch==2.13.0 neural-ssm==0.44.0``)
and is only executed, through its public API ``from neural_ssm import DeepSSM,
SSMConfig``. The two libraries alternate within one run so that slow phases of
a shared machine hit both.

The compute floor replays, alone, exactly the matrix products (``aten.mm``,
``addmm``, ``bmm`` and similar) that the nssm model runs, recorded with a
``TorchDispatchMode`` during one call, on preallocated inputs of the same
shapes, strides and dtypes.

Usage::

    python benchmarks/bench_vs_neural_ssm.py            # 1k, 4k, 16k and 64k steps
    python benchmarks/bench_vs_neural_ssm.py --quick    # 1k and 4k steps, one round
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_VENV = Path("/tmp/nssm-bench-venv")
OLD_REQUIREMENTS = ["torch==2.13.0", "neural-ssm==0.44.0"]
SHAPE = {"batch": 8, "d_model": 32, "d_state": 64, "n_layers": 4, "d_input": 1, "d_output": 1}
GAMMA = {"l2n": 2.0, "tv": 2.0, "lru": None}
TASKS = ("forward", "backward")  # "backward" times forward plus backward
WARMUP_LENGTH = 1024


# --------------------------------------------------------------------------------------------
# Worker side: runs in a fresh interpreter, prints one JSON line.
# --------------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # ru_maxrss is in KiB on Linux


def _build_model(spec: dict[str, Any]) -> Any:
    fields = {
        "d_model": SHAPE["d_model"],
        "d_state": SHAPE["d_state"],
        "n_layers": SHAPE["n_layers"],
        "param": spec["param"],
        "ff": spec["ff"],
    }
    if GAMMA[spec["param"]] is not None:
        fields["gamma"] = GAMMA[spec["param"]]
    if spec["library"] == "neural_ssm":
        from neural_ssm import DeepSSM, SSMConfig
    else:
        from nssm_core import DeepSSM, SSMConfig
    model = DeepSSM(d_input=SHAPE["d_input"], d_output=SHAPE["d_output"], config=SSMConfig(**fields))
    if spec["library"] != "neural_ssm" and spec.get("recompute"):
        model.recompute_time_blocks = True
    return model


def _run_model(model: Any, u: Any, task: str, mode: str) -> None:
    import torch

    if task == "forward":
        with torch.no_grad():
            model(u, mode=mode)
    else:
        y, _ = model(u, mode=mode)
        y.square().mean().backward()


def _record_products(model: Any, u: Any, task: str, mode: str) -> list[tuple[Any, list[Any]]]:
    """Run the model once and return the matrix products it dispatched, as (op, argument metadata)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    product_ops = {
        aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
        aten.mv.default, aten.addmv.default, aten.dot.default, aten.vdot.default,
        aten._addmm_activation.default,
    }
    recorded: list[tuple[Any, list[Any]]] = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            if func in product_ops:
                described = [
                    ("tensor", tuple(a.shape), tuple(a.stride()), a.dtype) if isinstance(a, torch.Tensor) else ("value", a)
                    for a in args
                ]
                recorded.append((func, described))
            return func(*args, **(kwargs or {}))

    with Recorder():
        _run_model(model, u, task, mode)
    model.zero_grad(set_to_none=True)
    return recorded


def _replay_products(recorded: list[tuple[Any, list[Any]]]) -> Any:
    """Return a function that runs the recorded products on preallocated random inputs."""
    import torch

    calls = []
    for func, described in recorded:
        args = []
        for item in described:
            if item[0] == "tensor":
                _, shape, stride, dtype = item
                storage = sum((size - 1) * step for size, step in zip(shape, stride)) + 1 if all(shape) else 1
                base = torch.randn(storage, dtype=dtype) * 0.1
                args.append(torch.as_strided(base, shape, stride))
            else:
                args.append(item[1])
        calls.append((func, args))

    def replay() -> None:
        for func, args in calls:
            func(*args)

    return replay


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the model, warm up, time ``spec['repeats']`` runs and return times and peak memory."""
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model = _build_model(spec)
    batch = SHAPE["batch"]
    mode = spec["mode"] if spec["library"] != "neural_ssm" else "scan"

    warmup = torch.randn(batch, WARMUP_LENGTH, SHAPE["d_input"])
    _run_model(model, warmup, spec["task"], mode)
    model.zero_grad(set_to_none=True)
    u = torch.randn(batch, spec["length"], SHAPE["d_input"])

    if spec["library"] == "floor":
        run = _replay_products(_record_products(model, u, spec["task"], mode))
        run()
    else:
        def run() -> None:
            _run_model(model, u, spec["task"], mode)
            model.zero_grad(set_to_none=True)

    wall, cpu = [], []
    for _ in range(spec["repeats"]):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - wall_start)
        cpu.append(time.process_time() - cpu_start)
    chosen = cpu if spec["clock"] == "cpu" else wall
    return {"seconds": min(chosen), "wall_seconds": wall, "cpu_seconds": cpu, "peak_rss_mb": _peak_rss_mb()}


# --------------------------------------------------------------------------------------------
# Driver side.
# --------------------------------------------------------------------------------------------


def ensure_old_venv(venv: Path) -> Path:
    """Return the interpreter of the neural-ssm environment, creating the environment if it is missing."""
    python = venv / "bin" / "python"
    if python.exists():
        check = subprocess.run([str(python), "-c", "import neural_ssm"], capture_output=True, text=True)
        if check.returncode == 0:
            return python
    print(f"creating {venv} with {' '.join(OLD_REQUIREMENTS)}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", *OLD_REQUIREMENTS], check=True)
    return python


# glibc settings for --keep-freed-memory: never map large blocks separately and never give freed memory
# back, so a freed tensor's pages are reused instead of being faulted in again for the next one.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


def run_worker(python: Path, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter and return its result, or an ``error`` entry."""
    environment = dict(os.environ)
    environment["OMP_NUM_THREADS"] = str(spec["threads"])
    environment["MKL_NUM_THREADS"] = str(spec["threads"])
    if spec.get("keep_freed_memory"):
        environment.update(KEEP_FREED_MEMORY)
    command = [str(python), str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit code {completed.returncode}: {last}"}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def available_memory_mb() -> float:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    return float("inf")


def nssm_has(kind: str, name: str) -> bool:
    from nssm_core import get_registry

    return name in get_registry().names(kind)


def choose_layer(old_python: Path) -> str:
    """Return TLIP if both libraries build it, else LGLU (defined identically in both)."""
    if nssm_has("layer", "TLIP"):
        probe = {"library": "neural_ssm", "param": "l2n", "ff": "TLIP"}
        script = (
            "import json, sys; sys.path.insert(0, sys.argv[1]); import bench_vs_neural_ssm as b; "
            "b._build_model(json.loads(sys.argv[2]))"
        )
        check = subprocess.run(
            [str(old_python), "-c", script, str(Path(__file__).resolve().parent), json.dumps(probe)],
            capture_output=True, text=True,
        )
        if check.returncode == 0:
            return "TLIP"
    return "LGLU"


def fastest_result(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine the rounds of one case: the fastest time and the largest peak memory."""
    good = [r for r in results if "error" not in r]
    if not good:
        return results[0] if results else {"error": "not run"}
    return {
        "seconds": min(r["seconds"] for r in good),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in good),
        "rounds": len(good),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    old_python = ensure_old_venv(args.venv)
    layer = args.layer or choose_layer(old_python)
    cores = list(args.cores)
    results: dict[str, Any] = {
        "layer": layer, "mode": args.mode, "threads": args.threads, "clock": args.clock,
        "keep_freed_memory": args.keep_freed_memory, "recompute": args.recompute, "rows": []
    }
    previous_old_peak: dict[tuple[str, str], tuple[int, float]] = {}

    for length in args.lengths:
        # Above 16,384 steps neural-ssm's fwd+bwd takes tens of seconds, so those lengths get one round fewer.
        # The timed runs per worker stay the same, because with one run only the first call at a new length
        # (with fresh allocations) would be timed.
        rounds = args.rounds if length <= 16384 else max(1, args.rounds - 1)
        repeats = args.repeats
        for core in cores:
            in_nssm = nssm_has("core", core)
            for task in TASKS:
                row: dict[str, Any] = {"core": core, "length": length, "task": task}
                base = {"param": core, "ff": layer, "length": length, "task": task, "threads": args.threads,
                        "repeats": repeats, "mode": args.mode, "clock": args.clock,
                        "keep_freed_memory": args.keep_freed_memory, "recompute": args.recompute}
                old_skip = None
                if (core, task) in previous_old_peak:
                    old_length, old_peak = previous_old_peak[(core, task)]
                    estimate = old_peak * length / old_length
                    if estimate > 0.8 * available_memory_mb():
                        old_skip = f"skipped: would need about {estimate / 1024:.1f} GB"
                per_library: dict[str, list[dict[str, Any]]] = {"nssm": [], "neural_ssm": []}
                for index in range(rounds):
                    order = ["nssm", "neural_ssm"] if index % 2 == 0 else ["neural_ssm", "nssm"]
                    for library in order:
                        if library == "nssm" and not in_nssm:
                            continue
                        if library == "neural_ssm" and old_skip:
                            continue
                        python = old_python if library == "neural_ssm" else Path(sys.executable)
                        outcome = run_worker(python, {**base, "library": library}, args.timeout)
                        per_library[library].append(outcome)
                        print(f"  {core:4s} T={length:6d} {task:8s} {library:10s} {outcome}", file=sys.stderr, flush=True)
                row["nssm"] = fastest_result(per_library["nssm"]) if in_nssm else {"error": "core not in nssm"}
                row["neural_ssm"] = {"error": old_skip} if old_skip else fastest_result(per_library["neural_ssm"])
                if in_nssm:
                    floor = run_worker(Path(sys.executable), {**base, "library": "floor"}, args.timeout)
                    print(f"  {core:4s} T={length:6d} {task:8s} floor      {floor}", file=sys.stderr, flush=True)
                    row["floor"] = floor
                if "peak_rss_mb" in row["neural_ssm"]:
                    previous_old_peak[(core, task)] = (length, row["neural_ssm"]["peak_rss_mb"])
                results["rows"].append(row)
    return results


def _seconds(entry: dict[str, Any] | None) -> float | None:
    return entry.get("seconds") if entry else None


def _cell(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or denominator is None or denominator == 0:
        return "n/a"
    return f"{numerator / denominator:.2f}"


def render(results: dict[str, Any]) -> str:
    """Return the results as markdown tables."""
    lines = [
        f"Static layer {results['layer']}, nssm mode={results['mode']!r}, neural-ssm mode='scan', "
        f"{results['threads']} threads, {results['clock']} clock. Times in seconds, the fastest timed run over all "
        "rounds; "
        "peak memory is the worker's maximum resident set in MB."
        + (" Both libraries ran with glibc's " + ", ".join(f"{k}={v}" for k, v in KEEP_FREED_MEMORY.items()) + "."
           if results.get("keep_freed_memory") else "")
        + (" nssm ran with recompute_time_blocks=True." if results.get("recompute") else ""),
        "",
        "| core | steps | task | nssm s | neural-ssm s | speed-up | floor s | nssm / floor | nssm MB | neural-ssm MB | memory ratio |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    by_key = {}
    for row in results["rows"]:
        new, old, floor = row.get("nssm", {}), row.get("neural_ssm", {}), row.get("floor", {})
        by_key[(row["core"], row["length"], row["task"])] = new
        task = "forward" if row["task"] == "forward" else "fwd+bwd"
        old_time = _cell(_seconds(old)) if "error" not in old else old["error"]
        new_time = _cell(_seconds(new)) if "error" not in new else new["error"]
        lines.append(
            f"| {row['core']} | {row['length']} | {task} | {new_time} | {old_time} "
            f"| {_ratio(_seconds(old), _seconds(new))} | {_cell(_seconds(floor))} "
            f"| {_ratio(_seconds(new), _seconds(floor))} | {_cell(new.get('peak_rss_mb'), 0)} "
            f"| {_cell(old.get('peak_rss_mb'), 0)} | {_ratio(new.get('peak_rss_mb'), old.get('peak_rss_mb'))} |"
        )
    lengths = sorted({row["length"] for row in results["rows"]})
    if 16384 in lengths and 65536 in lengths:
        lines += ["", "| core | task | nssm time(65536) / time(16384) |", "| --- | --- | ---: |"]
        for core in dict.fromkeys(row["core"] for row in results["rows"]):
            for task in TASKS:
                long_run, short_run = by_key.get((core, 65536, task)), by_key.get((core, 16384, task))
                label = "forward" if task == "forward" else "fwd+bwd"
                lines.append(f"| {core} | {label} | {_ratio(_seconds(long_run), _seconds(short_run))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="1024 and 4096 steps, one round of one repeat.")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536], help="Sequence lengths.")
    parser.add_argument("--cores", nargs="+", default=["lru", "l2n", "tv"], help="Core names to compare.")
    parser.add_argument("--layer", help="Static layer name; default TLIP if both libraries have it, else LGLU.")
    parser.add_argument("--mode", default="scan", help="nssm scan backend (mode=) to time. Default: scan.")
    parser.add_argument(
        "--keep-freed-memory", action="store_true",
        help="Run both libraries with glibc settings that reuse freed memory instead of returning it to the system.",
    )
    parser.add_argument(
        "--recompute", action="store_true",
        help="Run nssm with recompute_time_blocks=True: its fwd+bwd recomputes each time block in the backward pass.",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads per measurement. Default: 2.")
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall",
        help="wall: elapsed time; cpu: the worker's process CPU time, less sensitive to other load. Default: wall.",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="Alternating rounds per case (one fewer above 16384 steps)."
    )
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs per worker; the fastest counts.")
    parser.add_argument("--timeout", type=float, default=900.0, help="Seconds before a worker is stopped.")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="Virtual environment holding neural-ssm 0.44.")
    parser.add_argument("--json", type=Path, help="Also write the raw results to this JSON file.")
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.quick:
        args.lengths, args.rounds, args.repeats = [1024, 4096], 1, 1

    started = time.perf_counter()
    results = measure(args)
    results["wall_seconds"] = time.perf_counter() - started
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(render(results))
    print(f"\nTotal benchmark time: {results['wall_seconds'] / 60:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
