"""Smoke tests of the benchmark scripts: they run on a tiny case and leave nssm as they found it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import nssm_plugins.backends._scan as scan_backends
import nssm_plugins.layers._lipschitz as lipschitz
from nssm_core import DeepSSM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import floor_gap  # noqa: E402
import growth  # noqa: E402


def small_model() -> DeepSSM:
    """Build a one-block l2n model with a TLIP layer."""
    torch.manual_seed(0)
    return DeepSSM(1, 1, d_model=4, d_state=4, n_layers=1, param="l2n", ff="TLIP", gamma=2.0)


def test_idealised_model_differs_and_restores() -> None:
    model = small_model()
    u = torch.randn(2, 40, 1)
    with torch.no_grad():
        exact, _ = model(u, mode="scan")
        with floor_gap.idealised():
            stand_in, _ = model(u, mode="scan")
        again, _ = model(u, mode="scan")
    assert not torch.allclose(stand_in, exact)
    assert torch.equal(again, exact)


def test_idealised_restores_after_error() -> None:
    scan, sort = scan_backends.DefaultScanBackend.diagonal, lipschitz.centered_sort_halves
    with pytest.raises(RuntimeError, match="inside"), floor_gap.idealised():
        raise RuntimeError("inside")
    assert scan_backends.DefaultScanBackend.diagonal is scan
    assert lipschitz.centered_sort_halves is sort


def test_floor_gap_prints_table(capsys: pytest.CaptureFixture[str]) -> None:
    floor_gap.main(["--cores", "l2n", "--lengths", "64", "--rounds", "1", "--threads", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| l2n | 64 |")]
    assert [row.split(" | ")[2] for row in rows] == ["forward", "fwd+bwd"]
    ratios = [float(cell) for row in rows for cell in row.strip(" |").split(" | ")[-2:]]
    assert all(ratio > 0 for ratio in ratios)


def test_floor_gap_rejects_zero_rounds() -> None:
    with pytest.raises(SystemExit):
        floor_gap.main(["--rounds", "0"])


def test_growth_prints_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    growth.main(["--cores", "l2n", "--lengths", "32", "64", "--rounds", "1", "--threads", "1"])
    rows = [line.strip(" |").split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| l2n |")]
    assert [(row[1], row[2]) for row in rows] == [("forward", "32"), ("forward", "64"), ("fwd+bwd", "32"), ("fwd+bwd", "64")]
    assert [row[-2:] for row in rows[::2]] == [["1.00", "1.00"], ["1.00", "1.00"]]
    assert all(float(row[-1]) > 0 for row in rows)


def test_growth_rejects_one_length() -> None:
    with pytest.raises(SystemExit):
        growth.main(["--lengths", "64"])


def test_growth_rejects_repeated_length() -> None:
    with pytest.raises(SystemExit):
        growth.main(["--lengths", "64", "64"])
