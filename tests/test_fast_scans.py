"""The fast scan backends against the sequential reference: values, gradients, long sequences, torch.compile."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import torch

from nssm_core import DeepSSM, PluginKind, RecurrenceStructure, get_registry
from nssm_core.testing import check_core_equivalence
from nssm_plugins.backends import ChunkedScanBackend, LoopBackend
from nssm_plugins.backends import _chunked
from nssm_plugins.backends._chunked import chunked_diagonal_scan

TOLERANCE = 1e-10  # float64, relative to max(1, largest magnitude)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, description: str, tolerance: float = TOLERANCE) -> None:
    actual, expected = actual.detach(), expected.detach()
    scale = max(1.0, float(expected.abs().max()))
    error = float((actual - expected).abs().max())
    assert error <= tolerance * scale, f"{description}: max abs error {error:.3e} exceeds {tolerance:g} x {scale:.3e}"


def random_decays(
    shape: tuple[int, ...], complex_valued: bool, generator: torch.Generator, zero_fraction: float = 0.0
) -> torch.Tensor:
    """Draw decays with moduli spread over [1e-6, 0.9999] on a log scale, some set exactly to 0."""
    exponent = torch.rand(shape, generator=generator, dtype=torch.float64) * math.log10(1e-6)
    modulus = (10.0**exponent).clamp(max=0.9999)
    if zero_fraction:
        modulus = torch.where(torch.rand(shape, generator=generator, dtype=torch.float64) < zero_fraction, 0.0, modulus)
    if not complex_valued:
        sign = torch.where(torch.rand(shape, generator=generator, dtype=torch.float64) < 0.2, -1.0, 1.0)
        return modulus * sign
    phase = torch.rand(shape, generator=generator, dtype=torch.float64) * 2 * math.pi
    return torch.polar(modulus, phase)


def random_problem(
    batch: int, steps: int, width: int, *, complex_valued: bool, decay_shape: str, seed: int = 0, zero_fraction: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    dtype = torch.complex128 if complex_valued else torch.float64
    shapes = {"invariant": (width,), "varying": (batch, steps, width), "shared": (1, steps, width)}
    a = random_decays(shapes[decay_shape], complex_valued, generator, zero_fraction)
    b = torch.randn(batch, steps, width, generator=generator, dtype=dtype)
    x0 = torch.randn(batch, width, generator=generator, dtype=dtype)
    return a, b, x0


def sequential_states(a: np.ndarray, b: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """Evaluate x_{t+1} = a_t x_t + b_t one step after the other, in NumPy."""
    batch, steps, width = b.shape
    states = np.empty((batch, steps + 1, width), dtype=np.result_type(a, b, x0))
    states[:, 0] = x0
    for t in range(steps):
        decay = a[:, t] if a.ndim == 3 else a
        states[:, t + 1] = decay * states[:, t] + b[:, t]
    return states


def sequential_gradients(
    a: np.ndarray, states: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of Re(sum(weights * states)) by the adjoint recurrence, one step after the other, in NumPy.

    The adjoint is mu_T = conj(w_T) and mu_k = conj(w_k) + conj(a_k) mu_{k+1}. PyTorch's gradient of a
    real loss L with respect to a complex z is dL/dRe(z) + i dL/dIm(z), which is conj(w) for L = Re(w z).
    """
    steps = states.shape[1] - 1
    seeds = np.conj(weights)
    grad_b = np.empty_like(seeds[:, 1:])
    grad_a = np.zeros_like(seeds[:, 1:]) if a.ndim == 3 else np.zeros(a.shape, dtype=seeds.dtype)
    adjoint = seeds[:, steps].copy()
    for k in range(steps - 1, -1, -1):
        grad_b[:, k] = adjoint
        contribution = adjoint * np.conj(states[:, k])
        if a.ndim == 3:
            grad_a[:, k] = contribution
        else:
            grad_a += contribution.sum(axis=0)
        decay = a[:, k] if a.ndim == 3 else a
        adjoint = seeds[:, k] + np.conj(decay) * adjoint
    return grad_a, grad_b, adjoint


@pytest.mark.parametrize("complex_valued", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("decay_shape", ["invariant", "varying", "shared"])
@pytest.mark.parametrize(("chunk_size", "block_elements"), [(2, 1 << 20), (3, 1 << 20), (16, 1 << 20), (3, 100)])
def test_chunked_matches_loop_with_gradients(
    complex_valued: bool, decay_shape: str, chunk_size: int, block_elements: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 100 values per time block splits every sequence of more than 6 steps (batch 3, width 5) into blocks.
    monkeypatch.setattr(_chunked, "BLOCK_ELEMENTS", block_elements)
    backend = ChunkedScanBackend(chunk_size=chunk_size)
    for steps in (1, 2, 7, 31, 32, 33, 100, 257):
        case = f"steps={steps} chunk_size={chunk_size} blocks of {block_elements} {decay_shape} complex={complex_valued}"
        a, b, x0 = random_problem(3, steps, 5, complex_valued=complex_valued, decay_shape=decay_shape, seed=steps)
        for tensor in (a, b, x0):
            tensor.requires_grad_(True)
        expected = LoopBackend().diagonal(a, b, x0)
        actual = backend.diagonal(a, b, x0)
        assert actual.shape == expected.shape, case
        assert_close(actual, expected, f"{case}: states")

        weights = torch.randn(expected.shape, dtype=expected.dtype, generator=torch.Generator().manual_seed(1))
        expected_grads = torch.autograd.grad((expected * weights).real.sum(), (a, b, x0))
        actual_grads = torch.autograd.grad((actual * weights).real.sum(), (a, b, x0))
        for name, got, want in zip(("a", "b", "x0"), actual_grads, expected_grads):
            assert got.shape == want.shape, f"{case}: gradient of {name} has shape {tuple(got.shape)}"
            assert_close(got, want, f"{case}: gradient of {name}")


def test_chunked_promotes_real_decays_with_complex_drives() -> None:
    a, _, _ = random_problem(2, 50, 4, complex_valued=False, decay_shape="varying")
    _, b, x0 = random_problem(2, 50, 4, complex_valued=True, decay_shape="invariant")
    a.requires_grad_(True)
    actual = chunked_diagonal_scan(a, b, x0, chunk_size=4)
    expected = LoopBackend().diagonal(a, b, x0)
    assert actual.dtype == torch.complex128
    assert_close(actual, expected, "states")

    grad_actual = torch.autograd.grad(actual.abs().sum(), a)[0]
    grad_expected = torch.autograd.grad(expected.abs().sum(), a)[0]
    assert grad_actual.dtype == torch.float64
    assert_close(grad_actual, grad_expected, "gradient of real decays")


@pytest.mark.parametrize(
    ("complex_valued", "decay_shape", "zero_fraction"),
    [(True, "invariant", 0.0), (False, "varying", 0.01), (True, "varying", 0.01)],
    ids=["complex-invariant", "real-varying-zeros", "complex-varying-zeros"],
)
def test_chunked_accurate_on_100k_steps(complex_valued: bool, decay_shape: str, zero_fraction: float) -> None:
    steps = 100_000
    a, b, x0 = random_problem(
        2, steps, 6, complex_valued=complex_valued, decay_shape=decay_shape, zero_fraction=zero_fraction, seed=7
    )
    if decay_shape == "invariant":
        # One channel at each end of the modulus range, so both extremes are always covered.
        a = a.clone()
        a[0] = a[0] / a[0].abs() * 1e-6
        a[1] = a[1] / a[1].abs() * 0.9999
    else:
        assert int((a == 0).sum()) > 0, "the case must contain decays that are exactly 0"
    a.requires_grad_(True)
    b.requires_grad_(True)
    x0.requires_grad_(True)

    actual = chunked_diagonal_scan(a, b, x0)
    expected = sequential_states(a.detach().numpy(), b.detach().numpy(), x0.detach().numpy())
    assert torch.isfinite(actual).all()
    assert_close(actual.detach(), torch.from_numpy(expected), "states after 100k steps")

    weights = torch.randn(actual.shape, dtype=actual.dtype, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad((actual * weights).real.sum(), (a, b, x0))
    want_a, want_b, want_x0 = sequential_gradients(a.detach().numpy(), expected, weights.numpy())
    if not complex_valued:
        want_a, want_b, want_x0 = want_a.real, want_b.real, want_x0.real
    for name, got, want in zip(("a", "b", "x0"), grads, (want_a, want_b, want_x0)):
        assert_close(got, torch.from_numpy(np.ascontiguousarray(want)), f"gradient of {name} after 100k steps")


def test_chunked_float32_long_sequence_stays_accurate() -> None:
    a, b, x0 = random_problem(2, 20_000, 6, complex_valued=True, decay_shape="invariant", seed=11)
    a = a.clone()
    a[0] = a[0] / a[0].abs() * 0.9999
    expected = sequential_states(a.numpy(), b.numpy(), x0.numpy())
    actual = chunked_diagonal_scan(a.to(torch.complex64), b.to(torch.complex64), x0.to(torch.complex64))
    # float32 round-off grows with the effective memory 1 / (1 - |a|), 10^4 steps here.
    assert_close(actual.to(torch.complex128), torch.from_numpy(expected), "float32 states", tolerance=1e-3)


def test_chunked_reused_buffer_across_modes_and_threads() -> None:
    # The step-major buffer is reused from call to call: results must not depend on what ran before,
    # on inference mode (a buffer made inside it could not be written outside it) or on the thread.
    import threading

    _chunked._workspaces.__dict__.clear()
    small = random_problem(2, 300, 3, complex_valued=True, decay_shape="invariant", seed=5)
    large = random_problem(3, 2_000, 4, complex_valued=True, decay_shape="invariant", seed=6)
    expected = {id(p): torch.from_numpy(sequential_states(*(t.numpy() for t in p))) for p in (small, large)}
    with torch.inference_mode():
        first = chunked_diagonal_scan(*large)  # the buffer is made here, at its final size
    results = [(large, first), (small, chunked_diagonal_scan(*small)), (large, chunked_diagonal_scan(*large))]
    with torch.inference_mode():
        results.append((small, chunked_diagonal_scan(*small)))
    threaded: list[torch.Tensor] = []
    worker = threading.Thread(target=lambda: threaded.append(chunked_diagonal_scan(*large)))
    worker.start()
    worker.join()
    results.append((large, threaded[0]))
    for problem, actual in results:
        assert_close(actual, expected[id(problem)], "states with a reused buffer")


def test_chunked_rejects_bad_shapes() -> None:
    a, b, x0 = random_problem(2, 10, 3, complex_valued=False, decay_shape="varying")
    with pytest.raises(ValueError, match=r"decays a have shape \(2, 9, 3\)"):
        chunked_diagonal_scan(a[:, :9], b, x0)
    with pytest.raises(ValueError, match=r"decays a have shape \(4,\)"):
        chunked_diagonal_scan(torch.ones(4), b, x0)
    with pytest.raises(ValueError, match=r"initial state x0 has shape \(3,\)"):
        chunked_diagonal_scan(a, b, x0[0])
    with pytest.raises(ValueError, match="chunk_size"):
        ChunkedScanBackend(chunk_size=1)


def test_chunked_backend_stores_validated_chunk_size() -> None:
    assert ChunkedScanBackend(chunk_size="8").chunk_size == 8  # type: ignore[arg-type]


@pytest.mark.parametrize("decay_shape", ["invariant", "varying"])
def test_chunked_zero_steps_gradients(decay_shape: str) -> None:
    a, b, x0 = random_problem(2, 0, 3, complex_valued=True, decay_shape=decay_shape)
    a, b, x0 = (t.requires_grad_(True) for t in (a, b, x0))
    states = chunked_diagonal_scan(a, b, x0)
    assert states.shape == (2, 1, 3)
    grad_a, grad_b, grad_x0 = torch.autograd.grad(states.abs().square().sum(), (a, b, x0), allow_unused=True)
    assert grad_b.shape == b.shape
    assert torch.allclose(grad_x0, 2 * x0.detach())
    assert grad_a is None or torch.count_nonzero(grad_a) == 0


def test_chunked_registered_for_diagonal_only() -> None:
    registry = get_registry()
    assert "chunked" in registry.names(PluginKind.BACKEND)
    backend = registry.backend("chunked")
    assert backend.structures == frozenset({RecurrenceStructure.DIAGONAL})
    options = registry.create(PluginKind.BACKEND, "chunked", options={"chunk_size": 8})
    assert options.chunk_size == 8
    with pytest.raises(NotImplementedError, match="diagonal recurrences only"):
        backend.dense(torch.eye(2), torch.zeros(1, 3, 2), torch.zeros(1, 2))


def test_chunked_double_backward_raises() -> None:
    a, b, x0 = random_problem(1, 20, 2, complex_valued=False, decay_shape="invariant")
    b.requires_grad_(True)
    (grad,) = torch.autograd.grad(chunked_diagonal_scan(a, b, x0, 4).square().sum(), b, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


def diagonal_cores() -> list[str]:
    registry = get_registry()
    return [entry.name for entry in registry.entries(PluginKind.CORE) if entry.structure is RecurrenceStructure.DIAGONAL]


@pytest.mark.parametrize("param", [name for name in ("lru", "l2n", "tv") if name in diagonal_cores()])
def test_builtin_cores_chunked_equal_loop(param: str) -> None:
    registry = get_registry()
    from nssm_core import CoreSpec

    spec = CoreSpec(d_input=3, d_output=2, d_state=6)
    check_core_equivalence(
        lambda: registry.create(PluginKind.CORE, param, spec),
        d_input=3,
        modes=("chunked",),
        batches=(2,),
        lengths=(1, 7, 150),
    )


@pytest.mark.parametrize(("param", "ff", "gamma"), [("l2n", "LGLU", 2.0), ("lru", "GLU", None)])
def test_model_gradients_chunked_equal_loop(param: str, ff: str, gamma: float | None) -> None:
    torch.manual_seed(0)
    model = DeepSSM(2, 2, d_model=6, d_state=6, n_layers=2, param=param, ff=ff, gamma=gamma).double()
    u = torch.randn(3, 300, 2, dtype=torch.float64)
    parameters = [p for p in model.parameters() if p.requires_grad]
    outputs, gradients = {}, {}
    for mode in ("loop", "chunked"):
        y, _ = model(u, mode=mode)
        outputs[mode] = y
        gradients[mode] = torch.autograd.grad(y.square().sum(), parameters)
    assert_close(outputs["chunked"], outputs["loop"], f"{param} output")
    for index, (got, want) in enumerate(zip(gradients["chunked"], gradients["loop"])):
        assert_close(got, want, f"{param} gradient of parameter {index}")


def require_torch_compile() -> None:
    """Skip the calling test, with the reason, where torch.compile cannot run on this platform."""
    try:
        torch.compile(lambda x: x + 1, backend="eager")(torch.ones(1))
    except Exception as error:  # noqa: BLE001 - any failure here means compile is unavailable
        pytest.skip(f"torch.compile is unavailable on this platform: {type(error).__name__}: {error}")


def compiled_matches_eager(param: str, ff: str, gamma: float | None, compiler: str) -> None:
    torch.manual_seed(0)
    model = DeepSSM(2, 2, d_model=4, d_state=4, n_layers=1, param=param, ff=ff, gamma=gamma)
    # A small chunk makes a short sequence take every path: chunks, carries over chunks, remaining steps.
    backend = ChunkedScanBackend(chunk_size=4)
    u = torch.randn(2, 37, 2)
    compiled = torch.compile(model, backend=compiler)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # inductor warns that it leaves complex operators to eager
        y_compiled, states_compiled = compiled(u, mode=backend)
    y_eager, states_eager = model(u, mode=backend)
    assert_close(y_compiled, y_eager, f"{param} compiled output", tolerance=1e-5)
    for got, want in zip(states_compiled, states_eager):
        assert_close(got, want, f"{param} compiled final state", tolerance=1e-5)

    parameters = list(model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grads_compiled = torch.autograd.grad(y_compiled.square().sum(), parameters)
    grads_eager = torch.autograd.grad(y_eager.square().sum(), parameters)
    for index, (got, want) in enumerate(zip(grads_compiled, grads_eager)):
        assert_close(got, want, f"{param} compiled gradient of parameter {index}", tolerance=1e-4)


@pytest.mark.parametrize(("param", "ff", "gamma"), [("l2n", "LGLU", 2.0), ("lru", "GLU", None)])
def test_compiled_model_matches_eager(param: str, ff: str, gamma: float | None) -> None:
    # aot_eager traces the model with dynamo and AOTAutograd, the custom autograd function and the
    # in-place chunk updates included, but runs the captured graph with eager kernels.
    require_torch_compile()
    compiled_matches_eager(param, ff, gamma, "aot_eager")


@pytest.mark.skipif(
    not os.environ.get("NSSM_TEST_INDUCTOR"),
    reason="inductor builds C++ kernels, about a minute of CPU per model; set NSSM_TEST_INDUCTOR=1 to run",
)
@pytest.mark.parametrize(("param", "ff", "gamma"), [("l2n", "LGLU", 2.0), ("lru", "GLU", None)])
def test_inductor_model_matches_eager(param: str, ff: str, gamma: float | None) -> None:
    require_torch_compile()
    compiled_matches_eager(param, ff, gamma, "inductor")
