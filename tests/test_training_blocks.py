"""Training in time blocks: DeepSSM with autograd, with and without recomputation, and reused parameter transforms."""

from __future__ import annotations

import pytest
import torch

from nssm_core import DeepSSM, PluginKind, get_registry, parameter_transform, reuse_parameter_transforms
from nssm_plugins.layers import TLIP


def _model(param: str, **fields: object) -> DeepSSM:
    width = 4  # l2ru needs d_state == d_model
    gamma = None if param == "lru" else 2.0
    return DeepSSM(2, 3, d_model=width, d_state=width, n_layers=2, param=param, ff="TLIP", gamma=gamma, **fields)


def _loss_and_grads(model: DeepSSM, u: torch.Tensor, state: list[torch.Tensor] | None) -> list[torch.Tensor]:
    y, finals = model(u, state=state)
    # The final states enter the loss too, so their gradients flow back through the blocks.
    loss = y.square().sum() + sum((torch.view_as_real(s) if s.is_complex() else s).square().sum() for s in finals)
    leaves = [u, *model.parameters()] + ([] if state is None else state)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [y.detach(), *(g if g is not None else torch.zeros(()) for g in grads)]


@pytest.mark.parametrize("recompute", [False, True], ids=["keep-graph", "recompute"])
@pytest.mark.parametrize("param", get_registry().names(PluginKind.CORE))
def test_training_blocks_equal_whole_sequence(param: str, recompute: bool) -> None:
    torch.manual_seed(0)
    model = _model(param).double()
    u = torch.randn(2, 1100, 2, dtype=torch.float64, requires_grad=True)  # four blocks of 256 steps and a partial one
    states = [s.normal_().requires_grad_(True) for s in model.zero_states(2, dtype=torch.float64)]

    model.training_block_elements = None
    want = _loss_and_grads(model, u, states)
    model.training_block_elements = 64  # blocks of max(256, 64 // (2 * 4)) = 256 steps
    model.recompute_time_blocks = recompute
    assert model._time_block_length(u) == 256
    got = _loss_and_grads(model, u, states)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_recompute_replays_dropout() -> None:
    """Recomputed blocks draw the same dropout masks as the forward pass."""
    model = _model("l2n", dropout=0.5).double().train()
    model.training_block_elements = 64
    u = torch.randn(2, 800, 2, dtype=torch.float64)
    results = []
    for recompute in (False, True):
        model.recompute_time_blocks = recompute
        torch.manual_seed(3)
        y, _ = model(u)
        grads = torch.autograd.grad(y.square().sum(), list(model.parameters()))
        results.append([y.detach(), *grads])
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def _saved_values(model: DeepSSM, u: torch.Tensor) -> int:
    """Count the values that autograd saves for the backward pass during one forward call."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        y, _ = model(u)
    y.sum().backward()
    return total


def test_recompute_saves_no_sequence_sized_graph() -> None:
    model = DeepSSM(1, 1, d_model=8, d_state=8, n_layers=2, param="l2n", ff="TLIP", gamma=2.0)
    model.training_block_elements = 1024  # blocks of 256 steps at batch 4
    u = torch.randn(4, 4096, 1)
    kept_graph_values = _saved_values(model, u)
    model.recompute_time_blocks = True
    recomputed_values = _saved_values(model, u)
    parameters = sum(p.numel() for p in model.parameters())
    # The recomputing node saves the input and the parameters. Without it, the kept graphs contain
    # many values per step and channel.
    assert recomputed_values <= u.numel() + 2 * parameters
    assert kept_graph_values > 20 * u.numel() * 8


def test_transforms_computed_once_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = TLIP._forward_weights

    def counted(self: TLIP, dtype: torch.dtype) -> list[torch.Tensor]:
        calls.append(id(self))
        return original(self, dtype)

    monkeypatch.setattr(TLIP, "_forward_weights", counted)
    model = DeepSSM(1, 1, d_model=4, d_state=4, n_layers=3, param="l2n", ff="TLIP", gamma=2.0)
    model.training_block_elements = 64
    u = torch.randn(1, 2000, 1)  # blocks of max(256, 64 // 4) = 256 steps: eight blocks
    for grad in (False, True):
        calls.clear()
        with torch.set_grad_enabled(grad):
            y, _ = model(u)
        assert len(calls) == 3  # once per block of the model, not once per time block
    y.sum().backward()  # the reused weights take the gradient of all time blocks
    assert all(p.grad is not None for p in model.parameters())

    calls.clear()
    model.blocks[0].layer(torch.randn(5, 4))
    model.blocks[0].layer(torch.randn(5, 4))
    assert len(calls) == 2  # outside a model call every call computes its weights


def test_parameter_transform_keys() -> None:
    owner = torch.nn.Linear(2, 2)
    values = iter(range(100))
    with reuse_parameter_transforms():
        first = parameter_transform(owner, "a", lambda: next(values))
        assert parameter_transform(owner, "a", lambda: next(values)) == first
        assert parameter_transform(owner, "b", lambda: next(values)) != first
        assert parameter_transform(torch.nn.Linear(2, 2), "a", lambda: next(values)) != first
        with torch.no_grad():  # a value computed with autograd is not reused without it, nor the reverse
            assert parameter_transform(owner, "a", lambda: next(values)) != first
        with reuse_parameter_transforms():  # a nested block shares the outer one
            assert parameter_transform(owner, "a", lambda: next(values)) == first
    assert parameter_transform(owner, "a", lambda: -1) == -1


def test_recompute_rejects_second_order_gradients() -> None:
    """A gradient penalty needs the graph of the gradient, which recomputed blocks do not build: it must fail loudly."""
    model = _model("l2n").double()
    model.training_block_elements = 64
    u = torch.randn(2, 800, 2, dtype=torch.float64, requires_grad=True)
    model.recompute_time_blocks = True
    y, _ = model(u)
    (grad_u,) = torch.autograd.grad(y.square().sum(), u, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_u.square().sum().backward()


@pytest.mark.parametrize(
    ("name", "bad"),
    [("training_block_elements", 0), ("inference_block_elements", -1), ("recompute_time_blocks", "yes"),
     ("recompute_time_blocks", None)],
)
def test_block_settings_checked_when_set(name: str, bad: object) -> None:
    model = _model("l2n")
    before = getattr(model, name)
    with pytest.raises(ValueError, match=name):
        setattr(model, name, bad)
    assert getattr(model, name) == before
    other = _model("l2n")
    model.training_block_elements = None
    model.recompute_time_blocks = True
    assert (other.training_block_elements, other.recompute_time_blocks) == (1 << 19, False)  # per instance


def test_deepcopy_after_autograd_call() -> None:
    import copy

    model = _model("l2n")
    y, finals = model(torch.randn(2, 30, 2))
    clone = copy.deepcopy(model)
    assert clone._carried_states is not None
    for got, want in zip(clone._carried_states, finals):
        assert not got.requires_grad
        torch.testing.assert_close(got, want.detach())
    torch.testing.assert_close(clone(torch.ones(1, 5, 2))[0], model(torch.ones(1, 5, 2))[0])


@pytest.mark.parametrize("recompute", [False, True], ids=["keep-graph", "recompute"])
def test_padded_records_in_time_blocks(recompute: bool) -> None:
    from nssm_core.training import run_padded

    torch.manual_seed(0)
    model = _model("tv").double()
    u = torch.randn(3, 900, 2, dtype=torch.float64)
    lengths = torch.tensor([900, 517, 256])
    results = []
    for elements in (None, 64):  # one pass, then blocks of 256 steps
        model.training_block_elements = elements
        model.recompute_time_blocks = recompute
        y, finals = run_padded(model, u, lengths)
        loss = y.square().sum() + sum(s.square().sum() for s in finals)
        results.append([y.detach(), *(s.detach() for s in finals), *torch.autograd.grad(loss, list(model.parameters()))])
        assert model.recompute_time_blocks is recompute  # restored after the call
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("param", ["tv", "l2n"])
def test_recompute_keeps_autocast(param: str) -> None:
    # The recomputation in the backward pass must run under the forward pass's autocast, or the
    # gradients belong to a float32 model while the outputs came from a bf16 one.
    torch.manual_seed(0)
    model = _model(param)
    model.training_block_elements = 64
    model.recompute_time_blocks = True
    u = torch.randn(2, 700, 2)
    seen: list[tuple[bool, torch.dtype]] = []
    model.encoder.register_forward_hook(lambda module, inputs, output: seen.append((torch.is_grad_enabled(), output.dtype)))

    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = model(u)
    forward_calls = len(seen)
    grads = torch.autograd.grad(y.float().square().sum(), list(model.parameters()), allow_unused=True)

    recomputed = seen[forward_calls:]
    assert forward_calls > 1
    assert len(recomputed) == forward_calls
    assert all(grad_enabled and dtype == torch.bfloat16 for grad_enabled, dtype in recomputed)
    # Summed per block in float32, the gradients match the kept graphs (summed in bf16) up to about one bf16 step.
    model.recompute_time_blocks = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_kept, _ = model(u)
    kept_grads = torch.autograd.grad(y_kept.float().square().sum(), list(model.parameters()), allow_unused=True)
    assert torch.equal(y_kept, y)
    for want, got in zip(kept_grads, grads):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=2e-2, atol=float(want.abs().max()) * 2**-7)
