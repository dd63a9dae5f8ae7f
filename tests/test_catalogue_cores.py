"""Tests of the built-in dynamic cores, parametrized over the registry's core names.

Every core is checked loop against scan, in two chunks with the carried
state, at odd sizes and with decays near 1. Certified cores are attacked
numerically: H-infinity norms of LTI cores on random and extreme raw
parameters, worst-case input searches for the time-varying core and for
whole models. The registry here holds only this package's built-ins, so an
installed third-party plugin does not change what is tested.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

import nssm_plugins.hooks
from nssm_core import CertificateKind, CoreSpec, DeepSSM, PluginKind, Registry, SSMConfig, load_plugins
from nssm_core.analysis import hinf_norm, worst_case_gain
from nssm_core.testing import TOLERANCES, check_core_equivalence, check_lti_certificate, randomize_parameters
from nssm_plugins import L2RU, LRU, TV, ZAK, LoopBackend, ParallelScanBackend, PureLRUR, SimpleRNN, lruz

BUILTINS: Registry = load_plugins(Registry(), plugins=[("builtins", "nssm", nssm_plugins.hooks)])
CORES = BUILTINS.names(PluginKind.CORE)
CERTIFIED = [name for name in CORES if BUILTINS.get(PluginKind.CORE, name).certificate is not CertificateKind.NONE]

ODD_SPEC = CoreSpec(d_input=5, d_output=4, d_state=6)
SQUARE_SPEC = CoreSpec(d_input=5, d_output=5, d_state=5)
SQUARE_CORES = {"l2ru"}
"""Cores that need ``d_input = d_output = d_state``."""


def spec_for(name: str) -> CoreSpec:
    return SQUARE_SPEC if name in SQUARE_CORES else ODD_SPEC


def make_core(name: str, spec: CoreSpec | None = None, **options: object) -> nn.Module:
    return BUILTINS.create(PluginKind.CORE, name, spec or spec_for(name), options=options)


def is_lti(name: str) -> bool:
    return hasattr(make_core(name), "lti_matrices")


LTI_CERTIFIED = [name for name in CERTIFIED if is_lti(name)]


def test_registry_lists_catalogue() -> None:
    for name in ("lru", "l2n", "tv", "l2ru", "zak", "l2nt"):
        assert name in CORES
    assert BUILTINS.get(PluginKind.CORE, "tv").certificate is CertificateKind.GAIN
    assert BUILTINS.get(PluginKind.CORE, "l2ru").structure.value == "dense"
    assert BUILTINS.get(PluginKind.CORE, "l2nt").structure.value == "dense"


# ---------------------------------------------------------------- equivalence


@pytest.mark.parametrize("name", CORES)
def test_core_equivalence_random(name: str) -> None:
    spec = spec_for(name)
    check_core_equivalence(lambda: make_core(name, spec), d_input=spec.d_input, lengths=(1, 2, 7, 65, 130, 1000))


def _set_near_unit_decays(name: str, core: nn.Module) -> None:
    """Move ``core``'s parameters so its decays are near 1 (|lambda| about 0.999)."""
    with torch.no_grad():
        if name in ("lru", "zak"):
            core.nu_log.fill_(math.log(-math.log(0.999)))
        elif name == "l2n":
            core.rho_raw.fill_(math.log(0.999 / 0.001))
            for block in (core.K12, core.K21, core.K22):
                block.mul_(1e-3)
        elif name == "l2nt":
            q, _ = torch.linalg.qr(torch.randn_like(core.K11))
            core.K11.copy_(0.999 * q)
            for block in (core.K12, core.K21, core.K22):
                block.mul_(1e-3)
        elif name == "tv":
            # softplus(-7) ~ 1e-3, so a ~ exp(-1e-3 * softplus(delta + bias)); small b, c keep the normaliser near 1.
            core.decay_rate.fill_(-7.0)
            core.selector.bias[core.d_state:].fill_(0.02)
            core.selector.weight[core.d_state:].mul_(0.01)
        elif name == "l2ru":
            # Large sigmoid(alpha) with C ~ I, Dt ~ 10 I and small X makes A nearly an isometry.
            core.alpha.fill_(9.0)
            for block in (core.X11, core.X21, core.X22):
                block.mul_(1e-3)
            core.Dt.copy_(10 * torch.eye(core.d_state) + 0.01 * torch.randn(core.d_state, core.d_state))
            core.C.copy_(torch.eye(core.d_state) + 0.01 * torch.randn(core.d_state, core.d_state))
        else:
            pytest.fail(f"no recipe for near-unit decays of core {name!r}; add one to _set_near_unit_decays")


def _spectral_radius(name: str, core: nn.Module) -> float:
    if hasattr(core, "lti_matrices"):
        a = core.lti_matrices()[0]
        return float(torch.linalg.eigvals(a.detach()).abs().max())
    a, _, _ = core.triples(torch.randn(2, 50, core.d_input, dtype=torch.float64))
    return float(a.detach().min())


@pytest.mark.parametrize("name", CORES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_core_equivalence_near_unit_decays(name: str, dtype: torch.dtype) -> None:
    torch.manual_seed(3)
    spec = spec_for(name)
    core = make_core(name, spec).double()
    _set_near_unit_decays(name, core)
    assert _spectral_radius(name, core) > 0.99
    core = core.to(dtype)
    tolerance = TOLERANCES[dtype]
    u = torch.randn(2, 1000, spec.d_input, dtype=dtype)
    with torch.no_grad():
        y_loop, s_loop = core(u, mode="loop")
        y_scan, s_scan = core(u, mode="scan")
        y_first, s_first = core(u[:, :333], mode="scan")
        y_second, s_second = core(u[:, 333:], state=s_first[:, -1], mode="scan")
    scale = max(1.0, float(y_loop.abs().max()))
    assert float((y_scan - y_loop).abs().max()) <= tolerance * scale
    assert float((s_scan - s_loop).abs().max()) <= tolerance * max(1.0, float(s_loop.abs().max()))
    assert float((torch.cat([y_first, y_second], 1) - y_loop).abs().max()) <= tolerance * scale


# ---------------------------------------------------------------- dense scan


@pytest.mark.parametrize("length", [1, 63, 64, 65, 1000])
def test_dense_scan_matches_loop(length: int) -> None:
    torch.manual_seed(length)
    d = 5
    matrix = torch.randn(d, d, dtype=torch.float64)
    matrix = 0.999 * matrix / torch.linalg.matrix_norm(matrix, ord=2)
    drives = torch.randn(3, length, d, dtype=torch.float64, requires_grad=True)
    x0 = torch.randn(3, d, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, length + 1, d, dtype=torch.float64)

    expected = LoopBackend().dense(matrix, drives, x0)
    actual = ParallelScanBackend().dense(matrix, drives, x0)
    assert actual.shape == (3, length + 1, d)
    assert torch.allclose(actual, expected, rtol=0, atol=1e-12)

    grads_expected = torch.autograd.grad((expected * weight).sum(), (drives, x0))
    grads_actual = torch.autograd.grad((actual * weight).sum(), (drives, x0))
    for got, want in zip(grads_actual, grads_expected):
        assert torch.allclose(got, want, rtol=0, atol=1e-10)


def test_dense_scan_long_sequence_stays_finite() -> None:
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    matrix = 0.9999 * q
    drives = torch.randn(1, 20_000, 4, dtype=torch.float64)
    x0 = torch.zeros(1, 4, dtype=torch.float64)
    expected = LoopBackend().dense(matrix, drives, x0)
    actual = ParallelScanBackend().dense(matrix, drives, x0)
    assert bool(torch.isfinite(actual).all())
    assert float((actual - expected).abs().max()) <= 1e-9 * float(expected.abs().max())


# ---------------------------------------------------------------- LTI certificates


def _scaled_draw(core: nn.Module, scale: float, generator: torch.Generator) -> None:
    """Replace every raw parameter by standard normal noise times ``scale``."""
    with torch.no_grad():
        for parameter in core.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            parameter.copy_(noise * scale)


@pytest.mark.parametrize("name", LTI_CERTIFIED)
def test_lti_bound_random_and_extreme(name: str, record_property: Callable[[str, object], None]) -> None:
    generator = torch.Generator().manual_seed(11)
    worst = 0.0
    draws = 0
    for gamma in (1e-3, 1.0, 1e3):
        for scale, repeats in ((1.0, 8), (1e-4, 4), (1e4, 5)):
            for _ in range(repeats):
                core = make_core(name, spec_for(name), block_gamma=gamma).double()
                _scaled_draw(core, scale, generator)
                bound = float(core.bound())
                assert math.isclose(bound, gamma, rel_tol=1e-6)  # gamma is stored in float32
                worst = max(worst, check_lti_certificate(core, bound))
                draws += 1
    record_property("max_hinf_over_bound", worst)
    assert draws >= 50
    assert worst <= 1 + 1e-6


@pytest.mark.parametrize("name", LTI_CERTIFIED)
def test_lti_bound_float32_parameters(name: str) -> None:
    torch.manual_seed(5)
    core = make_core(name, spec_for(name), block_gamma=2.0)
    randomize_parameters(core, scale=1.0)
    assert check_lti_certificate(core, float(core.bound())) <= 1 + 1e-6


@pytest.mark.parametrize("name", LTI_CERTIFIED)
def test_lti_realisation_matches_forward(name: str) -> None:
    torch.manual_seed(2)
    spec = spec_for(name)
    core = randomize_parameters(make_core(name, spec)).double()
    a, b, c, d = (m.detach() for m in core.lti_matrices())
    u = torch.randn(2, 40, spec.d_input, dtype=torch.float64)
    x = torch.zeros(2, a.shape[0], dtype=torch.float64)
    outputs = []
    for t in range(u.shape[1]):
        outputs.append(x @ c.T + u[:, t] @ d.T)
        x = x @ a.T + u[:, t] @ b.T
    with torch.no_grad():
        y, _ = core(u, mode="loop")
    assert torch.allclose(y, torch.stack(outputs, 1), rtol=0, atol=1e-10)


def test_lti_bound_is_tight_enough_to_matter() -> None:
    # zak keeps its feedthrough at norm gamma (1 - eps), so its H-infinity norm is at least that.
    core = make_core("zak", block_gamma=3.0).double()
    assert check_lti_certificate(core, float(core.bound())) >= 0.99 - 1e-9


def test_zak_stable_at_extreme_decay_parameters() -> None:
    core = ZAK(3, 2, 4).double()
    with torch.no_grad():
        core.nu_log.copy_(torch.tensor([-1e4, -50.0, 1e4, 0.0]))
        core.theta_log.copy_(torch.tensor([1e4, -1e4, 0.0, 100.0]))
    lam = core.eigenvalues().detach()
    assert bool(torch.isfinite(lam).all())
    assert float(lam.abs().max()) < 1.0
    assert check_lti_certificate(core, 1.0) <= 1 + 1e-6


# ---------------------------------------------------------------- tv


def _tv_worst_ratio(core: TV, gamma: float) -> float:
    found = worst_case_gain(core, core.d_input, length=24, starts=4, steps=80, lr=0.1, dtype=torch.float64)
    assert found <= gamma * (1 + 1e-6), f"tv worst-case gain {found} exceeds gamma {gamma}"
    return found / gamma


def test_tv_contraction_norm_matches_svd() -> None:
    from nssm_plugins.cores._tv import contraction_norm_2x2

    a = torch.rand(500, dtype=torch.float64)
    b, c = torch.randn(500, dtype=torch.float64), torch.randn(500, dtype=torch.float64)
    matrices = torch.stack([torch.stack([a, b], -1), torch.stack([c, torch.zeros_like(a)], -1)], -2)
    exact = torch.linalg.matrix_norm(matrices, ord=2)
    closed = contraction_norm_2x2(a, b, c)
    assert torch.allclose(closed, exact, rtol=1e-12, atol=1e-300)
    assert bool((closed >= exact * (1 - 1e-15)).all())


def _hard_triples(count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw float32 triples in the ranges the core produces (a in [0, 1], b and c in [-1, 1]), edges included."""
    generator = torch.Generator().manual_seed(3)
    a = torch.rand(count, generator=generator)
    b = torch.rand(count, generator=generator) * 2 - 1
    c = torch.rand(count, generator=generator) * 2 - 1
    a[:100] = 0.0  # the norm's second square root can vanish
    b[100:200] = c[100:200]  # |b| = |c|
    a[200:300], b[200:300], c[200:300] = 1.0, 1.0, -1.0  # the largest norm
    b[300:400] = 0.0
    a[400:500] = 1.0 - torch.rand(100, generator=generator) * 1e-6  # decays just below 1
    return a, b, c


def test_tv_float32_triples_are_contractions() -> None:
    from nssm_plugins.cores._tv import _TVFront, normalise_triple, triple_margin

    a, b, c = _hard_triples(20000)
    ones = torch.ones(1, 20000, 1)
    # The fused front takes raw selector values: inverting its softplus, exp and tanh gives about the same triples.
    rate = torch.zeros(1)
    rate_factor = torch.nn.functional.softplus(rate)
    exponent = (-torch.log(a.double()) / rate_factor.double()).clamp(min=1e-30, max=1e30)
    # softplus^-1(x) = log(expm1(x)) is x itself above 30 in float32, so a = 0 gets a finite delta of 1e30.
    delta = torch.where(exponent > 30, exponent, torch.log(torch.expm1(exponent.clamp(max=30)))).float()
    raw_b = torch.atanh(b.double().clamp(-1 + 1e-7, 1 - 1e-7)).float()
    raw_c = torch.atanh(c.double().clamp(-1 + 1e-7, 1 - 1e-7)).float()
    # An identity selector passes (delta, raw b, raw c) through, and W_in = 1 makes v = 1.
    selected = torch.stack([delta, raw_b, raw_c], dim=-1).unsqueeze(0)
    fused = _TVFront.apply(
        selected, ones, torch.eye(3), torch.zeros(3), torch.ones(1, 1), torch.zeros(1), rate,
        1.0 + triple_margin(torch.float32),
    )
    fused = tuple(x.flatten() for x in fused)
    for name, (x, y, z) in (("normalise_triple", normalise_triple(a, b, c)), ("fused front", fused)):
        assert x.dtype == torch.float32, name
        matrices = torch.stack(
            [torch.stack([x, y], -1), torch.stack([z, torch.zeros_like(x)], -1)], -2
        ).double().reshape(-1, 2, 2)
        largest = float(torch.linalg.matrix_norm(matrices, ord=2).max())
        assert largest <= 1.0, f"{name}: a stored float32 triple has norm {largest!r} > 1"
        assert largest > 1.0 - 1e-4, f"{name}: the largest norm {largest!r} is not at the boundary"


@pytest.mark.parametrize("scale", [1.0, 1e-4, 1e4])
def test_tv_worst_case_random_and_extreme(scale: float, record_property: Callable[[str, object], None]) -> None:
    worst = 0.0
    for gamma in (1e-3, 1.0, 1e3):
        torch.manual_seed(7)
        core = make_core("tv", block_gamma=gamma).double()
        _scaled_draw(core, scale, torch.Generator().manual_seed(int(gamma * 1000) + 1))
        worst = max(worst, _tv_worst_ratio(core, gamma))
    record_property("max_worst_case_over_bound", worst)


def test_tv_triples_are_contractions() -> None:
    torch.manual_seed(0)
    core = randomize_parameters(make_core("tv"), scale=3.0).double()
    with torch.no_grad():
        a, b, c = core.triples(torch.randn(4, 30, 5, dtype=torch.float64) * 10)
    matrices = torch.stack([torch.stack([a, b], -1), torch.stack([c, torch.zeros_like(a)], -1)], -2)
    assert float(torch.linalg.matrix_norm(matrices.detach(), ord=2).max()) <= 1.0
    assert float(a.min()) >= 0.0


def test_tv_worst_case_after_training(record_property: Callable[[str, object], None]) -> None:
    torch.manual_seed(1)
    gamma = 1.5
    core = make_core("tv", block_gamma=gamma, train_gamma=True).double()
    optimizer = torch.optim.Adam(core.parameters(), lr=0.05)
    u = torch.randn(8, 40, 5, dtype=torch.float64)
    target = 5.0 * torch.roll(u[..., :4], shifts=1, dims=1)  # needs more gain than gamma allows
    for _ in range(30):
        optimizer.zero_grad()
        y, _ = core(u)
        loss = (y - target).pow(2).mean()
        loss.backward()
        optimizer.step()
    trained_gamma = float(core.bound().detach())
    assert trained_gamma != pytest.approx(gamma)  # gamma trained
    ratio = _tv_worst_ratio(core, trained_gamma)
    record_property("max_worst_case_over_bound", ratio)
    assert ratio <= 1 + 1e-6


def test_tv_hidden_selector_equivalence_and_gain() -> None:
    check_core_equivalence(lambda: make_core("tv", d_selector=8), d_input=5, lengths=(1, 7, 130))
    torch.manual_seed(2)
    core = randomize_parameters(make_core("tv", d_selector=8, block_gamma=0.7), scale=2.0).double()
    assert _tv_worst_ratio(core, float(core.bound())) <= 1 + 1e-6


def test_tv_initial_decays_in_ring() -> None:
    core = TV(3, 2, 16, rmin=0.9, rmax=0.99).double()
    with torch.no_grad():
        a, b, c = core.triples(torch.zeros(1, 1, 3, dtype=torch.float64))
    assert float(a.min()) >= 0.9 - 1e-6
    assert float(a.max()) <= 0.99 + 1e-6
    dc_gain = b * c / (1 - a)
    assert float(dc_gain.min()) > 0.99
    assert float(dc_gain.max()) <= 1.0


def test_tv_is_not_incremental() -> None:
    assert TV.certificate_kind is CertificateKind.GAIN


# ---------------------------------------------------------------- whole models


def _model_kwargs(name: str) -> dict[str, object]:
    # l2ru needs d_state = d_model, l2n an even d_state.
    return {"d_model": 6, "d_state": 6, "n_layers": 2, "param": name, "ff": "LGLU"}


@pytest.mark.parametrize("name", CERTIFIED)
def test_deep_ssm_gain_with_lglu(name: str, record_property: Callable[[str, object], None]) -> None:
    torch.manual_seed(4)
    model = DeepSSM(2, 3, gamma=2.0, **_model_kwargs(name))
    randomize_parameters(model, scale=0.5)
    model = model.double()
    expected_kind = CertificateKind.weakest(
        [BUILTINS.get(PluginKind.CORE, name).certificate, BUILTINS.get(PluginKind.LAYER, "LGLU").certificate]
    )
    report = model.certificate()
    assert report.kind == expected_kind.value
    assert report.bound is not None and report.bound <= 2.0 * (1 + 1e-9)
    found = worst_case_gain(model, 2, length=32, starts=4, steps=80, lr=0.1, dtype=torch.float64)
    record_property("worst_case_over_gamma", found / 2.0)
    assert found <= 2.0 * (1 + 1e-6)


def test_l2ru_config_requires_square() -> None:
    with pytest.raises(ValueError, match="set d_state=8"):
        SSMConfig(d_model=8, d_state=6, param="l2ru", ff="LGLU", gamma=1.0)
    with pytest.raises(ValueError, match="d_state equal to d_model"):
        make_core("l2ru", CoreSpec(d_input=4, d_output=4, d_state=6))


LTI_CORES = [name for name in CORES if is_lti(name)]


@pytest.mark.parametrize("name", LTI_CORES)
def test_linear_config_trains_one_step(name: str) -> None:
    torch.manual_seed(0)
    certified = name in CERTIFIED
    model = DeepSSM(
        1, 1, d_model=2, d_state=2, n_layers=1, param=name, ff="LGLU" if certified else "GLU",
        gamma=2.0 if certified else None,
    )
    u = torch.randn(4, 50, 1)
    target = torch.roll(u, shifts=2, dims=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    loss = (model(u)[0] - target).pow(2).mean()
    loss.backward()
    for parameter in model.parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and bool(torch.isfinite(parameter.grad).all())
    optimizer.step()
    assert any(not torch.equal(old, new) for old, new in zip(before, model.parameters()))
    assert bool(torch.isfinite(model(u)[0]).all())
    if certified:
        assert model.certificate().bound <= 2.0 * (1 + 1e-6)


def test_pure_l2ru_trains_one_step() -> None:
    torch.manual_seed(0)
    model = PureLRUR(2, gamma=0.5, param="l2ru")
    u = torch.randn(3, 40, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = (model(u, mode="scan")[0] - u).pow(2).mean()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = float((model(u)[0] - u).pow(2).mean())
    assert after < float(loss.detach())
    assert check_lti_certificate(model.core, 0.5) <= 1 + 1e-6


# ---------------------------------------------------------------- standalone classes


def test_pure_lrur_shapes_and_certificate() -> None:
    u = torch.randn(2, 30, 4)
    certified = PureLRUR(4, 0.5, "l2ru")
    y, states = certified(u, mode="loop")
    assert y.shape == (2, 30, 4)
    assert states.shape == (2, 31, 4)
    assert certified.certificate().kind is CertificateKind.INCREMENTAL
    assert certified.certificate().bound == pytest.approx(0.5)
    plain = PureLRUR(4, param="lru")
    y, states = plain(u, mode="scan")
    assert y.shape == (2, 30, 4)
    assert states.is_complex()
    assert not plain.certificate().certified


def test_pure_lrur_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="gamma=None"):
        PureLRUR(4, gamma=1.0, param="lru")
    with pytest.raises(ValueError, match="l2ru"):
        PureLRUR(4, param="l2n")


def test_simple_rnn_call_shape_and_state() -> None:
    torch.manual_seed(0)
    model = SimpleRNN(3, 2, d_hidden=8, n_layers=2)
    u = torch.randn(4, 20, 3)
    y, states = model(u, mode="scan")
    assert y.shape == (4, 20, 2)
    assert len(states) == 2
    assert states[0].shape == (4, 8)
    y_first, carried = model(u[:, :7])
    y_second, _ = model(u[:, 7:], state=carried, mode="loop")
    assert torch.allclose(torch.cat([y_first, y_second], 1), y, atol=1e-6)
    with pytest.raises(ValueError, match="Registered backends"):
        model(u, mode="scna")


def test_older_names_are_exported() -> None:
    import nssm_plugins

    assert lruz is ZAK
    for name in ("LRU", "L2RU", "lruz", "PureLRUR", "SimpleRNN"):
        assert name in nssm_plugins.__all__
    assert isinstance(L2RU(3), nn.Module) and isinstance(LRU(2, 2, 2), nn.Module)


def test_hinf_of_l2ru_uses_float64() -> None:
    core = L2RU(3)
    matrices = core.lti_matrices()
    assert all(m.dtype == torch.float64 for m in matrices)
    assert hinf_norm(*matrices) <= 1.0 * (1 + 1e-6)
