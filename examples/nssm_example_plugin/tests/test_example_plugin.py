"""Tests of the example plugin, written with nssm's public checks in ``nssm_core.testing``.

Run after ``pip install ./examples/nssm_example_plugin``: the registry tests
need the installed entry point.
"""

from __future__ import annotations

import pytest
import torch

from nssm_core import DeepSSM, PluginKind, SSMConfig, load_plugins
from nssm_core.analysis import worst_case_gain
from nssm_core.testing import (
    check_core_equivalence,
    check_layer_bound,
    check_lti_certificate,
    randomize_parameters,
)
from nssm_example_plugin import RealDiagonal, ScaledGroupSort, group_sort


def test_entries_come_from_this_distribution():
    registry = load_plugins()
    core = registry.get(PluginKind.CORE, "realdiag")
    layer = registry.get(PluginKind.LAYER, "ScaledGroupSort")
    assert core.distribution == "nssm-example-plugin"
    assert layer.distribution == "nssm-example-plugin"
    assert core.certificate.value == "incremental"
    assert layer.certificate.value == "incremental"


def test_model_builds_by_name():
    model = DeepSSM(2, 1, d_model=6, d_state=8, n_layers=2, param="realdiag", ff="ScaledGroupSort", gamma=3.0)
    y, states = model(torch.randn(4, 20, 2))
    assert y.shape == (4, 20, 1)
    assert [s.shape for s in states] == [(4, 8), (4, 8)]
    certificate = model.certificate()
    assert certificate.kind == "incremental"
    assert certificate.bound <= 3.0


def test_config_fields_reach_options():
    config = SSMConfig(param="realdiag", ff="ScaledGroupSort", rmin=0.5, rmax=0.6, d_hidden=10, scale=0.5)
    assert config.core_plugin_options().rmax == 0.6
    assert config.layer_plugin_options().d_hidden == 10


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"param": "realdiag", "rmax": 0.9995}, "at most 0.999"),
        ({"ff": "ScaledGroupSort", "d_hidden": 7}, "even d_hidden"),
        ({"param": "realdiag", "core_options": {"gama": 2.0}}, "unknown options"),
    ],
)
def test_invalid_options_are_rejected(fields, message):
    with pytest.raises(ValueError, match=message):
        SSMConfig(**fields)


# --8<-- [start:tests]
def test_core_modes_and_chunks_agree():
    check_core_equivalence(lambda: RealDiagonal(3, 2, 6, gamma=1.5), d_input=3, lengths=(1, 2, 7, 65, 300))


@pytest.mark.parametrize("raw_scale", [0.5, 5.0, 30.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_core_hinf_norm_within_gamma(raw_scale, dtype):
    torch.manual_seed(1)
    core = randomize_parameters(RealDiagonal(3, 4, 10, gamma=2.5), scale=raw_scale).to(dtype)
    ratio = check_lti_certificate(core, 2.5)
    assert ratio > 0.0
# --8<-- [end:tests]


def test_core_bound_is_tight_for_one_channel():
    # One filter with a > 0 and b*c, d of one sign peaks at frequency 0, where it equals the bound.
    core = RealDiagonal(1, 1, 1, gamma=2.0).double()
    with torch.no_grad():
        core.b.fill_(0.7)
        core.c.fill_(1.3)
        core.d.fill_(0.2)
    ratio = check_lti_certificate(core, 2.0)
    assert ratio > 1 - 1e-6


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_core_with_zero_parameters_stays_finite(dtype):
    core = RealDiagonal(2, 2, 4, gamma=1.0).to(dtype)
    with torch.no_grad():
        for parameter in core.parameters():
            parameter.zero_()
    y, states = core(torch.randn(3, 10, 2, dtype=dtype))
    assert torch.isfinite(y).all()
    assert torch.isfinite(states).all()
    ratio = check_lti_certificate(core, 1.0)
    assert ratio <= 1.0


def test_core_worst_case_search_stays_below():
    # Decays well below 1 keep the peak response reachable by short input sequences.
    torch.manual_seed(2)
    core = randomize_parameters(RealDiagonal(2, 2, 6, gamma=0.8, rmin=0.3, rmax=0.6)).double()
    with torch.no_grad():
        core.decay_raw.clamp_(-1.0, 0.5)
    found = worst_case_gain(core, 2, length=24, starts=2, steps=60, incremental=True)
    exact = 0.8 * check_lti_certificate(core, 0.8)
    assert found <= 0.8 * (1 + 1e-9)
    assert found >= 0.9 * exact, "the search should come close to the exact H-infinity norm"


def test_core_gamma_trains_and_stays_certified():
    torch.manual_seed(3)
    core = RealDiagonal(2, 2, 6, gamma=1.0, train_gamma=True).double()
    optimizer = torch.optim.Adam(core.parameters(), lr=0.05)
    u = torch.randn(8, 40, 2, dtype=torch.float64)
    target = 3.0 * u.flip(1)
    for _ in range(30):
        optimizer.zero_grad()
        y, _ = core(u)
        loss = (y - target).pow(2).mean()
        loss.backward()
        optimizer.step()
    assert core.log_gamma.grad is not None
    check_lti_certificate(core, float(core.bound().detach()))


def test_group_sort_sorts_pairs():
    x = torch.tensor([[3.0, -1.0, 2.0, 5.0]])
    assert torch.equal(group_sort(x), torch.tensor([[-1.0, 3.0, 2.0, 5.0]]))


# --8<-- [start:layer-test]
@pytest.mark.parametrize(("nl_layers", "dtype"), [(1, torch.float64), (3, torch.float32)])
def test_layer_lipschitz_bound_holds(nl_layers, dtype):
    torch.manual_seed(4)
    layer = randomize_parameters(ScaledGroupSort(5, d_hidden=8, nl_layers=nl_layers, scale=0.7)).to(dtype)
    ratio = check_layer_bound(layer, 5, incremental=True)
    assert ratio > 0.2, "the search should come close to the bound"
# --8<-- [end:layer-test]


def test_layer_gain_bound_holds():
    torch.manual_seed(5)
    layer = randomize_parameters(ScaledGroupSort(4, d_hidden=6, scale=2.0), scale=3.0).double()
    check_layer_bound(layer, 4, incremental=False)


def test_model_worst_case_within_gamma():
    torch.manual_seed(6)
    model = DeepSSM(1, 1, d_model=4, d_state=6, n_layers=2, param="realdiag", ff="ScaledGroupSort", gamma=1.7)
    randomize_parameters(model)
    model.double()
    found = worst_case_gain(model, 1, length=16, starts=2, steps=30, screen=8, incremental=True)
    assert found <= 1.7
