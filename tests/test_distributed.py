"""Data-parallel ``nssm train``: two gloo processes on this machine against one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from nssm_core.cli import main


def _write_record(path: Path, length: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn(length, generator=generator)
    y = torch.zeros(length)
    state = 0.0
    for t in range(length):
        y[t] = state
        state = 0.7 * state + 0.4 * float(u[t])
    lines = ["u,y"] + [f"{u[t]:.6f},{y[t]:.6f}" for t in range(length)]
    path.write_text("\n".join(lines) + "\n")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("time_blocks", [False, True], ids=["one-pass", "recomputed-time-blocks"])
def test_two_processes_match_one(tmp_path, time_blocks):
    # Two records of different lengths: windows and a shorter whole record, so the global batch
    # is padded and masked, and each process gets a different share of it.
    scale = 15 if time_blocks else 1  # windows of 600 steps run in time blocks of 256 steps
    _write_record(tmp_path / "a.csv", 130 * scale, seed=1)
    _write_record(tmp_path / "b.csv", 33 * scale, seed=2)
    common = [
        "train", "--data", str(tmp_path / "*.csv"), "--inputs", "u", "--outputs", "y", "--test-fraction", "0.2",
        "--window", str(40 * scale), "--batch-size", "4", "--epochs", "5", "--washout", "3", "--dropout", "0",
        "--d-model", "4", "--d-state", "4", "--n-layers", "1", "--search-steps", "1", "--threads", "1", "--quiet",
        "--checkpoint-every", "5",
    ]
    if time_blocks:
        common += ["--training-block-elements", "4", "--recompute-time-blocks"]

    outputs, processes = _launch_two_ranks(tmp_path, common, attempt=0)
    if any(process.returncode != 0 for process in processes):
        # NOTE: rank 1 once aborted during interpreter shutdown after its work was done, before the
        # CLI ended workers with os._exit. A rank that fails twice is reported with both outputs.
        first_outputs = outputs
        outputs, processes = _launch_two_ranks(tmp_path, common, attempt=1)
        for rank, process in enumerate(processes):
            assert process.returncode == 0, (
                f"rank {rank} failed twice:\n{outputs[rank]}\nfirst attempt:\n{first_outputs[rank]}"
            )

    assert main([*common, "--out", str(tmp_path / "single")]) == 0

    parallel, single = tmp_path / "parallel_rank0", tmp_path / "single"
    assert not (tmp_path / "parallel_rank1").exists(), "rank 1 wrote files"
    parallel_weights = load_file(str(parallel / "model.safetensors"))
    single_weights = load_file(str(single / "model.safetensors"))
    assert parallel_weights.keys() == single_weights.keys()
    for name, value in single_weights.items():
        torch.testing.assert_close(parallel_weights[name], value, rtol=1e-5, atol=1e-6, msg=name)

    parallel_metrics = json.loads((parallel / "metrics.json").read_text())
    single_metrics = json.loads((single / "metrics.json").read_text())
    assert parallel_metrics["processes"] == 2
    assert single_metrics["processes"] == 1
    assert parallel_metrics["final_train_loss"] == pytest.approx(single_metrics["final_train_loss"], rel=1e-5)

    with safe_open(str(parallel / "checkpoint.safetensors"), framework="pt") as handle:
        names = set(handle.keys())
        progress = json.loads(handle.metadata()["progress"])
    assert {"rng/cpu/0", "rng/cpu/1"} <= names
    assert progress["world_size"] == 2
    assert len(progress["losses"]) == 5


def _launch_two_ranks(tmp_path, common, attempt):
    """Start ranks 0 and 1 of a two-process run; return their outputs and finished processes."""
    # The worker environment torchrun would set, but with a file rendezvous: torch's TCP
    # store listens on every interface, and gloo then connects over the loopback only.
    rendezvous = tmp_path / f"rendezvous{attempt}"
    processes = []
    for rank in range(2):
        env = {
            **os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1",
        }
        if "lo" in {name for _, name in socket.if_nameindex()}:
            env["GLOO_SOCKET_IFNAME"] = "lo"
        out = tmp_path / f"parallel_rank{rank}"
        command = [
            sys.executable, "-m", "nssm_core.cli", *common, "--out", str(out),
            "--dist-init-method", f"file://{rendezvous}",
        ]
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    return outputs, processes
