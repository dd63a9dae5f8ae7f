"""Resumable training: checkpoints survive SIGKILL, resume exactly, and bad files are rejected untouched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

import nssm_core._train_state as train_state
import nssm_core.checkpoint as checkpoint_module
import nssm_core.training as training
from nssm_core import DeepSSM
from nssm_core.checkpoint import CheckpointError, load_checkpoint
from nssm_core.cli import main
from nssm_core.data import Record

TINY = ["--d-model", "4", "--d-state", "4", "--n-layers", "1", "--search-steps", "1", "--threads", "1", "--quiet"]


def _write_record(path: Path, length: int = 200) -> None:
    generator = torch.Generator().manual_seed(3)
    u = torch.randn(length, generator=generator)
    y = torch.zeros(length)
    state = 0.0
    for t in range(length):
        y[t] = state
        state = 0.8 * state + 0.3 * float(u[t])
    path.write_text("\n".join(["u,y"] + [f"{u[t]:.6f},{y[t]:.6f}" for t in range(length)]) + "\n")


def _progress(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["progress"])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_after_sigkill_matches_uninterrupted(tmp_path):
    data = tmp_path / "data.csv"
    _write_record(data)
    # Dropout and shuffled mini-batches make the run depend on every saved RNG state.
    arguments = [
        "train", "--data", str(data), "--inputs", "u", "--outputs", "y", "--test-fraction", "0.2",
        "--window", "32", "--batch-size", "3", "--epochs", "150", "--checkpoint-every", "10",
        "--dropout", "0.1", "--seed", "7", *TINY,
    ]
    killed_out = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "nssm_core.cli", *arguments, "--out", str(killed_out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    checkpoint = killed_out / "checkpoint.safetensors"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode() if process.stderr else ""
    process.stderr.close()
    killed_step = len(_progress(checkpoint)["losses"])
    assert 0 < killed_step < 150, f"the run was not stopped midway (step {killed_step})"
    assert not (killed_out / "model.safetensors").exists()

    assert main([*arguments, "--out", str(killed_out), "--resume"]) == 0
    assert main([*arguments, "--out", str(tmp_path / "whole")]) == 0

    resumed = _progress(checkpoint)
    whole = _progress(tmp_path / "whole" / "checkpoint.safetensors")
    assert len(resumed["losses"]) == 150
    assert resumed["losses"] == whole["losses"]
    resumed_weights = load_file(str(killed_out / "model.safetensors"))
    whole_weights = load_file(str(tmp_path / "whole" / "model.safetensors"))
    for name, value in whole_weights.items():
        assert torch.equal(resumed_weights[name], value), name
    metrics = json.loads((killed_out / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == killed_step


def _records(count: int = 2) -> list[Record]:
    generator = torch.Generator().manual_seed(5)
    records = []
    for index in range(count):
        u = torch.randn(60 + 17 * index, 1, generator=generator, dtype=torch.float64)
        records.append(Record(u, torch.cumsum(u, 0) * 0.1, f"record {index}"))
    return records


def _model() -> DeepSSM:
    torch.manual_seed(11)
    return DeepSSM(1, 1, d_model=4, d_state=4, n_layers=1, param="l2n", ff="LGLU", gamma=3.0, dropout=0.2)


def test_resume_after_exception_matches(tmp_path, monkeypatch):
    settings = dict(epochs=8, lr=0.02, window=25, batch_size=2, seed=3, progress=False, eval_every=2)
    records, validation = _records(), _records(1)
    whole = _model()
    expected = training.train(whole, records, validation=validation, **settings)

    original_save = train_state.save_train_state
    saves = []

    def save_then_crash(path, state):
        original_save(path, state)
        saves.append(state.step)
        raise KeyboardInterrupt("simulated crash after a checkpoint")

    monkeypatch.setattr(training, "save_train_state", save_then_crash)
    path = tmp_path / "state.safetensors"
    interrupted = _model()
    with pytest.raises(KeyboardInterrupt):
        training.train(interrupted, records, validation=validation, checkpoint_path=path, checkpoint_every=3, **settings)
    assert saves == [3]
    monkeypatch.undo()

    state = train_state.load_train_state(path)
    assert state.step == 3
    resumed = _model()
    result = training.train(resumed, records, validation=validation, resume=state, resume_path=path, **settings)
    assert result.losses == expected.losses
    assert result.validation == expected.validation
    assert result.best_step == expected.best_step
    for (name, value), other in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(value, other), name


@pytest.fixture
def finished_run(tmp_path):
    data = tmp_path / "data.csv"
    _write_record(data, length=80)
    arguments = [
        "train", "--data", str(data), "--inputs", "u", "--outputs", "y", "--test-fraction", "0.25",
        "--epochs", "2", "--checkpoint-every", "1", "--out", str(tmp_path / "run"), *TINY,
    ]
    threads = torch.get_num_threads()
    assert main(arguments) == 0
    torch.set_num_threads(threads)
    return tmp_path, arguments


def _bad_files(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    truncated = folder / "truncated.safetensors"
    content = good.read_bytes()
    truncated.write_bytes(content[: len(content) // 2])
    foreign = folder / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, str(foreign), metadata={"format": "something-else"})
    text = folder / "notes.safetensors"
    text.write_text("not a checkpoint\n")
    return {
        "truncated": (truncated, "truncated"),
        "foreign": (foreign, "not an nssm training checkpoint"),
        "text": (text, "not a readable safetensors file"),
        "model file": (folder / "run" / "model.safetensors", "weights only"),
    }


@pytest.mark.parametrize("case", ["truncated", "foreign", "text", "model file"])
def test_resume_rejects_bad_file(finished_run, capsys, case):
    folder, arguments = finished_run
    path, message = _bad_files(folder, folder / "run" / "checkpoint.safetensors")[case]
    before = _snapshot(folder)
    capsys.readouterr()
    threads = torch.get_num_threads()
    assert main([*arguments, "--epochs", "2", "--resume", str(path)]) == 2
    torch.set_num_threads(threads)
    error = capsys.readouterr().err
    assert message in error
    assert str(path) in error
    assert _snapshot(folder) == before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--d-model", "6"], "another model configuration"),
        (["--gamma", "2"], "gamma"),
        (["--lr", "0.5"], "lr (checkpoint 0.01, this run 0.5)"),
        (["--window", "10"], "window"),
    ],
)
def test_resume_rejects_other_run(finished_run, capsys, change, message):
    folder, arguments = finished_run
    before = _snapshot(folder)
    capsys.readouterr()
    threads = torch.get_num_threads()
    assert main([*arguments, *change, "--resume"]) == 2
    torch.set_num_threads(threads)
    assert message in capsys.readouterr().err
    assert _snapshot(folder) == before


def test_resume_missing_file_is_an_error(finished_run, capsys):
    folder, arguments = finished_run
    before = _snapshot(folder)
    assert main([*arguments, "--resume", str(folder / "absent.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err
    assert _snapshot(folder) == before


def test_resume_finished_run_keeps_losses(finished_run):
    folder, arguments = finished_run
    checkpoint = folder / "run" / "checkpoint.safetensors"
    losses = _progress(checkpoint)["losses"]
    threads = torch.get_num_threads()
    assert main([*arguments, "--resume"]) == 0
    torch.set_num_threads(threads)
    assert _progress(checkpoint)["losses"] == losses
    metrics = json.loads((folder / "run" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 2
    assert metrics["steps_completed"] == 2


def test_model_loader_rejects_truncated_file(finished_run):
    folder, _ = finished_run
    model_file = folder / "run" / "model.safetensors"
    content = model_file.read_bytes()
    truncated = folder / "model_truncated.safetensors"
    truncated.write_bytes(content[: len(content) - 100])
    with pytest.raises(CheckpointError):
        load_checkpoint(truncated)
    model, extra = load_checkpoint(model_file)
    assert set(extra["normalization"]) == {"u_mean", "u_std", "y_mean", "y_std"}
    assert extra["record_statistics"][0]["samples"] == 60


def test_failed_write_keeps_previous_checkpoint(finished_run, monkeypatch):
    folder, _ = finished_run
    checkpoint = folder / "run" / "checkpoint.safetensors"
    before = checkpoint.read_bytes()
    state = train_state.load_train_state(checkpoint)

    def failing_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise SafetensorError("disk full")

    monkeypatch.setattr(checkpoint_module, "save_file", failing_save)  # the atomic write shared by all checkpoints
    with pytest.raises(SafetensorError):
        train_state.save_train_state(checkpoint, state)
    assert checkpoint.read_bytes() == before
    assert sorted(p.name for p in checkpoint.parent.iterdir() if p.name.startswith(".")) == []
