"""Checks that every core and layer must pass, for nssm's own tests and for plugin authors.

A plugin's pytest suite can call these on its own cores and layers::

    from nssm_core.testing import check_core_equivalence, check_lti_certificate

    def test_my_core_equivalence():
        check_core_equivalence(lambda: MyCore(5, 4, 6), d_input=5)

Each check raises ``AssertionError`` with the failing case in its message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from .analysis import hinf_norm, worst_case_gain

__all__ = [
    "TOLERANCES",
    "check_core_equivalence",
    "check_layer_bound",
    "check_lti_certificate",
    "randomize_parameters",
]

TOLERANCES: dict[torch.dtype, float] = {torch.float64: 1e-10, torch.float32: 1e-4}
"""Relative tolerance of the equivalence checks per dtype."""


@torch.no_grad()
def randomize_parameters(module: nn.Module, scale: float = 0.5, generator: torch.Generator | None = None) -> nn.Module:
    """Add Gaussian noise of std ``scale`` to every parameter of ``module``, in place.

    Defaults such as identity matrices, equal decays or all-ones vectors hide
    broadcasting bugs; tests perturb them first.
    """
    for parameter in module.parameters():
        noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
        parameter.add_((scale * noise).to(parameter.dtype))
    return module


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float, what: str) -> None:
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    error = float((actual - expected).abs().max()) if expected.numel() else 0.0
    if not error <= tolerance * max(1.0, scale):
        raise AssertionError(f"{what}: max abs error {error:.3e} exceeds {tolerance:g} x max(1, {scale:.3e})")


def check_core_equivalence(
    make_core: Callable[[], nn.Module],
    d_input: int,
    *,
    modes: Sequence[str] = ("scan", "assoc"),
    reference: str = "loop",
    dtypes: Iterable[torch.dtype] = (torch.float64, torch.float32),
    batches: Iterable[int] = (1, 3),
    lengths: Iterable[int] = (1, 2, 7, 65, 1000),
    seed: int = 0,
) -> None:
    """Check a core's modes against the reference and the carried-state contract.

    For every dtype, batch size and length: each of ``modes`` equals
    ``reference`` for the output and all states; running the sequence in two
    chunks with the carried state equals one run; ``(time, channels)`` and
    ``(channels,)`` inputs are promoted; a non-contiguous input gives the same
    result. Parameters are randomised first with :func:`randomize_parameters`.

    Args:
        make_core: Builds a fresh core; called once per dtype.
        d_input: The core's input channels.
        modes: Backend names compared with ``reference``.
        reference: Backend name of the reference.
        dtypes: Dtypes to check, with tolerances from :data:`TOLERANCES`.
        batches: Batch sizes.
        lengths: Sequence lengths.
        seed: Seed of parameters and inputs.
    """
    for dtype in dtypes:
        tolerance = TOLERANCES.get(dtype, 1e-4)
        torch.manual_seed(seed)
        core = randomize_parameters(make_core()).to(dtype)
        for batch in batches:
            for length in lengths:
                case = f"{type(core).__name__} dtype={dtype} batch={batch} length={length}"
                u = torch.randn(batch, length, d_input, dtype=dtype)
                with torch.no_grad():
                    y_ref, s_ref = core(u, mode=reference)
                    for mode in modes:
                        y, s = core(u, mode=mode)
                        _assert_close(y, y_ref, tolerance, f"{case}: output of mode {mode!r} vs {reference!r}")
                        _assert_close(s, s_ref, tolerance, f"{case}: states of mode {mode!r} vs {reference!r}")

                    if length >= 2:
                        split = length // 3 + 1
                        for mode in (reference, *modes):
                            y1, s1 = core(u[:, :split], mode=mode)
                            y2, s2 = core(u[:, split:], state=s1[:, -1], mode=mode)
                            _assert_close(
                                torch.cat([y1, y2], 1), y_ref, tolerance, f"{case}: two chunks in mode {mode!r}"
                            )
                            _assert_close(
                                torch.cat([s1, s2[:, 1:]], 1), s_ref, tolerance, f"{case}: chunked states ({mode!r})"
                            )

                    if batch == 1:
                        y2d, _ = core(u[0], mode=modes[0] if modes else reference)
                        _assert_close(y2d, y_ref, tolerance, f"{case}: (time, channels) input")
                        y1d, _ = core(u[0, 0], mode=modes[0] if modes else reference)
                        _assert_close(y1d, y_ref[:, :1], tolerance, f"{case}: (channels,) input")

                    strided = torch.randn(batch, d_input, length, dtype=dtype).transpose(1, 2)
                    y_strided, _ = core(strided, mode=modes[0] if modes else reference)
                    y_contiguous, _ = core(strided.contiguous(), mode=reference)
                    _assert_close(y_strided, y_contiguous, tolerance, f"{case}: non-contiguous input")


def check_lti_certificate(core: nn.Module, gamma: float, *, relative_tolerance: float = 1e-6) -> float:
    """Check that the H-infinity norm of an LTI core is at most ``gamma (1 + relative_tolerance)``.

    Args:
        core: A core with ``lti_matrices()``.
        gamma: The bound the core certifies.
        relative_tolerance: Allowed relative excess, for round-off.

    Returns:
        The measured ratio ``hinf / gamma``.
    """
    with torch.no_grad():
        a, b, c, d = core.lti_matrices()
    norm = hinf_norm(a, b, c, d)
    if not norm <= gamma * (1 + relative_tolerance):
        raise AssertionError(f"{type(core).__name__}: H-infinity norm {norm!r} exceeds the certified bound {gamma!r}")
    return norm / gamma


def check_layer_bound(
    layer: nn.Module,
    d_model: int,
    *,
    incremental: bool,
    samples: int = 256,
    seed: int = 0,
) -> float:
    """Check a static layer's declared bound against sampled and searched ratios.

    Samples random inputs at several scales and then runs a gradient search
    (:func:`~nssm_core.analysis.worst_case_gain` on sequences of length 1). For
    ``incremental=True`` it checks $\\|f(x_1) - f(x_2)\\| / \\|x_1 - x_2\\|$,
    otherwise $\\|f(x)\\| / \\|x\\|$.

    Returns:
        The largest ratio found divided by the declared bound (at most 1 when the check passes).
    """
    with torch.no_grad():
        bound = layer.bound()
    if bound is None:
        raise AssertionError(f"{type(layer).__name__} declares no bound")
    bound_value = float(bound)
    generator = torch.Generator().manual_seed(seed)
    dtype = next(layer.parameters()).dtype
    layer.eval()
    with torch.no_grad():
        scales = torch.logspace(-3, 3, samples, dtype=dtype).unsqueeze(-1)
        x = torch.randn(samples, d_model, generator=generator, dtype=dtype) * scales
        if incremental:
            x2 = x + torch.randn(samples, d_model, generator=generator, dtype=dtype) * scales * 0.1
            ratios = (layer(x) - layer(x2)).norm(dim=-1) / (x - x2).norm(dim=-1)
        else:
            ratios = layer(x).norm(dim=-1) / x.norm(dim=-1)
        sampled = float(ratios.max())
    searched = worst_case_gain(
        lambda u: layer(u), d_model, length=1, starts=16, steps=200, incremental=incremental, seed=seed, dtype=dtype
    )
    worst = max(sampled, searched)
    if not worst <= bound_value * (1 + 1e-6):
        raise AssertionError(f"{type(layer).__name__}: ratio {worst!r} exceeds the declared bound {bound_value!r}")
    return worst / bound_value
