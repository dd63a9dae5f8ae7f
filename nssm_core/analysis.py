"""Numerical checks of certificates: exact H-infinity norms and worst-case input searches.

* :func:`hinf_norm` computes $\\|G\\|_\\infty = \\max_\\omega \\sigma_{max}(C (e^{i\\omega} I - A)^{-1} B + D)$
  of a discrete LTI system in float64, on a dense frequency grid that
  includes the eigenvalue angles of ``A`` and is refined around the peaks.
  A grid search can only find a value at or below the true norm, so it is a
  check of a certificate, never a certificate itself.
* :func:`worst_case_gain` searches input sequences by gradient ascent on
  $\\|y\\| / \\|u\\|$ (or on $\\|G(u_1) - G(u_2)\\| / \\|u_1 - u_2\\|$ for the
  incremental kind). The ratio it returns is a lower bound of the true gain.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["frequency_response_norms", "hinf_norm", "worst_case_gain"]


def _as_matrices(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    tensors = [torch.as_tensor(m) for m in (a, b, c, d)]
    wide = torch.complex128 if any(m.is_complex() for m in tensors) else torch.float64
    a, b, c, d = (m.detach().to(wide).cpu() for m in tensors)
    n = a.shape[0]
    if a.shape != (n, n) or b.shape[0] != n or c.shape[1] != n or d.shape != (c.shape[0], b.shape[1]):
        raise ValueError(
            f"inconsistent system shapes A {tuple(a.shape)}, B {tuple(b.shape)}, C {tuple(c.shape)}, "
            f"D {tuple(d.shape)}; expected (n, n), (n, m), (p, n), (p, m)"
        )
    return a, b, c, d


def frequency_response_norms(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, frequencies: torch.Tensor
) -> torch.Tensor:
    """Return $\\sigma_{max}(G(e^{i\\omega}))$ at each of ``frequencies`` (radians per sample), in float64."""
    a, b, c, d = _as_matrices(a, b, c, d)
    n = a.shape[0]
    identity = torch.eye(n, dtype=torch.complex128)
    results = []
    for chunk in torch.as_tensor(frequencies, dtype=torch.float64).split(512):
        z = torch.exp(1j * chunk.to(torch.complex128)).reshape(-1, 1, 1)
        # B is expanded to a batch of matrices: linalg.solve would read a (k, n) right-hand side
        # as k vectors whenever B happens to be square with n == k.
        rhs = b.to(torch.complex128).expand(z.shape[0], *b.shape)
        resolvent_b = torch.linalg.solve(z * identity - a.to(torch.complex128), rhs)
        response = c.to(torch.complex128) @ resolvent_b + d.to(torch.complex128)
        results.append(torch.linalg.matrix_norm(response, ord=2))
    return torch.cat(results)


def hinf_norm(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    d: torch.Tensor,
    *,
    grid_size: int = 2048,
    refinements: int = 8,
    peaks: int = 8,
) -> float:
    """Compute the H-infinity norm of the discrete system $x_{t+1} = A x_t + B u_t$, $y_t = C x_t + D u_t$.

    Args:
        a: ``(n, n)`` state matrix.
        b: ``(n, m)`` input matrix.
        c: ``(p, n)`` output matrix.
        d: ``(p, m)`` feedthrough.
        grid_size: Points of the uniform frequency grid.
        refinements: Zoom steps around each peak, each shrinking the search interval 16-fold.
        peaks: How many of the highest grid points are refined.

    Returns:
        The norm in float64 precision, ``inf`` if ``A`` has an eigenvalue on
        or outside the unit circle, or ``nan`` if a matrix has NaN or inf entries.
    """
    a, b, c, d = _as_matrices(a, b, c, d)
    if not all(bool(torch.isfinite(matrix).all()) for matrix in (a, b, c, d)):
        return math.nan
    if a.shape[0] == 0:
        return float(torch.linalg.matrix_norm(d.to(torch.complex128), ord=2))
    eigenvalues = torch.linalg.eigvals(a)
    if bool((eigenvalues.abs() >= 1.0).any()):
        return math.inf

    # Real systems have a symmetric response, so [0, pi] suffices; complex ones need the whole circle.
    low = 0.0 if not a.is_complex() else -math.pi
    grid = torch.linspace(low, math.pi, grid_size, dtype=torch.float64)
    angles = torch.angle(eigenvalues)
    if not a.is_complex():
        angles = angles.abs()
    frequencies = torch.cat([grid, angles.to(torch.float64)])
    values = frequency_response_norms(a, b, c, d, frequencies)
    best = float(values.max())

    spacing = (math.pi - low) / (grid_size - 1)
    for index in torch.topk(values, min(peaks, values.numel())).indices.tolist():
        centre, half_width = float(frequencies[index]), spacing
        for _ in range(refinements):
            local = torch.linspace(centre - half_width, centre + half_width, 33, dtype=torch.float64)
            local_values = frequency_response_norms(a, b, c, d, local)
            position = int(local_values.argmax())
            best = max(best, float(local_values[position]))
            centre, half_width = float(local[position]), half_width / 16
    return best


def _call(model: Callable[[torch.Tensor], object], u: torch.Tensor) -> torch.Tensor:
    from ._model import DeepSSM

    if isinstance(model, DeepSSM) and model.initial_states is not None:
        # Gain certificates hold from the zero state; learned initial states add a separate transient.
        out = model(u, state=model.zero_states(u.shape[0], dtype=u.dtype, device=u.device))
    else:
        out = model(u)
    return out[0] if isinstance(out, tuple) else out  # DeepSSM and cores return (y, states)


_AMPLITUDES = (0.01, 0.1, 1.0, 10.0, 100.0)
"""RMS amplitudes at which every start pattern is screened; nonlinear gains depend on amplitude."""

_LOG_AMPLITUDE_RANGE = (-12.0, 12.0)
"""Clamp of the searched log RMS amplitude, so float32 inputs neither underflow nor overflow."""

_MAX_BASE_TO_DIFFERENCE = 1e3
"""Largest RMS ratio of base to difference in the incremental search.

$G(u + \\delta) - G(u)$ loses about ``eps * |u| / |delta|`` of relative accuracy
to cancellation, so an unlimited ratio would report round-off as gain.
"""


def _unit_rms(patterns: torch.Tensor) -> torch.Tensor:
    rms = patterns.flatten(1).norm(dim=1) / math.sqrt(patterns[0].numel())
    return patterns / rms.clamp_min(1e-30).reshape(-1, 1, 1)


def start_patterns(length: int, d_input: int, count: int, *, generator: torch.Generator) -> torch.Tensor:
    """Return ``count`` structured start inputs ``(count, length, d_input)`` in float64, each of RMS 1.

    The bank cycles through input shapes that excite different parts of a
    system: a constant step, a step that stops halfway (so the free response
    counts), an impulse, sinusoids on a geometric frequency grid from
    $\\pi / \\text{length}$ to $\\pi$ (the alternating sign), random signs,
    white Gaussian noise and a random walk (low-frequency noise). Each
    pattern gets random channel directions or phases.

    Args:
        length: Time steps.
        d_input: Channels.
        count: Number of patterns.
        generator: Source of the random directions, phases and noise.
    """
    time = torch.arange(length, dtype=torch.float64).reshape(-1, 1)
    frequencies = torch.logspace(math.log10(math.pi / max(length, 2)), math.log10(math.pi), 8, dtype=torch.float64)
    makers: list[Callable[[torch.Tensor], torch.Tensor]] = [
        lambda v: v.expand(length, d_input),
        lambda v: v * (time < max(length // 2, 1)),
        lambda v: v * (time == 0),
    ]
    for frequency in frequencies.tolist():
        makers.append(
            lambda v, w=frequency: torch.cos(
                w * time + 2 * math.pi * torch.rand(1, d_input, generator=generator, dtype=torch.float64)
            )
            * v.abs()
        )
    makers += [
        lambda v: torch.randint(0, 2, (length, d_input), generator=generator).to(torch.float64) * 2 - 1,
        lambda v: torch.randn(length, d_input, generator=generator, dtype=torch.float64),
        lambda v: torch.randn(length, d_input, generator=generator, dtype=torch.float64).cumsum(0),
    ]
    patterns = []
    for index in range(count):
        direction = torch.randn(1, d_input, generator=generator, dtype=torch.float64)
        patterns.append(makers[index % len(makers)](direction))
    return _unit_rms(torch.stack(patterns))


def _ratios(
    model: Callable[[torch.Tensor], object], inputs: list[torch.Tensor], incremental: bool
) -> torch.Tensor:
    """Return the ratio of each batch element in float64: $\\|G(u)\\| / \\|u\\|$ or the incremental one."""
    if incremental:
        base, delta = inputs
        numerator = _call(model, base + delta) - _call(model, base)
        denominator = delta
    else:
        numerator = _call(model, inputs[0])
        denominator = inputs[0]
    top = numerator.flatten(1).double().norm(dim=1)
    return top / denominator.flatten(1).double().norm(dim=1).clamp_min(1e-300)


@torch.no_grad()
def _screen_starts(
    model: Callable[[torch.Tensor], object],
    patterns: torch.Tensor,
    incremental: bool,
    dtype: torch.dtype,
    generator: torch.Generator,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Rank pattern and amplitude pairs by their ratio, best first.

    Returns a list of ``(directions, log_amplitudes)`` candidates, one per
    pattern at its best amplitude. For the incremental kind each direction
    stacks a base and a difference pattern, ``(2, length, d_input)``.
    """
    count = patterns.shape[0]
    amplitudes = torch.tensor(_AMPLITUDES, dtype=torch.float64)
    if incremental:
        partner = torch.randperm(count, generator=generator)
        # The difference is a smaller copy of another pattern; base amplitude 0 gives the plain ratio.
        base_scales = torch.tensor((0.0, *_AMPLITUDES), dtype=torch.float64)
        directions = torch.stack([patterns[partner], patterns], dim=1)  # (count, 2, T, d)
        best_ratio = torch.full((count,), -1.0, dtype=torch.float64)
        best_logs = torch.zeros(count, 2, dtype=torch.float64)
        for base_scale in base_scales.tolist():
            for amplitude in amplitudes.tolist():
                if base_scale > _MAX_BASE_TO_DIFFERENCE * amplitude:
                    continue
                base = (base_scale * directions[:, 0]).to(dtype)
                delta = (amplitude * directions[:, 1]).to(dtype)
                ratios = _ratios(model, [base, delta], True)
                ratios = torch.where(torch.isfinite(ratios), ratios, torch.full_like(ratios, math.inf))
                better = ratios > best_ratio
                best_ratio = torch.where(better, ratios, best_ratio)
                logs = torch.tensor([math.log(max(base_scale, 1e-5)), math.log(amplitude)], dtype=torch.float64)
                best_logs[better] = logs
    else:
        directions = patterns
        best_ratio = torch.full((count,), -1.0, dtype=torch.float64)
        best_logs = torch.zeros(count, dtype=torch.float64)
        for amplitude in amplitudes.tolist():
            ratios = _ratios(model, [(amplitude * patterns).to(dtype)], False)
            ratios = torch.where(torch.isfinite(ratios), ratios, torch.full_like(ratios, math.inf))
            better = ratios > best_ratio
            best_ratio = torch.where(better, ratios, best_ratio)
            best_logs[better] = math.log(amplitude)
    order = torch.argsort(best_ratio, descending=True).tolist()
    return [(directions[index], best_logs[index]) for index in order]


def worst_case_gain(
    model: Callable[[torch.Tensor], object],
    d_input: int,
    length: int = 64,
    *,
    starts: int = 4,
    steps: int = 150,
    lr: float = 0.05,
    incremental: bool = False,
    initial: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
    restarts: int = 0,
    screen: int | None = None,
) -> float:
    """Search for the input that maximises a model's gain; return the largest ratio found.

    The search has three stages:

    1. Screening: a bank of structured inputs (:func:`start_patterns`) is
       evaluated at RMS amplitudes from 0.01 to 100. The ``starts`` patterns
       with the largest ratios are kept, each at its best amplitude.
    2. Ascent: Adam maximises the ratio of each start (one per batch
       element). An input is written as $u = e^{s} v$ with a free direction
       $v$ and a log amplitude $s$, so the amplitude moves by multiplicative
       steps, and the learning rate decays geometrically to a tenth over
       the run.
    3. Restarts: each of ``restarts`` further rounds starts half of the
       searches from the best inputs found so far, perturbed, and the other
       half from the next screened patterns.

    Every reported ratio is that of an input the model was actually run
    on, so the result is a lower bound of the true gain (up to the
    round-off of the model's dtype). The model is put in eval mode for the
    search and restored afterwards.

    Args:
        model: A :class:`~nssm_core.DeepSSM`, a core, or any callable mapping
            ``(batch, time, d_input)`` to an output (or an ``(output, states)`` tuple).
            A ``DeepSSM`` with learned initial states is run from zero states,
            where its gain certificate applies.
        d_input: Input channels.
        length: Length of the searched sequences.
        starts: Number of searches run side by side.
        steps: Optimizer steps per round.
        lr: Adam learning rate on the direction (entries of RMS 1) and the log amplitude.
        incremental: Ascend $\\|G(u_1) - G(u_2)\\| / \\|u_1 - u_2\\|$ instead of $\\|y\\| / \\|u\\|$.
        initial: Starting inputs ``(n, time, d_input)``, for example real data
            windows. They replace the screened starts (``starts`` becomes ``n``
            and ``length`` becomes ``time``); restarts still draw screened patterns.
        dtype: Dtype of the searched inputs; the model's parameter dtype by default.
        seed: Seed of the patterns and perturbations.
        restarts: Extra rounds after the first.
        screen: Number of patterns screened; by default ``max(32, 4 * starts)``.

    Returns:
        The largest ratio found, a lower bound of the true gain. ``nan`` if the
        model returned NaN for a finite input, ``inf`` if it returned inf.

    Raises:
        ValueError: If a count or length is out of range or ``initial`` has the wrong shape.
    """
    if starts <= 0 or steps < 0 or length <= 0 or restarts < 0:
        raise ValueError(
            f"starts and length must be positive, steps and restarts non-negative; got starts={starts}, "
            f"length={length}, steps={steps}, restarts={restarts}"
        )
    if initial is not None:
        initial = torch.as_tensor(initial)
        if initial.ndim != 3 or initial.shape[-1] != d_input or initial.shape[0] == 0 or initial.shape[1] == 0:
            raise ValueError(
                f"initial must have shape (n, time, {d_input}) with n, time > 0, got {tuple(initial.shape)}"
            )
        starts, length = initial.shape[0], initial.shape[1]
    if dtype is None:
        parameters = list(model.parameters()) if isinstance(model, nn.Module) else []
        dtype = parameters[0].dtype if parameters and parameters[0].is_floating_point() else torch.float32
    generator = torch.Generator().manual_seed(seed)

    was_training = model.training if isinstance(model, nn.Module) else False
    if isinstance(model, nn.Module):
        model.eval()
    try:
        return _search(
            model, d_input, length, starts, steps, lr, incremental, initial, dtype, generator, restarts, screen
        )
    finally:
        if isinstance(model, nn.Module):
            model.train(was_training)


def _search(
    model: Callable[[torch.Tensor], object],
    d_input: int,
    length: int,
    starts: int,
    steps: int,
    lr: float,
    incremental: bool,
    initial: torch.Tensor | None,
    dtype: torch.dtype,
    generator: torch.Generator,
    restarts: int,
    screen: int | None,
) -> float:
    # 1. Screen the structured patterns; with data windows, those come first.
    pool_size = max(32, 4 * starts) if screen is None else max(screen, 1)
    pool = _screen_starts(
        model, start_patterns(length, d_input, pool_size, generator=generator), incremental, dtype, generator
    )
    if initial is not None:
        windows = initial.detach().to(torch.float64)
        rms = windows.flatten(1).norm(dim=1) / math.sqrt(windows[0].numel())
        log_rms = torch.log(rms.clamp_min(1e-30))
        first: list[tuple[torch.Tensor, torch.Tensor]] = []
        for window, log_amplitude in zip(_unit_rms(windows), log_rms):
            if incremental:
                difference = torch.randn(window.shape, generator=generator, dtype=torch.float64)
                first.append((torch.stack([window, difference]), torch.stack([log_amplitude, log_amplitude - 2.3])))
            else:
                first.append((window, log_amplitude))
        pool = first + pool

    best = 0.0
    best_per_start = torch.full((starts,), -1.0, dtype=torch.float64)
    best_directions: torch.Tensor | None = None
    best_logs: torch.Tensor | None = None
    next_candidate = 0
    for round_index in range(restarts + 1):
        # 2. Choose this round's starts: after the first round, half are perturbed best inputs.
        chosen = []
        if round_index > 0 and best_directions is not None:
            ranking = torch.argsort(best_per_start, descending=True).tolist()
            for source in ranking[: (starts + 1) // 2]:
                noise = torch.randn(best_directions[source].shape, generator=generator, dtype=torch.float64)
                perturbed = _unit_rms((best_directions[source] + 0.3 * noise).reshape(-1, length, d_input))
                chosen.append((perturbed.reshape(best_directions[source].shape), best_logs[source].clone()))
        while len(chosen) < starts:
            chosen.append(pool[next_candidate % len(pool)])
            next_candidate += 1
        directions = torch.stack([c[0] for c in chosen]).to(dtype).requires_grad_(True)
        logs = torch.stack([torch.as_tensor(c[1]) for c in chosen]).to(dtype).requires_grad_(True)

        # 3. Ascend the ratio, recording every evaluated input's ratio.
        optimizer = torch.optim.Adam([directions, logs], lr=lr)
        decay = 0.1 ** (1.0 / max(steps, 1))
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=decay)
        for _ in range(steps + 1):
            optimizer.zero_grad()
            inputs = _inputs_of(directions, logs, incremental)
            ratios = _ratios(model, inputs, incremental)
            if not bool(torch.isfinite(ratios).all()):
                return math.nan if bool(torch.isnan(ratios).any()) else math.inf
            detached = ratios.detach()
            best = max(best, float(detached.max()))
            improved = detached > best_per_start
            if bool(improved.any()):
                if best_directions is None:
                    best_directions = directions.detach().double().clone()
                    best_logs = logs.detach().double().clone()
                best_per_start = torch.where(improved, detached, best_per_start)
                best_directions[improved] = directions.detach().double()[improved]
                best_logs[improved] = logs.detach().double()[improved]
            if steps == 0:
                break
            (-ratios.sum()).backward()
            for variable in (directions, logs):
                torch.nan_to_num_(variable.grad, nan=0.0, posinf=0.0, neginf=0.0)
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                logs.clamp_(*_LOG_AMPLITUDE_RANGE)
                if incremental:
                    logs[:, 0] = torch.minimum(logs[:, 0], logs[:, 1] + math.log(_MAX_BASE_TO_DIFFERENCE))
                directions.copy_(_unit_rms(directions.flatten(0, -3)).reshape(directions.shape))
    return best


def _inputs_of(directions: torch.Tensor, logs: torch.Tensor, incremental: bool) -> list[torch.Tensor]:
    """Return the inputs $e^{s} v$ of the searches (base and difference for the incremental kind)."""
    amplitudes = torch.exp(logs)
    if incremental:
        return [amplitudes[:, 0, None, None] * directions[:, 0], amplitudes[:, 1, None, None] * directions[:, 1]]
    return [amplitudes[:, None, None] * directions]
