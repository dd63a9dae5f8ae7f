"""Learned initial states and the bound on the transient they add."""

from __future__ import annotations

import pytest
import torch

from nssm_core import DeepSSM, ModelCertificate
from nssm_core.checkpoint import load_checkpoint, save_checkpoint


def _model(param: str, ff: str = "LGLU") -> DeepSSM:
    torch.manual_seed(0)
    model = DeepSSM(2, 2, d_model=6, d_state=8, n_layers=2, param=param, ff=ff, gamma=2.0, learn_initial_state=True)
    model = model.double()
    with torch.no_grad():
        for initial in model.initial_states:
            initial.normal_(0.0, 3.0)
    return model


@pytest.mark.parametrize("param", ["l2n", "l2nt", "tv"])
def test_transient_bound_holds(param):
    model = _model(param)
    report = model.certificate()
    assert report.initial_state_gains is not None
    assert len(report.initial_state_gains) == 2
    assert report.transient_bound > 0

    # Free response: the output from zero input is bounded by the transient alone.
    with torch.no_grad():
        free, _ = model(torch.zeros(1, 400, 2, dtype=torch.float64))
    assert 0 < float(free.norm()) <= report.transient_bound

    # With inputs of any size: ||y|| <= bound ||u|| + transient.
    for amplitude in (1e-3, 1.0, 1e3):
        u = amplitude * torch.randn(4, 120, 2, dtype=torch.float64)
        with torch.no_grad():
            y, _ = model(u)
        for index in range(4):
            limit = report.bound * float(u[index].norm()) + report.transient_bound
            assert float(y[index].norm()) <= limit


def test_learned_state_used_without_state():
    model = _model("l2n")
    u = torch.randn(3, 10, 2, dtype=torch.float64)
    y_learned, _ = model(u)
    y_zero, _ = model(u, state=[torch.zeros(3, 8, dtype=torch.float64)] * 2)
    assert not torch.allclose(y_learned, y_zero)
    explicit = [initial.detach().expand(3, -1) for initial in model.initial_states]
    y_explicit, _ = model(u, state=explicit)
    torch.testing.assert_close(y_explicit, y_learned)


def test_learned_state_receives_gradient():
    model = _model("l2n")
    y, _ = model(torch.randn(2, 20, 2, dtype=torch.float64))
    y.square().sum().backward()
    assert all(initial.grad is not None and float(initial.grad.abs().sum()) > 0 for initial in model.initial_states)


def test_complex_state_core_rejected():
    with pytest.raises(ValueError, match="'lru' has complex"):
        DeepSSM(1, 1, param="lru", learn_initial_state=True)


def test_report_without_learned_state_has_no_transient():
    model = DeepSSM(1, 1, param="l2n", ff="LGLU", gamma=2.0)
    report = model.certificate()
    assert report.initial_state_gains is None
    assert report.transient_bound is None


def test_report_and_checkpoint_round_trip(tmp_path):
    model = _model("l2n").float()
    report = model.certificate()
    assert ModelCertificate.from_dict(report.to_dict()) == report
    save_checkpoint(model, tmp_path / "model.safetensors")
    loaded, _ = load_checkpoint(tmp_path / "model.safetensors")
    for a, b in zip(loaded.initial_states, model.initial_states):
        torch.testing.assert_close(a, b)
    assert loaded.certificate().transient_bound == pytest.approx(report.transient_bound)


def test_gain_search_runs_from_rest():
    from nssm_core.analysis import worst_case_gain

    model = _model("l2n")
    found = worst_case_gain(model, 2, length=32, starts=2, steps=20)
    assert 0 < found <= model.certificate().bound
