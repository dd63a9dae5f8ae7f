"""torch.compile on every registered core and backend, and bf16 autocast keeping the recurrences in float32."""

from __future__ import annotations

import warnings

import pytest
import torch

from nssm_core import CertificateKind, DeepSSM, PluginKind, get_registry
from nssm_core.analysis import worst_case_gain

COMPILE_STEPS = 11  # chunks of 2 or 3 steps plus a remainder, and short enough for the loop backend to trace


def core_names() -> list[str]:
    return get_registry().names(PluginKind.CORE)


def core_backend_pairs() -> list[tuple[str, str]]:
    registry = get_registry()
    pairs = []
    for core in registry.entries(PluginKind.CORE):
        for backend in registry.names(PluginKind.BACKEND):
            if core.structure in registry.backend(backend).structures:
                pairs.append((core.name, backend))
    return pairs


def build(param: str, *, width: int = 4, n_layers: int = 2) -> DeepSSM:
    """A small model of ``param``: TLIP layers and gamma 2 for certified cores, GLU otherwise."""
    entry = get_registry().get(PluginKind.CORE, param)
    certified = entry.certificate is not CertificateKind.NONE
    layer = "TLIP" if certified else "GLU"
    return DeepSSM(
        2, 2, d_model=width, d_state=width, n_layers=n_layers, param=param, ff=layer, gamma=2.0 if certified else None
    )


def require_torch_compile() -> None:
    """Skip the calling test, with the reason, where torch.compile cannot run on this platform."""
    try:
        torch.compile(lambda x: x + 1, backend="eager")(torch.ones(1))
    except Exception as error:  # noqa: BLE001 - any failure here means compile is unavailable
        pytest.skip(f"torch.compile is unavailable on this platform: {type(error).__name__}: {error}")


@pytest.mark.parametrize(("param", "backend"), core_backend_pairs())
def test_compiled_core_matches_eager(param: str, backend: str) -> None:
    require_torch_compile()
    torch.manual_seed(0)
    model = build(param, n_layers=1)
    u = torch.randn(2, COMPILE_STEPS, 2)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y_compiled, states_compiled = compiled(u, mode=backend)
        loss_compiled = y_compiled.square().sum()
        grads_compiled = torch.autograd.grad(loss_compiled, list(model.parameters()), allow_unused=True)
    y_eager, states_eager = model(u, mode=backend)
    grads_eager = torch.autograd.grad(y_eager.square().sum(), list(model.parameters()), allow_unused=True)

    torch.testing.assert_close(y_compiled, y_eager, rtol=1e-5, atol=1e-5)
    for got, want in zip(states_compiled, states_eager):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for (name, _), got, want in zip(model.named_parameters(), grads_compiled, grads_eager):
        assert (got is None) == (want is None), name
        if got is not None:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=f"{param}/{backend}: gradient of {name}")


class RecordingBackend:
    """Wrap a registered backend and record the dtypes of every recurrence it evaluates."""

    def __init__(self, name: str) -> None:
        self.inner = get_registry().backend(name)
        self.name = f"recording-{name}"
        self.structures = self.inner.structures
        self.seen: list[tuple[torch.dtype, torch.dtype, torch.dtype]] = []

    def diagonal(self, a: torch.Tensor, b: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        self.seen.append((a.dtype, b.dtype, x0.dtype))
        return self.inner.diagonal(a, b, x0)

    def dense(self, a: torch.Tensor, b: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        self.seen.append((a.dtype, b.dtype, x0.dtype))
        return self.inner.dense(a, b, x0)


FULL_PRECISION = {torch.float32, torch.float64, torch.complex64, torch.complex128}


@pytest.mark.parametrize("param", core_names())
def test_bf16_recurrences_stay_float32(param: str) -> None:
    torch.manual_seed(0)
    model = build(param, width=8).eval()
    u = torch.randn(3, 64, 2)
    backend = RecordingBackend("scan")
    with torch.no_grad():
        reference, _ = model(u)
    bound_before = model.certificate().bound
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y, states = model(u, mode=backend)
        certificate = model.certificate()
    assert backend.seen, "the recording backend was not used"
    for a_dtype, b_dtype, x0_dtype in backend.seen:
        assert {a_dtype, b_dtype, x0_dtype} <= FULL_PRECISION, f"{param}: recurrence ran in {a_dtype}, {b_dtype}, {x0_dtype}"
    assert all(state.dtype in FULL_PRECISION for state in states)
    assert torch.isfinite(y).all()
    # bf16 products keep about 3 significant digits.
    torch.testing.assert_close(y.float(), reference, rtol=0.1, atol=0.1 * float(reference.abs().max()))
    assert certificate.bound == bound_before


@pytest.mark.parametrize("param", [name for name in core_names() if name != "lru"])
def test_bf16_gain_within_certificate(param: str) -> None:
    torch.manual_seed(1)
    model = build(param, width=8).eval()
    bound = model.certificate().bound
    assert bound is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        found = worst_case_gain(model, 2, length=40, steps=60, seed=0)
    assert found <= bound, f"{param}: a gain of {found} under bf16 autocast exceeds the certified {bound}"
