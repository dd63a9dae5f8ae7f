"""Evaluation in time blocks: the no-grad forward of DeepSSM and the fused front of the tv core."""

from __future__ import annotations

import pytest
import torch

from nssm_core import DeepSSM, PluginKind, get_registry
from nssm_plugins.backends import LoopBackend
from nssm_plugins.cores import _tv
from nssm_plugins.cores._tv import TV


@pytest.mark.parametrize("param", get_registry().names(PluginKind.CORE))
def test_blocked_forward_equals_whole(param: str) -> None:
    torch.manual_seed(0)
    width = 4  # l2ru needs d_state == d_model
    gamma = None if param == "lru" else 2.0
    model = DeepSSM(2, 3, d_model=width, d_state=width, n_layers=2, param=param, ff="LMLP", gamma=gamma)
    model = model.double().eval()
    model.inference_block_elements = 64  # blocks of max(256, 64 // (2 * 4)) = 256 steps
    u = torch.randn(2, 1100, 2, dtype=torch.float64)  # four full blocks and a partial one

    y_whole, states_whole = model(u)  # autograd on: one pass over the whole sequence
    assert model._time_block_length(u) is None
    with torch.no_grad():
        assert model._time_block_length(u) == 256
        y_blocks, states_blocks = model(u)
    torch.testing.assert_close(y_blocks, y_whole.detach(), rtol=1e-10, atol=1e-10)
    for got, want in zip(states_blocks, states_whole):
        torch.testing.assert_close(got, want.detach(), rtol=1e-10, atol=1e-10)

    # Carrying on from the final states continues the sequence in both paths.
    follow = torch.randn(2, 600, 2, dtype=torch.float64)
    with torch.no_grad():
        y_next, _ = model(follow, state=states_blocks)
    y_joined, _ = model(torch.cat([u, follow], dim=1))
    torch.testing.assert_close(y_next, y_joined[:, 1100:].detach(), rtol=1e-10, atol=1e-10)


def test_short_inputs_run_whole() -> None:
    model = DeepSSM(1, 1, d_model=4, d_state=4, n_layers=1, param="l2n", ff="TLIP", gamma=2.0)
    with torch.no_grad():
        assert model._time_block_length(torch.zeros(1, 10, 1)) is None
        assert model._time_block_length(torch.zeros(1, 10**6, 1)) == (1 << 19) // 4
    assert model._time_block_length(torch.zeros(1, 10, 1)) is None  # autograd on
    assert model._time_block_length(torch.zeros(1, 10**6, 1)) == (1 << 19) // 4
    model.training_block_elements = None
    assert model._time_block_length(torch.zeros(1, 10**6, 1)) is None
    model.inference_block_elements = None
    with torch.no_grad():
        assert model._time_block_length(torch.zeros(1, 10**6, 1)) is None


def tv_reference(core: TV, u: torch.Tensor) -> torch.Tensor:
    """The tv core written as separate autograd operations from its public pieces."""
    a, b, c = core.triples(u)
    v = u @ (core.input_matrix() * core.gamma.to(u.dtype)).T
    states = LoopBackend().diagonal(a, b * v, torch.zeros(u.shape[0], core.d_state, dtype=u.dtype))
    return (c * states[:, :-1]) @ core.output_matrix().T


@pytest.mark.parametrize("d_selector", [0, 4])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tv_fused_front_matches_unfused(dtype: torch.dtype, d_selector: int, monkeypatch: pytest.MonkeyPatch) -> None:
    original = _tv._time_blocks
    monkeypatch.setattr(_tv, "_time_blocks", lambda x: original(x, elements=60))  # several blocks per call
    torch.manual_seed(0)
    core = TV(3, 2, 5, gamma=1.5, d_selector=d_selector).to(dtype)
    with torch.no_grad():
        for parameter in core.parameters():
            parameter.mul_(3.0)  # most triples then need the normalisation
    u = torch.randn(2, 47, 3, dtype=dtype, requires_grad=True)
    a, b, c = core.triples(u)
    from nssm_plugins.cores._tv import contraction_norm_2x2

    assert float(contraction_norm_2x2(a, b, c).detach().max()) > 0.99  # some triple sits at the boundary, where the normalisation acts

    y, _ = core(u, mode="loop")
    reference = tv_reference(core, u)
    tolerance = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(y, reference, rtol=tolerance, atol=tolerance)
    inputs = [u, *core.parameters()]
    grads = torch.autograd.grad(y.square().sum(), inputs, allow_unused=True)
    expected = torch.autograd.grad(reference.square().sum(), inputs, allow_unused=True)
    for got, want in zip(grads, expected):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, rtol=10 * tolerance, atol=10 * tolerance)


def test_tv_core_saves_three_state_sized_tensors() -> None:
    # The front saves only its inputs. The scan keeps the decays and the states, and the output node the gates.
    torch.manual_seed(0)
    core = TV(3, 2, 16, gamma=1.5)
    u = torch.randn(4, 50, 3, requires_grad=True)
    saved: dict[int, tuple[int, ...]] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[tensor.untyped_storage().data_ptr()] = tuple(tensor.shape)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        y, _ = core(u, mode="scan")
    state_sized = [shape for shape in saved.values() if len(shape) == 3 and shape[-1] == 16]
    assert len(state_sized) == 3, state_sized
    y.square().sum().backward()  # the graph still differentiates
    assert u.grad is not None and torch.isfinite(u.grad).all()


@pytest.mark.parametrize("name", ["inference_block_elements", "training_block_elements"])
@pytest.mark.parametrize("bad", [0, -5, 1.5, "4096", True])
def test_invalid_block_elements_rejected(name: str, bad: object) -> None:
    model = DeepSSM(1, 1, d_model=4, d_state=4, n_layers=1, param="l2n", ff="TLIP", gamma=2.0)
    with pytest.raises(ValueError, match=f"{name} must be a positive integer .* or None .* default is 524288"):
        setattr(model, name, bad)
    assert getattr(model, name) == 1 << 19  # unchanged
