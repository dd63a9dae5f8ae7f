"""Property-based tests: no certified plugin's measured gain exceeds its certificate.

Every certified core and layer in the registry is drawn with random shapes,
random or extreme raw parameters, in float32 and float64. LTI cores are
measured by their exact H-infinity norm, everything else by the worst-case
input search. Non-finite parameters must never be certified.
"""

from __future__ import annotations

import argparse
import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nssm_core import (
    CertificateKind,
    CoreSpec,
    DeepSSM,
    LayerSpec,
    ModelCertificate,
    PluginError,
    PluginKind,
    get_registry,
)
from nssm_core.analysis import hinf_norm, worst_case_gain
from nssm_core.cli._certify import HINF_RELATIVE_TOLERANCE, SEARCH_RELATIVE_TOLERANCES, certify_model


def certified_names(kind: PluginKind) -> list[str]:
    return [entry.name for entry in get_registry().entries(kind) if entry.certificate is not CertificateKind.NONE]


CERTIFIED_CORES = certified_names(PluginKind.CORE)
CERTIFIED_LAYERS = certified_names(PluginKind.LAYER)

# Scales of the raw parameters: tiny, ordinary and huge values, all finite.
RAW_SCALES = [0.0, 1e-8, 1e-3, 0.5, 3.0, 50.0, 1e4]

PROPERTY_SETTINGS = settings(
    max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.filter_too_much]
)

dtypes = st.sampled_from([torch.float32, torch.float64])
raw_parameters = st.tuples(st.sampled_from(["perturb", "replace"]), st.sampled_from(RAW_SCALES), st.integers(0, 2**16))


@torch.no_grad()
def set_raw_parameters(module: torch.nn.Module, operation: str, scale: float, seed: int) -> None:
    """Perturb every parameter by ``scale`` times Gaussian noise, or replace it by that noise."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in module.parameters():
        noise = scale * torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
        if operation == "replace":
            parameter.copy_(noise.to(parameter.dtype))
        else:
            parameter.add_(noise.to(parameter.dtype))


def build_or_reject(kind: PluginKind, name: str, spec: CoreSpec | LayerSpec) -> torch.nn.Module:
    """Build a plugin; a shape the plugin rejects with a clear error is not an example."""
    try:
        return get_registry().create(kind, name, spec)
    except (ValueError, PluginError):
        assume(False)
        raise  # unreachable: assume(False) raises


def certificate_or_none(module: torch.nn.Module):
    """Return the module's certificate, or ``None`` when it reports the bound as invalid."""
    try:
        report = module.certificate()
    except ValueError:
        return None  # an invalid bound is reported, which is not a false certificate
    certificate = report.certificate if isinstance(report, ModelCertificate) else report
    return certificate if certificate.certified else None


def search_tolerance(dtype: torch.dtype) -> float:
    return SEARCH_RELATIVE_TOLERANCES[dtype]


def test_registry_has_certified_plugins():
    assert "l2n" in CERTIFIED_CORES
    assert "LGLU" in CERTIFIED_LAYERS


@pytest.mark.parametrize("name", CERTIFIED_CORES)
@PROPERTY_SETTINGS
@given(
    shape=st.one_of(
        st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4).map(lambda k: 2 * k)),
        st.integers(1, 3).map(lambda k: (2 * k, 2 * k, 2 * k)),
    ),
    dtype=dtypes,
    raw=raw_parameters,
)
def test_core_gain_within_bound(name, shape, dtype, raw):
    d_input, d_output, d_state = shape
    core = build_or_reject(PluginKind.CORE, name, CoreSpec(d_input, d_output, d_state)).to(dtype)
    set_raw_parameters(core, *raw)
    certificate = certificate_or_none(core)
    assume(certificate is not None)
    case = f"{name} shape={shape} dtype={dtype} raw={raw} bound={certificate.bound}"

    if callable(getattr(core, "lti_matrices", None)):
        with torch.no_grad():
            norm = hinf_norm(*core.lti_matrices())
        assert norm <= certificate.bound * (1 + HINF_RELATIVE_TOLERANCE), f"{case}: H-infinity norm {norm}"
    else:
        core.eval()
        measured = worst_case_gain(core, d_input, 16, starts=2, steps=8, screen=16, dtype=dtype, seed=raw[2])
        assert measured <= certificate.bound * (1 + search_tolerance(dtype)), f"{case}: searched gain {measured}"
        if certificate.kind is CertificateKind.INCREMENTAL:
            measured = worst_case_gain(
                core, d_input, 16, starts=2, steps=8, screen=16, dtype=dtype, seed=raw[2], incremental=True
            )
            assert measured <= certificate.bound * (1 + search_tolerance(dtype)), f"{case}: incremental {measured}"


@pytest.mark.parametrize("name", CERTIFIED_LAYERS)
@PROPERTY_SETTINGS
@given(d_model=st.integers(1, 6), dtype=dtypes, raw=raw_parameters, amplitude=st.sampled_from([1e-4, 1.0, 1e4]))
def test_layer_gain_within_bound(name, d_model, dtype, raw, amplitude):
    layer = build_or_reject(PluginKind.LAYER, name, LayerSpec(d_model=d_model, d_hidden=2 * d_model)).to(dtype)
    set_raw_parameters(layer, *raw)
    layer.eval()
    certificate = certificate_or_none(layer)
    assume(certificate is not None)
    tolerance = search_tolerance(dtype)
    case = f"{name} d_model={d_model} dtype={dtype} raw={raw} bound={certificate.bound}"

    # Random samples at the drawn amplitude, then the gradient search.
    generator = torch.Generator().manual_seed(raw[2])
    x = amplitude * torch.randn(64, d_model, generator=generator, dtype=torch.float64).to(dtype)
    with torch.no_grad():
        sampled = float((layer(x).double().norm(dim=-1) / x.double().norm(dim=-1)).max())
    assert sampled <= certificate.bound * (1 + tolerance), f"{case}: sampled gain {sampled}"
    incremental = certificate.kind is CertificateKind.INCREMENTAL
    measured = worst_case_gain(
        layer, d_model, 1, starts=4, steps=10, screen=16, dtype=dtype, seed=raw[2], incremental=incremental
    )
    assert measured <= certificate.bound * (1 + tolerance), f"{case}: searched ratio {measured}"


@PROPERTY_SETTINGS
@given(
    core=st.sampled_from(CERTIFIED_CORES),
    layer=st.sampled_from(CERTIFIED_LAYERS),
    gamma=st.sampled_from([0.1, 1.0, 2.0, 10.0]),
    n_layers=st.integers(1, 3),
    dtype=dtypes,
    raw=raw_parameters,
)
def test_model_gain_within_prescribed_gamma(core, layer, gamma, n_layers, dtype, raw):
    try:
        model = DeepSSM(2, 1, d_model=4, d_state=4, d_hidden=8, n_layers=n_layers, param=core, ff=layer, gamma=gamma)
    except (ValueError, PluginError):
        assume(False)
    model = model.to(dtype)
    set_raw_parameters(model, *raw)
    model.eval()
    certificate = certificate_or_none(model)
    assume(certificate is not None)
    case = f"{core}+{layer} gamma={gamma} n_layers={n_layers} dtype={dtype} raw={raw}"

    assert certificate.bound <= gamma * (1 + 1e-9), f"{case}: bound {certificate.bound} exceeds gamma"
    measured = worst_case_gain(model, 2, 16, starts=2, steps=8, screen=16, dtype=dtype, seed=raw[2])
    assert measured <= certificate.bound * (1 + search_tolerance(dtype)), f"{case}: searched gain {measured}"
    if certificate.kind is CertificateKind.INCREMENTAL:
        measured = worst_case_gain(
            model, 2, 16, starts=2, steps=8, screen=16, dtype=dtype, seed=raw[2], incremental=True
        )
        assert measured <= certificate.bound * (1 + search_tolerance(dtype)), f"{case}: incremental {measured}"


def certify_arguments() -> argparse.Namespace:
    return argparse.Namespace(length=8, starts=2, steps=2, restarts=0, seed=0, mode="scan", dtype="float64")


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    part=st.one_of(
        st.tuples(st.just("core"), st.sampled_from(CERTIFIED_CORES)),
        st.tuples(st.just("layer"), st.sampled_from(CERTIFIED_LAYERS)),
    ),
    value=st.sampled_from([math.nan, math.inf, -math.inf]),
    choice=st.integers(0, 2**16),
)
def test_nonfinite_parameter_never_certified(part, value, choice):
    role, name = part
    fields = {"param": name, "ff": "LGLU"} if role == "core" else {"param": "l2n", "ff": name}
    try:
        model = DeepSSM(1, 1, d_model=4, d_state=4, d_hidden=8, n_layers=2, gamma=2.0, **fields)
    except (ValueError, PluginError):
        assume(False)
    parameters = [p for p in model.parameters() if p.numel() > 0]
    target = parameters[choice % len(parameters)]
    with torch.no_grad():
        target.view(-1)[choice % target.numel()] = value

    report = certify_model(model, certify_arguments(), None)
    assert report["passed"] is False
    assert report["checks"] == []
    assert any("NaN or inf" in reason for reason in report["invalid"]), report["invalid"]


def test_model_certificate_flags_nan_core_weight():
    model = DeepSSM(1, 1, d_model=4, d_state=4, n_layers=2, param="l2n", ff="LGLU", gamma=2.0)
    with torch.no_grad():
        model.blocks[0].core.K12[0, 0] = math.nan
    certificate = model.certificate()
    assert not certificate.certificate.certified, f"NaN weight certified with bound {certificate.bound}"
    assert any("blocks.0.core.K12" in note for note in certificate.notes), certificate.notes


def test_hinf_norm_square_system():
    # A square B once made linalg.solve read the last frequency chunk as vectors.
    for n in (1, 3, 8):
        a = 0.5 * torch.eye(n, dtype=torch.float64)
        identity = torch.eye(n, dtype=torch.float64)
        norm = hinf_norm(a, identity, identity, torch.zeros(n, n, dtype=torch.float64))
        assert norm == pytest.approx(2.0, rel=1e-12)  # 1 / (1 - 0.5) at frequency 0


def test_hinf_norm_nan_matrix_is_nan():
    a = torch.tensor([[0.5, math.nan], [0.0, 0.5]], dtype=torch.float64)
    identity = torch.eye(2, dtype=torch.float64)
    assert math.isnan(hinf_norm(a, identity, identity, identity))


def test_search_approaches_hinf_from_below():
    core = get_registry().create(PluginKind.CORE, "l2n", CoreSpec(2, 2, 8)).double()
    set_raw_parameters(core, "perturb", 0.5, 3)
    with torch.no_grad():
        norm = hinf_norm(*core.lti_matrices())
    found = worst_case_gain(core, 2, 256, starts=4, steps=60, restarts=1)
    assert found <= norm * (1 + 1e-9)
    assert found >= 0.9 * norm


def test_search_reports_nan_output():
    def nan_after_first_step(u: torch.Tensor) -> torch.Tensor:
        return torch.where(torch.arange(u.shape[1]).reshape(1, -1, 1) > 0, math.nan, u)

    assert math.isnan(worst_case_gain(nan_after_first_step, 1, 8, starts=2, steps=3))


def test_search_rejects_initial_of_wrong_width():
    with pytest.raises(ValueError, match="initial must have shape"):
        worst_case_gain(lambda u: u, 2, 8, initial=torch.zeros(3, 8, 1))


def test_search_uses_data_windows():
    windows = torch.randn(3, 10, 1, dtype=torch.float64)
    found = worst_case_gain(lambda u: 0.5 * u, 1, initial=windows, steps=5, dtype=torch.float64)
    assert found == pytest.approx(0.5, rel=1e-12)
