"""Datasets of several records: loading, windows, padding with masks, validation and early stopping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nssm_core import DeepSSM
from nssm_core._distributed import DistributedContext
from nssm_core.checkpoint import load_checkpoint
from nssm_core.cli import main
from nssm_core.data import (
    Normalizer,
    Record,
    load_npz_records,
    load_records,
    pad_records,
    record_statistics,
    window_records,
)
from nssm_core.training import masked_squared_error, run_padded, train, valid_count


def _record(length: int, seed: int, name: str = "record") -> Record:
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn(length, 2, generator=generator, dtype=torch.float64)
    y = torch.zeros(length, 1, dtype=torch.float64)
    state = torch.zeros(1, dtype=torch.float64)
    for t in range(length):
        y[t] = state
        state = 0.8 * state + 0.3 * u[t, 0] - 0.2 * u[t, 1]
    return Record(u, y, name)


def _write_csv(path: Path, record: Record) -> None:
    lines = ["a,b,out"] + [f"{a:.8f},{b:.8f},{c:.8f}" for (a, b), (c,) in zip(record.u.tolist(), record.y.tolist())]
    path.write_text("\n".join(lines) + "\n")


def test_load_records_glob_and_repeat(tmp_path):
    for index, length in enumerate((40, 25, 31)):
        _write_csv(tmp_path / f"run{index}.csv", _record(length, index))
    records = load_records([str(tmp_path / "run[01].csv"), tmp_path / "run2.csv"], ["a", "b"], ["out"])
    assert [len(r) for r in records] == [40, 25, 31]
    assert records[0].name.endswith("run0.csv")
    torch.testing.assert_close(records[1].u, _record(25, 1).u, atol=1e-8, rtol=0)


def test_load_records_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no data file matches"):
        load_records([str(tmp_path / "*.csv")], ["a"], ["out"])
    _write_csv(tmp_path / "one.csv", _record(10, 0))
    with pytest.raises(ValueError, match="needs --inputs and --outputs"):
        load_records([tmp_path / "one.csv"])
    np.savez(tmp_path / "wide.npz", u=np.zeros((12, 3)), y=np.zeros((12, 1)))
    with pytest.raises(ValueError, match="differ in their numbers of channels"):
        load_records([tmp_path / "one.csv", tmp_path / "wide.npz"], ["a", "b"], ["out"])


def test_npz_records_of_different_lengths(tmp_path):
    first, second = _record(30, 1), _record(18, 2)
    path = tmp_path / "data.npz"
    np.savez(path, u_0=first.u.numpy(), y_0=first.y.numpy(), u_1=second.u.numpy(), y_1=second.y.numpy()[:, 0])
    records = load_npz_records(path)
    assert [len(r) for r in records] == [30, 18]
    assert records[1].y.shape == (18, 1)
    torch.testing.assert_close(records[0].u, first.u)


def test_npz_stacked_records_with_lengths(tmp_path):
    path = tmp_path / "stacked.npz"
    u = np.arange(2 * 5 * 1, dtype=np.float32).reshape(2, 5, 1)
    np.savez(path, u=u, y=-u, lengths=np.array([5, 3]))
    records = load_records([path])
    assert [len(r) for r in records] == [5, 3]
    assert records[1].u[:, 0].tolist() == [5.0, 6.0, 7.0]


def test_npz_rejects_objects_and_bad_lengths(tmp_path):
    objects = tmp_path / "objects.npz"
    np.savez(objects, u=np.array([np.zeros(3), np.zeros(4)], dtype=object), y=np.zeros(3))
    with pytest.raises(ValueError, match="objects.npz"):
        load_npz_records(objects)
    lengths = tmp_path / "lengths.npz"
    np.savez(lengths, u=np.zeros((2, 4, 1)), y=np.zeros((2, 4, 1)), lengths=np.array([4, 9]))
    with pytest.raises(ValueError, match="'lengths' must hold 2 values between 1 and 4"):
        load_npz_records(lengths)
    unpaired = tmp_path / "unpaired.npz"
    np.savez(unpaired, u_0=np.zeros(3))
    with pytest.raises(ValueError, match="no y_0"):
        load_npz_records(unpaired)


def test_window_records_keeps_short_records_whole():
    windows = window_records([_record(50, 0, "long"), _record(12, 1, "short")], window=20, stride=15)
    assert [w.name for w in windows] == ["long[0:20]", "long[15:35]", "long[30:50]", "short"]
    assert [len(w) for w in windows] == [20, 20, 20, 12]
    # The last window is moved to end at the record's last sample.
    windows = window_records([_record(50, 0, "long")], window=20, stride=20)
    assert [w.name for w in windows] == ["long[0:20]", "long[20:40]", "long[30:50]"]
    torch.testing.assert_close(windows[2].y, _record(50, 0).y[30:])
    with pytest.raises(ValueError, match="stride must be positive"):
        window_records([_record(5, 0)], window=2, stride=0)


def test_normalizer_pools_records():
    records = [_record(40, 0), _record(25, 1)]
    pooled = Normalizer.fit(records)
    joined = Record(torch.cat([r.u for r in records]), torch.cat([r.y for r in records]))
    single = Normalizer.fit(joined)
    for key in ("u_mean", "u_std", "y_mean", "y_std"):
        torch.testing.assert_close(getattr(pooled, key), getattr(single, key))
    statistics = record_statistics(records)
    assert [s["samples"] for s in statistics] == [40, 25]
    assert statistics[1]["u_mean"] == pytest.approx(records[1].u.mean(0).tolist())


def test_masked_error_counts_valid_samples_only():
    records = [_record(9, 0), _record(4, 1)]
    batch = pad_records(records)
    assert batch.padded
    prediction = torch.randn(batch.y.shape, dtype=torch.float64)
    prediction_with_noise = prediction.clone()
    prediction_with_noise[1, 4:] = 1e6  # padded steps: must not count
    washout = 2
    expected = sum(float(((prediction[i, washout : len(r)] - r.y[washout:]) ** 2).sum()) for i, r in enumerate(records))
    assert float(masked_squared_error(prediction_with_noise, batch, washout)) == pytest.approx(expected)
    assert valid_count(batch.lengths, washout, 1) == (9 - 2) + (4 - 2)


@pytest.mark.parametrize(("param", "ff"), [("l2n", "LGLU"), ("lru", "GLU")])
@pytest.mark.parametrize("mode", ["scan", "loop"])
def test_padded_batch_equals_records_alone(param, ff, mode):
    torch.manual_seed(1)
    model = DeepSSM(2, 1, d_model=4, d_state=4, n_layers=2, param=param, ff=ff).double().eval()
    records = [_record(length, seed) for seed, length in enumerate((13, 5, 1, 9))]
    batch = pad_records(records)
    with torch.no_grad():
        y, finals = run_padded(model, batch, mode=mode)
        for index, record in enumerate(records):
            alone, alone_finals = model(record.u.unsqueeze(0), mode=mode)
            torch.testing.assert_close(y[index, : len(record)], alone[0], rtol=1e-10, atol=1e-12)
            assert bool((y[index, len(record) :] == 0).all())
            for block, (state, alone_state) in enumerate(zip(finals, alone_finals)):
                torch.testing.assert_close(state[index], alone_state[0], rtol=1e-10, atol=1e-12, msg=f"block {block}")
    # The state after the padding differs from the state at the record's end; the test would see a mix-up.
    _, padded_finals = model(batch.u, mode=mode)
    assert not torch.allclose(padded_finals[0][1], finals[0][1])


def test_padded_gradient_equals_separate_gradients():
    torch.manual_seed(2)
    model = DeepSSM(2, 1, d_model=4, d_state=4, n_layers=1, param="l2n", ff="LGLU", gamma=3.0).double()
    records = [_record(11, 0), _record(6, 1)]
    batch = pad_records(records)
    prediction, _ = model(batch.u)
    masked_squared_error(prediction, batch, washout=1).backward()
    padded = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for record in records:
        alone, _ = model(record.u.unsqueeze(0))
        ((alone[0, 1:] - record.y[1:]) ** 2).sum().backward()
    for name, (parameter, expected) in zip(dict(model.named_parameters()), zip(model.parameters(), padded)):
        torch.testing.assert_close(expected, parameter.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_early_stopping_restores_best_parameters():
    # Validation targets are the negated training targets, so fitting the training
    # data makes validation worse and training must stop early.
    torch.manual_seed(4)
    model = DeepSSM(2, 1, d_model=4, d_state=4, n_layers=1, param="l2n", ff="LGLU", gamma=3.0)
    records = [_record(60, 0), _record(45, 1)]
    validation = [Record(r.u, -r.y, "negated") for r in records]
    result = train(model, records, epochs=200, lr=0.02, validation=validation, patience=3, progress=False)
    assert result.stopped_early
    assert result.steps < 200
    values = [value for _, value in result.validation]
    best = min(values)
    assert result.best_step == result.validation[values.index(best)][0]
    assert all(value >= best for value in values[-3:])
    with torch.no_grad():
        batch = pad_records(validation, torch.float32)
        prediction, _ = model(batch.u)
        final = (masked_squared_error(prediction, batch) / valid_count(batch.lengths, 0, 1)).sqrt()
    assert float(final) == pytest.approx(best, rel=1e-4)


def test_train_rejects_bad_settings():
    model = DeepSSM(2, 1, d_model=4, d_state=4, n_layers=1, param="l2n", ff="LGLU", gamma=3.0)
    records = [_record(20, 0), _record(8, 1)]
    with pytest.raises(ValueError, match="needs validation records"):
        train(model, records, epochs=2, patience=2, progress=False)
    with pytest.raises(ValueError, match="has 8 samples"):
        train(model, records, epochs=2, washout=8, progress=False)
    with pytest.raises(ValueError, match="needs a checkpoint_path"):
        train(model, records, epochs=2, checkpoint_every=1, progress=False)
    # Checked before any collective call, so no process group is needed.
    three_processes = DistributedContext(rank=0, world_size=3)
    with pytest.raises(ValueError, match="batch of 2 window"):
        train(model, records, epochs=2, progress=False, context=three_processes)


def test_cli_several_records_with_validation(tmp_path):
    for index, length in enumerate((90, 70, 50)):
        _write_csv(tmp_path / f"exp{index}.csv", _record(length, index))
    out = tmp_path / "run"
    status = main([
        "train", "--data", str(tmp_path / "exp*.csv"), "--inputs", "a,b", "--outputs", "out",
        "--test-fraction", "0.2", "--val-fraction", "0.25", "--patience", "2", "--window", "24",
        "--batch-size", "4", "--epochs", "12", "--param", "lru", "--ff", "GLU", "--gamma", "none",
        "--d-model", "4", "--d-state", "4", "--search-steps", "2", "--quiet", "--out", str(out),
    ])
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_records"] == 3
    assert metrics["test_records"] == 3
    assert metrics["validation_records"] == 3
    assert metrics["test_samples"] == 18 + 14 + 10
    assert 1 <= metrics["best_step"] <= metrics["steps_completed"] <= 12
    assert metrics["validation_rmse"] > 0

    _, extra = load_checkpoint(out / "model.safetensors")
    assert set(extra["normalization"]) == {"u_mean", "u_std", "y_mean", "y_std"}
    assert [s["samples"] for s in extra["record_statistics"]] == [54, 42, 30]
    config = json.loads((out / "config.json").read_text())
    assert config["record_statistics"] == extra["record_statistics"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--patience", "3"], "--patience needs validation data"),
        (["--val-data", "x.csv", "--val-fraction", "0.2"], "either --val-data or --val-fraction"),
        (["--batch-size", "-1"], "--batch-size must be 0 or positive"),
        (["--checkpoint-every", "-2"], "--checkpoint-every must be 0 or positive"),
    ],
)
def test_cli_rejects_bad_dataset_options(tmp_path, capsys, arguments, message):
    assert main(["train", "--out", str(tmp_path / "run"), *arguments]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
