"""The l2n core and a certified DeepSSM try to break their bounds numerically."""

from __future__ import annotations

import pytest
import torch

from nssm_core import DeepSSM
from nssm_core.analysis import hinf_norm, worst_case_gain
from nssm_core.testing import check_layer_bound, randomize_parameters
from nssm_plugins import L2N, LGLU


@pytest.mark.parametrize("raw_scale", [1e-4, 1.0, 1e4])
def test_l2n_hinf_below_gamma(raw_scale):
    worst = 0.0
    for draw in range(17):
        torch.manual_seed(draw)
        gamma = float(torch.empty(()).uniform_(0.1, 10.0))
        core = L2N(3, 2, 6, gamma=gamma, rho=0.99)
        with torch.no_grad():
            for parameter in core.parameters():
                parameter.copy_(torch.randn_like(parameter) * raw_scale)
        core = core.double()
        norm = hinf_norm(*core.lti_matrices())
        assert norm <= gamma * (1 + 1e-6), f"draw {draw}: H-inf {norm} > gamma {gamma}"
        worst = max(worst, norm / gamma)
    assert worst > 0.0


def test_hinf_norm_matches_known_system():
    # First-order system x+ = 0.5 x + u, y = x: peak at w = 0, |1 / (1 - 0.5)| = 2.
    a = torch.tensor([[0.5]])
    b = torch.tensor([[1.0]])
    c = torch.tensor([[1.0]])
    d = torch.tensor([[0.0]])
    assert abs(hinf_norm(a, b, c, d) - 2.0) < 1e-12
    # A sharp resonance away from the grid points is still found by the refinement.
    r, theta = 0.999, 1.2345
    a = torch.tensor([[r * torch.cos(torch.tensor(theta)), -r * torch.sin(torch.tensor(theta))],
                      [r * torch.sin(torch.tensor(theta)), r * torch.cos(torch.tensor(theta))]], dtype=torch.float64)
    b = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    c = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    d = torch.zeros(1, 1, dtype=torch.float64)
    grid = torch.linspace(0, torch.pi, 200001, dtype=torch.float64)
    from nssm_core.analysis import frequency_response_norms

    dense = float(frequency_response_norms(a, b, c, d, grid).max())
    assert hinf_norm(a, b, c, d) >= dense * (1 - 1e-9)


def test_lglu_gain_bound():
    torch.manual_seed(3)
    layer = randomize_parameters(LGLU(5, scale=1.5))
    ratio = check_layer_bound(layer, 5, incremental=False)
    assert 0.0 < ratio <= 1.0


def _certified_model() -> DeepSSM:
    return DeepSSM(2, 2, d_model=6, d_state=8, n_layers=2, param="l2n", ff="LGLU", gamma=2.0)


def _assert_certificate(model: DeepSSM) -> None:
    report = model.certificate()
    assert report.bound == pytest.approx(2.0, rel=1e-6)
    assert report.kind == "gain"
    found = worst_case_gain(model, 2, length=48, starts=4, steps=60)
    assert 0.0 < found <= 2.0


def test_deepssm_bound_at_init():
    torch.manual_seed(0)
    _assert_certificate(_certified_model())


def test_deepssm_bound_after_training():
    torch.manual_seed(1)
    model = _certified_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    u, y = torch.randn(4, 32, 2), 3.0 * torch.randn(4, 32, 2)
    for _ in range(20):
        optimizer.zero_grad()
        loss = ((model(u)[0] - y) ** 2).mean()
        loss.backward()
        optimizer.step()
    _assert_certificate(model)


def test_deepssm_bound_survives_extreme_weights():
    torch.manual_seed(2)
    model = _certified_model()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1e3)
    _assert_certificate(model)


def test_uncertified_model_reports_none():
    model = DeepSSM(1, 1, d_model=4, d_state=4, n_layers=1, param="lru", ff="GLU")
    report = model.certificate()
    assert report.kind == "none"
    assert report.bound is None
    assert any("'lru'" in note for note in report.notes)


def test_nan_parameters_not_certified():
    model = _certified_model()
    with torch.no_grad():
        model.encoder.weight[0, 0] = float("nan")
    report = model.certificate()
    assert report.kind == "none"
    assert report.bound is None


def test_nan_core_parameter_not_certified():
    model = _certified_model()
    with torch.no_grad():
        model.blocks[1].core.log_gamma.fill_(float("nan"))
    report = model.certificate()
    assert report.kind == "none"
    assert report.bound is None
    assert any("NaN or inf" in note for note in report.notes)


@pytest.mark.parametrize(("module_path", "name"), [("blocks.0.layer", "gain_raw"), ("blocks.1.core", "K21")])
def test_inf_weight_not_certified(module_path, name):
    model = _certified_model()
    with torch.no_grad():
        getattr(model.get_submodule(module_path), name).view(-1)[0] = float("inf")
    report = model.certificate()
    assert report.kind == "none"
    assert report.bound is None
    assert any(f"{module_path}.{name}" in note for note in report.notes)
