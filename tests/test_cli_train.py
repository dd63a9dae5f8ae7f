"""``nssm train`` on a short budget, on the bundled data and on a user CSV."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nssm_core.checkpoint import load_checkpoint
from nssm_core.cli import main

OUTPUT_FILES = ("metrics.json", "model.safetensors", "config.json", "test_prediction.png")
METRIC_KEYS = (
    "test_rmse",
    "test_fit_percent",
    "prescribed_gamma",
    "certified_gain_bound",
    "certificate_kind",
    "empirical_gain_lower_bound",
    "train_seconds",
)
SMALL_MODEL = ["--d-model", "8", "--d-state", "8", "--search-steps", "10", "--quiet"]


def test_train_default_data_short_budget(tmp_path):
    out = tmp_path / "run"
    status = main(["train", "--epochs", "150", "--gamma", "5", "--out", str(out), *SMALL_MODEL])
    assert status == 0
    for name in OUTPUT_FILES:
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert key in metrics, key
    assert metrics["test_rmse"] < metrics["constant_mean_test_rmse"]
    assert metrics["prescribed_gamma"] == 5.0
    assert metrics["certified_gain_bound"] == pytest.approx(5.0, rel=1e-6)
    assert metrics["certificate_kind"] == "gain"
    assert 0.0 < metrics["empirical_gain_lower_bound"] <= 5.0
    assert (out / "test_prediction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    model, extra = load_checkpoint(out / "model.safetensors")
    assert model.config.gamma == 5.0
    assert set(extra["normalization"]) == {"u_mean", "u_std", "y_mean", "y_std"}


def _write_csv(path, length=300):
    torch.manual_seed(0)
    u = torch.randn(length, 2)
    y = torch.zeros(length, 1)
    state = torch.zeros(1)
    for t in range(length):
        y[t] = state
        state = 0.8 * state + 0.3 * u[t, 0] - 0.2 * u[t, 1]
    lines = ["a,b,out"] + [f"{u[t, 0]:.6f},{u[t, 1]:.6f},{y[t, 0]:.6f}" for t in range(length)]
    path.write_text("\n".join(lines) + "\n")


def test_train_user_csv_with_test_fraction(tmp_path):
    data = tmp_path / "data.csv"
    _write_csv(data)
    out = tmp_path / "run"
    status = main([
        "train", "--data", str(data), "--inputs", "a,b", "--outputs", "out", "--test-fraction", "0.25",
        "--epochs", "60", "--gamma", "none", "--param", "lru", "--ff", "GLU", "--out", str(out), *SMALL_MODEL,
    ])
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["prescribed_gamma"] is None
    assert metrics["certificate_kind"] == "none"
    assert metrics["test_samples"] == 75
    assert math.isfinite(metrics["test_rmse"])


@pytest.mark.parametrize("columns", [["a,b"], ["a", "b"], ["a,", "b"]])
def test_train_inputs_spaces_or_commas(columns):
    from nssm_core.cli import build_parser

    args = build_parser().parse_args(["train", "--inputs", *columns, "--outputs", "out"])
    assert args.inputs == ["a", "b"]
    assert args.outputs == ["out"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--inputs", "a"], "need --data"),
        (["--data", "missing.csv", "--inputs", "a", "--outputs", "b", "--test-fraction", "0.2"], "not found"),
        (["--param", "lru", "--ff", "GLU", "--gamma", "2"], "no certified bound"),
        (["--epochs", "0"], "--epochs must be positive"),
        (["--gama", "2"], "unrecognized arguments: --gama 2; did you mean --gamma?"),
        (["--gama", "2", "--patiense", "3"], "did you mean --gamma for --gama, --patience for --patiense?"),
    ],
)
def test_train_bad_arguments(tmp_path, capsys, arguments, message):
    status = main(["train", "--out", str(tmp_path / "run"), *arguments])
    assert status == 2
    assert message in capsys.readouterr().err


def test_train_missing_column(tmp_path, capsys):
    data = tmp_path / "data.csv"
    _write_csv(data, length=20)
    status = main(["train", "--data", str(data), "--inputs", "a,c", "--outputs", "out", "--test-fraction", "0.2"])
    assert status == 2
    error = capsys.readouterr().err
    assert "'c'" in error
    assert "available columns" in error


def test_train_bad_gamma_text(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--gamma", "-3"])
    assert "invalid gamma" in capsys.readouterr().err


def test_train_in_recomputed_time_blocks(tmp_path, monkeypatch):
    """The bundled records (1024 samples) run in four time blocks of 256 steps, with and without recomputation."""
    from nssm_core import _model

    recomputed = []
    original = _model._RecomputedTimeBlocks.forward

    def counted(*args, **kwargs):
        recomputed.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(_model._RecomputedTimeBlocks, "forward", staticmethod(counted))
    metrics = []
    for extra in ([], ["--recompute-time-blocks"]):
        out = tmp_path / ("recompute" if extra else "kept")
        arguments = ["--epochs", "20", "--training-block-elements", "64", "--out", str(out), *extra]
        assert main(["train", *arguments, *SMALL_MODEL]) == 0
        metrics.append(json.loads((out / "metrics.json").read_text()))
        assert len(recomputed) == (20 if extra else 0)  # one recomputing call per training step
    # The gradients agree to round-off, so twenty steps end at nearly the same model.
    assert metrics[1]["test_rmse"] == pytest.approx(metrics[0]["test_rmse"], rel=1e-3)
    assert metrics[1]["final_train_loss"] == pytest.approx(metrics[0]["final_train_loss"], rel=1e-3)
