"""Tests of the static layers, parametrized over every registered layer.

Bounded layers are attacked numerically: random pairs and a gradient search
(:func:`nssm_core.testing.check_layer_bound`), Jacobian norms at random
points, and an exact SVD of every normalised weight, on randomised and on
extreme raw parameters.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nssm_plugins.layers
from nssm_core import CertificateKind, DeepSSM, LayerSpec, get_registry
from nssm_core.analysis import worst_case_gain
from nssm_core.testing import check_layer_bound, randomize_parameters
from nssm_plugins.layers import (
    LGLU,
    LMLP,
    MLP,
    TLIP,
    cayley,
    centered_group_sort,
    centered_sort_halves,
    group_sort,
    halves_order,
)

D_MODEL = 6
SPEC = LayerSpec(d_model=D_MODEL, d_hidden=10, nl_layers=2)
SCALE = 1.7
"""Bound requested from layers that take a ``scale`` option, so a bound of 1 is not assumed anywhere."""


def _kind(name: str) -> CertificateKind:
    return get_registry().get("layer", name).certificate


LAYERS = get_registry().names("layer")
CERTIFIED = [name for name in LAYERS if _kind(name) is not CertificateKind.NONE]
INCREMENTAL = [name for name in LAYERS if _kind(name) is CertificateKind.INCREMENTAL]
BUILTIN_CERTIFIED = [name for name in CERTIFIED if get_registry().get("layer", name).distribution == "nssm"]
"""Certified layers of this package, whose normalised weights ``unit_norm_pieces`` reads."""
RAW_SCALES = [1.0, 1e-4, 1e4]


def make_layer(
    name: str, *, spec: LayerSpec = SPEC, dtype: torch.dtype = torch.float64, seed: int = 0, **options: object
) -> nn.Module:
    """Build layer ``name`` from the registry, with ``scale=SCALE`` where the layer has that option."""
    entry = get_registry().get("layer", name)
    if "scale" in entry.options.model_fields:
        options.setdefault("scale", SCALE)
    torch.manual_seed(seed)
    return get_registry().create("layer", name, spec, options=options).to(dtype)


def randomized_layer(name: str, raw_scale: float = 1.0, *, dtype: torch.dtype = torch.float64) -> nn.Module:
    """Build layer ``name``, add noise to its parameters, then multiply them by ``raw_scale``."""
    layer = make_layer(name, dtype=dtype)
    randomize_parameters(layer, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.mul_(raw_scale)
    return layer


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("shape", [(3, 5, D_MODEL), (5, D_MODEL), (D_MODEL,)])
def test_layer_output_shape_and_finite(name, shape):
    layer = make_layer(name, dtype=torch.float32)
    y = layer(torch.randn(shape))
    assert y.shape == shape
    assert y.dtype == torch.float32
    assert bool(torch.isfinite(y).all())


@pytest.mark.parametrize("name", LAYERS)
def test_layer_backward_reaches_every_parameter(name):
    layer = make_layer(name, dtype=torch.float32)
    layer(torch.randn(4, 7, D_MODEL)).square().sum().backward()
    for parameter_name, parameter in layer.named_parameters():
        assert parameter.grad is not None, f"{name}.{parameter_name} has no gradient"
        assert bool(torch.isfinite(parameter.grad).all()), f"{name}.{parameter_name} has a non-finite gradient"
        assert float(parameter.grad.abs().sum()) > 0, f"{name}.{parameter_name} has an all-zero gradient"


@pytest.mark.parametrize("name", LAYERS)
def test_layer_eval_is_bitwise_deterministic(name):
    layer = make_layer(name, spec=LayerSpec(d_model=D_MODEL, d_hidden=10, nl_layers=2, dropout=0.3))
    layer.eval()
    before = {key: value.clone() for key, value in layer.state_dict().items()}
    x = torch.randn(4, 9, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        first = layer(x)
        second = layer(x)
    assert torch.equal(first, second)
    after = layer.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"eval call changed {key}"


@pytest.mark.parametrize("name", CERTIFIED)
@pytest.mark.parametrize("raw_scale", RAW_SCALES)
def test_layer_bound_holds_under_search(name, raw_scale):
    layer = randomized_layer(name, raw_scale)
    ratio = check_layer_bound(layer, D_MODEL, incremental=_kind(name) is CertificateKind.INCREMENTAL)
    assert ratio <= 1.0 + 1e-6
    if raw_scale == 1.0:
        # A constant layer, or a bound far above the true constant, would also pass the check above.
        assert ratio > 0.25, f"{name}: search reached only {ratio:.3f} of the declared bound"


def declared_bound(layer: nn.Module) -> float:
    """Return the layer's bound as a float."""
    return float(layer.bound().detach())


def max_jacobian_norm(layer: nn.Module, dtype: torch.dtype, points: int = 64) -> float:
    """Return the largest spectral norm of the layer's input Jacobian at random points of scale 0.01 to 100."""
    generator = torch.Generator().manual_seed(2)
    scales = torch.logspace(-2, 2, points, dtype=dtype).unsqueeze(-1)
    inputs = torch.randn(points, D_MODEL, generator=generator, dtype=dtype) * scales
    jacobians = torch.func.vmap(torch.func.jacrev(layer))(inputs).detach()
    assert jacobians.shape == (points, D_MODEL, D_MODEL)
    return float(torch.linalg.matrix_norm(jacobians.double(), ord=2).max())


@pytest.mark.parametrize("name", INCREMENTAL)
@pytest.mark.parametrize("raw_scale", RAW_SCALES)
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_jacobian_norm_below_bound(name, raw_scale, dtype, tolerance):
    layer = randomized_layer(name, raw_scale, dtype=dtype).eval()
    largest = max_jacobian_norm(layer, dtype)
    bound = declared_bound(layer)
    assert largest <= bound * (1 + tolerance), f"{name}: Jacobian norm {largest} exceeds the bound {bound}"
    if raw_scale == 1.0:
        assert largest > 0.25 * bound, f"{name}: Jacobian norms reach only {largest / bound:.3f} of the bound"


def test_tlip_jacobian_reaches_bound_at_init():
    # Orthogonal weights and GroupSort, whose Jacobian is a permutation, make TLIP nearly an isometry at
    # initialisation, so a piece that stretches by a few percent shows up here.
    layer = make_layer("TLIP").eval()
    largest = max_jacobian_norm(layer, torch.float64, points=256)
    bound = declared_bound(layer)
    assert largest <= bound * (1 + 1e-6)
    assert largest > 0.99 * bound


def unit_norm_pieces(layer: nn.Module) -> dict[str, torch.Tensor]:
    """Return the matrices whose spectral norm the layer's bound assumes to be at most 1, by name."""
    if isinstance(layer, LGLU):
        return {"W": layer.normalised_weight()}
    if isinstance(layer, LMLP):
        pieces = {}
        for index, sandwich in enumerate([*layer.hidden, layer.output]):
            a_t, b_t = sandwich.factors()
            pieces[f"sandwich {index} [A^T; B^T]"] = torch.cat([a_t, b_t], dim=0)
        a_t, b_t = layer.output.factors()
        pieces["output 2 A^T B"] = 2.0 * a_t @ b_t.T
        return pieces
    if isinstance(layer, TLIP):
        return {f"W_{index}": weight for index, weight in enumerate(layer.normalised_weights())}
    raise AssertionError(f"no per-weight SVD check for {type(layer).__name__}. Add one to unit_norm_pieces.")


def bound_from_pieces(layer: nn.Module) -> float:
    """Return the bound the layer's construction gives when every piece has norm at most 1."""
    if isinstance(layer, LGLU):
        return float(layer.gains().detach().double().max())
    return layer.scale


@pytest.mark.parametrize("name", BUILTIN_CERTIFIED)
@pytest.mark.parametrize("raw_scale", RAW_SCALES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_normalised_weights_have_unit_norm(name, raw_scale, dtype):
    layer = randomized_layer(name, raw_scale, dtype=dtype)
    with torch.no_grad():
        pieces = unit_norm_pieces(layer)
        declared = declared_bound(layer)
    assert pieces
    for piece_name, matrix in pieces.items():
        assert matrix.dtype == dtype
        sigma = float(torch.linalg.svdvals(matrix.double()).max())
        assert sigma <= 1.0 + 1e-6, f"{name} {piece_name}: spectral norm {sigma}"
    expected = bound_from_pieces(layer)
    assert expected <= declared <= expected * (1 + 1e-6)


@pytest.mark.parametrize("name", ["LMLP", "TLIP"])
def test_centered_layer_maps_zero_to_zero(name):
    layer = randomized_layer(name)
    zeros = torch.zeros(3, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(layer(zeros), zeros)
        small = 1e-6 * torch.randn(256, D_MODEL, dtype=torch.float64)
        ratios = layer(small).norm(dim=-1) / small.norm(dim=-1)
    assert float(ratios.max()) <= declared_bound(layer)


@pytest.mark.parametrize("name", ["LMLP", "TLIP"])
@pytest.mark.parametrize("d_model", [1, D_MODEL])
def test_centered_layer_float32_gain_near_zero(name, d_model):
    # Subtracting f(0) naively cancels two values of the size of the biases, so in float32 the
    # round-off can exceed the tiny output. With that form TLIP exceeds its bound by up to 18% here.
    spec = LayerSpec(d_model=d_model, d_hidden=2 * d_model, nl_layers=2)
    worst = 0.0
    for seed in range(10):
        layer = make_layer(name, spec=spec, dtype=torch.float32, seed=seed).eval()
        generator = torch.Generator().manual_seed(seed)
        for amplitude in (1e-6, 1e-4, 1.0):
            x = amplitude * torch.randn(256, d_model, generator=generator)
            with torch.no_grad():
                ratios = layer(x).double().norm(dim=-1) / x.double().norm(dim=-1)
            worst = max(worst, float(ratios.max()) / declared_bound(layer))
    assert worst <= 1.0 + 1e-5


def test_centered_group_sort_matches_difference():
    generator = torch.Generator().manual_seed(4)
    for width in (1, 4, 7):
        z = torch.randn(50, width, generator=generator, dtype=torch.float64)
        bias = 3.0 * torch.randn(width, generator=generator, dtype=torch.float64)
        expected = group_sort(z + bias) - group_sort(bias)
        assert torch.allclose(centered_group_sort(z, bias), expected, atol=1e-12)
        zeros = torch.zeros(2, width)
        assert torch.equal(centered_group_sort(zeros, bias.float()), zeros)


def test_halves_order():
    assert halves_order(6).tolist() == [0, 2, 4, 1, 3, 5]
    assert halves_order(7).tolist() == [0, 2, 4, 1, 3, 5, 6]
    assert halves_order(1).tolist() == [0]


@pytest.mark.parametrize("width", [1, 2, 4, 7])
def test_centered_sort_halves_matches_interleaved(width):
    generator = torch.Generator().manual_seed(width)
    order = halves_order(width)
    z = torch.randn(3, 50, width, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = (3.0 * torch.randn(width, generator=generator, dtype=torch.float64)).requires_grad_()
    weights = torch.randn(3, 50, width, generator=generator, dtype=torch.float64)

    expected = centered_group_sort(z, bias)[..., order]
    halves = centered_sort_halves(z[..., order], bias)
    assert torch.equal(halves, expected)
    expected_grads = torch.autograd.grad((expected * weights).sum(), (z, bias), allow_unused=True, materialize_grads=True)
    grads = torch.autograd.grad((halves * weights).sum(), (z, bias), allow_unused=True, materialize_grads=True)
    for got, want in zip(grads, expected_grads):
        assert torch.allclose(got, want, rtol=0, atol=1e-12)
    # The functorch path (no writes into slices) gives the same values and Jacobian.
    jacobian = torch.func.jacrev(lambda x: centered_sort_halves(x, bias.detach()))(z.detach()[0, :4, order])
    reference = torch.func.jacrev(lambda x: centered_group_sort(x, bias.detach())[..., order])(z.detach()[0, :4])
    assert torch.allclose(jacobian, reference[..., order], atol=0)
    assert torch.equal(centered_sort_halves(torch.zeros(2, width), bias.detach().float()), torch.zeros(2, width))


@pytest.mark.parametrize(("d_hidden", "nl_layers"), [(6, 1), (7, 2), (8, 3)])
def test_tlip_matches_interleaved_reference(d_hidden, nl_layers):
    layer = randomize_parameters(TLIP(D_MODEL, d_hidden=d_hidden, nl_layers=nl_layers, scale=SCALE)).double()
    x = torch.randn(5, 20, D_MODEL, generator=torch.Generator().manual_seed(d_hidden), dtype=torch.float64)

    def reference() -> torch.Tensor:
        # The definition: sqrt(L) W_k+1 g(... g(W_1 sqrt(L) x + b_1) ...) in the interleaved channel order.
        *hidden, last = layer.normalised_weights()
        h = x * math.sqrt(SCALE)
        for weight, bias in zip(hidden, layer.biases):
            h = centered_group_sort(h @ weight.T, bias)
        return math.sqrt(SCALE) * h @ last.T

    expected = reference()
    got = layer(x)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    expected_grads = torch.autograd.grad(expected.square().sum(), list(layer.parameters()))
    got_grads = torch.autograd.grad(got.square().sum(), list(layer.parameters()))
    for got_grad, want in zip(got_grads, expected_grads):
        assert torch.allclose(got_grad, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["LMLP", "TLIP"])
def test_uncentered_layer_bounds_differences_only(name):
    layer = make_layer(name, centered=False)
    randomize_parameters(layer, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        offset = layer(torch.zeros(D_MODEL, dtype=torch.float64))
        small = 1e-6 * torch.randn(D_MODEL, dtype=torch.float64)
        plain_ratio = float(layer(small).norm() / small.norm())
    assert float(offset.norm()) > 0
    # f(0) != 0, so no plain gain bound holds near the origin ...
    assert plain_ratio > declared_bound(layer)
    # ... but the incremental bound still does, and the layer declares no certificate.
    assert check_layer_bound(layer, D_MODEL, incremental=True) <= 1.0 + 1e-6
    assert not layer.certificate().certified


@pytest.mark.parametrize("name", CERTIFIED)
def test_deep_ssm_certificate_with_layer(name):
    expected_kind = {"LGLU": "gain", "LMLP": "incremental", "TLIP": "incremental"}.get(
        name, CertificateKind.weakest([CertificateKind.INCREMENTAL, _kind(name)]).value
    )
    torch.manual_seed(0)
    model = DeepSSM(1, 1, param="l2n", ff=name, gamma=2.0).double()
    randomize_parameters(model, scale=0.2, generator=torch.Generator().manual_seed(3))
    certificate = model.certificate()
    assert certificate.kind == expected_kind
    assert certificate.bound is not None
    assert certificate.bound <= 2.0 * (1 + 1e-9)

    searches = [False, True] if expected_kind == "incremental" else [False]
    for incremental in searches:
        worst = worst_case_gain(model, 1, length=16, starts=4, steps=40, incremental=incremental)
        assert 0 < worst <= 2.0, f"{name}: worst-case ratio {worst} (incremental={incremental})"


def test_deep_ssm_rejects_uncentered_lmlp():
    with pytest.raises(ValueError, match=r"layer 'LMLP'.*no certified bound"):
        DeepSSM(1, 1, param="l2n", ff="LMLP", gamma=2.0, layer_options={"centered": False})
    model = DeepSSM(1, 1, param="l2n", ff="LMLP", layer_options={"centered": False}).double()
    assert model.certificate().kind == "none"
    # A zero input gives a non-zero output, so ||y|| / ||u|| is unbounded as u shrinks.
    small = 1e-8 * torch.randn(1, 16, 1, dtype=torch.float64)
    with torch.no_grad():
        y, _ = model(small)
    assert float(y.norm() / small.norm()) > 2.0


def test_mlp_has_nl_layers_hidden_layers():
    layer = MLP(D_MODEL, d_hidden=10, nl_layers=3)
    linears = [module for module in layer.modules() if isinstance(module, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(6, 10), (10, 10), (10, 10), (10, 6)]
    assert layer.bound() is None
    assert not layer.certificate().certified


def test_group_sort_sorts_pairs():
    x = torch.tensor([[3.0, 1.0, 2.0, 5.0, -1.0]])
    assert torch.equal(group_sort(x), torch.tensor([[1.0, 3.0, 2.0, 5.0, -1.0]]))
    assert torch.equal(group_sort(x[:, :4]), torch.tensor([[1.0, 3.0, 2.0, 5.0]]))


def test_tlip_with_odd_hidden_width_keeps_bound():
    torch.manual_seed(0)
    layer = randomize_parameters(TLIP(D_MODEL, d_hidden=7, nl_layers=2, scale=SCALE)).double()
    assert check_layer_bound(layer, D_MODEL, incremental=True, samples=64) <= 1.0 + 1e-6


@pytest.mark.parametrize(("n", "m"), [(4, 0), (4, 3), (3, 8)])
@pytest.mark.parametrize("raw_scale", RAW_SCALES)
def test_cayley_has_orthonormal_columns(n, m, raw_scale):
    weight = raw_scale * torch.randn(n + m, n, generator=torch.Generator().manual_seed(n + m), dtype=torch.float64)
    q = cayley(weight, n)
    assert q.shape == (n + m, n)
    gram = q.T @ q
    assert torch.allclose(gram, torch.eye(n, dtype=torch.float64), atol=1e-6)


def test_cayley_rejects_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        cayley(torch.randn(3, 4), 4)


@pytest.mark.parametrize("name", ["LMLP", "TLIP"])
def test_lipschitz_layer_rejects_invalid_options(name):
    entry = get_registry().get("layer", name)
    with pytest.raises(ValueError, match="scale"):
        get_registry().create("layer", name, SPEC, options={"scale": -1.0})
    with pytest.raises(ValueError, match="d_hidden"):
        entry.factory(LayerSpec(d_model=D_MODEL, d_hidden=0), entry.options())


def test_layers_namespace_exports_every_builtin_layer():
    builtins = [entry.name for entry in get_registry().entries("layer") if entry.distribution == "nssm"]
    assert {"GLU", "MLP", "LGLU", "LMLP", "TLIP"} <= set(builtins)
    for name in builtins:
        assert name in nssm_plugins.layers.__all__
        assert type(make_layer(name)) is getattr(nssm_plugins.layers, name)
