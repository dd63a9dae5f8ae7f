"""DeepSSM call shapes, carried state and bad-input errors."""

from __future__ import annotations

import pytest
import torch

from nssm_core import DeepSSM


@pytest.fixture
def model():
    return DeepSSM(3, 2, d_model=5, d_state=6, n_layers=2, param="l2n", ff="LGLU", gamma=2.0).double()


def test_output_and_state_shapes(model):
    y, states = model(torch.randn(4, 11, 3, dtype=torch.float64))
    assert y.shape == (4, 11, 2)
    assert len(states) == 2
    assert all(state.shape == (4, 6) for state in states)


def test_low_rank_inputs_promoted(model):
    u = torch.randn(1, 9, 3, dtype=torch.float64)
    y, _ = model(u)
    y2d, _ = model(u[0])
    y1d, _ = model(u[0, 0])
    torch.testing.assert_close(y2d, y)
    torch.testing.assert_close(y1d, y[:, :1])


def test_states_continue_sequence(model):
    u = torch.randn(2, 40, 3, dtype=torch.float64)
    y_full, states_full = model(u, mode="loop")
    y1, states1 = model(u[:, :17])
    y2, states2 = model(u[:, 17:], state=states1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_full, rtol=1e-10, atol=1e-10)
    for a, b in zip(states2, states_full):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_reset_state_false_carries(model):
    u = torch.randn(2, 30, 3, dtype=torch.float64)
    y_full, _ = model(u)
    y1, _ = model(u[:, :10])
    y2, _ = model(u[:, 10:], reset_state=False)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_full, rtol=1e-10, atol=1e-10)
    y_fresh, _ = model(u[:, 10:], reset_state=True)
    assert not torch.allclose(y_fresh, y2)


def test_detach_state(model):
    u = torch.randn(2, 5, 3, dtype=torch.float64)
    _, states = model(u, detach_state=True)
    assert all(not state.requires_grad for state in states)
    _, states = model(u, detach_state=False)
    assert all(state.requires_grad for state in states)


def test_wrong_last_dimension(model):
    with pytest.raises(ValueError, match=r"4 channels.*d_input=3"):
        model(torch.randn(2, 5, 4, dtype=torch.float64))


def test_four_dimensional_input(model):
    with pytest.raises(ValueError, match=r"4-D shape \(1, 2, 5, 3\)"):
        model(torch.randn(1, 2, 5, 3, dtype=torch.float64))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input(model, bad):
    u = torch.randn(2, 5, 3, dtype=torch.float64)
    u[1, 3, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        model(u)


def test_integer_input_rejected(model):
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.ones(2, 5, 3, dtype=torch.int64))


def test_non_tensor_input_rejected(model):
    with pytest.raises(TypeError, match="list"):
        model([[0.0, 1.0, 2.0]])


def test_wrong_state_shape(model):
    u = torch.randn(2, 5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"shape \(2, 7\)"):
        model(u, state=[torch.zeros(2, 7, dtype=torch.float64)] * 2)
    with pytest.raises(ValueError, match="list of 2 tensors"):
        model(u, state=[torch.zeros(2, 6, dtype=torch.float64)])


def test_unknown_mode(model):
    with pytest.raises(ValueError, match=r"unknown backend 'scna'.*Did you mean 'scan'"):
        model(torch.randn(2, 5, 3, dtype=torch.float64), mode="scna")
    with pytest.raises(TypeError, match="mode"):
        model(torch.randn(2, 5, 3, dtype=torch.float64), mode=3)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_model_sizes(bad):
    with pytest.raises(ValueError, match="d_input"):
        DeepSSM(bad, 1)


def test_step_streaming_matches_forward(model):
    u = torch.randn(2, 25, 3, dtype=torch.float64)
    y_full, states_full = model(u)
    state = None
    outputs = []
    for t in range(10):
        y_t, state = model.step(u[:, t], state)
        assert y_t.shape == (2, 2)
        outputs.append(y_t)
    y_chunk, state = model.step(u[:, 10:], state)
    streamed = torch.cat([torch.stack(outputs, 1), y_chunk], 1)
    torch.testing.assert_close(streamed, y_full, rtol=1e-10, atol=1e-10)
    for a, b in zip(state, states_full):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_step_rejects_bad_rank(model):
    with pytest.raises(ValueError, match="step expects"):
        model.step(torch.randn(3, dtype=torch.float64))


def test_input_dtype_mismatch_named(model):
    with pytest.raises(TypeError, match=r"torch.float32.*model.to"):
        model(torch.randn(2, 5, 3, dtype=torch.float32))


def test_channel_error_shows_passed_shape():
    model = DeepSSM(2, 1, d_model=4, d_state=4, n_layers=1, param="l2n", ff="TLIP", gamma=2.0)
    with pytest.raises(ValueError, match=r"shape \(10, 3\)\), but the model expects d_input=2"):
        model(torch.zeros(10, 3))
