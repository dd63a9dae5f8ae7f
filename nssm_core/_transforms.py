"""Parameter transforms computed once per model call.

A core or layer derives the matrices it applies from its parameters at every
call (normalised weights, decays, scaled input matrices). When
:class:`~nssm_core.DeepSSM` runs a long sequence in time blocks, every block
calls every core and layer again, so these transforms, some with an SVD,
would be recomputed once per block. Inside :func:`reuse_parameter_transforms`
the first call of :func:`parameter_transform` for a key computes the value
and later calls with the same key return it. With autograd on, the reused
tensor is one node of the graph, so its gradient sums the contributions of
all blocks and the transform is differentiated once.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import torch

__all__ = ["parameter_transform", "reuse_parameter_transforms"]

T = TypeVar("T")

_CACHE: ContextVar[dict[tuple[int, bool, Hashable], Any] | None] = ContextVar("nssm_parameter_transforms", default=None)


@contextmanager
def reuse_parameter_transforms() -> Iterator[None]:
    """Compute each keyed :func:`parameter_transform` once inside the ``with`` statement.

    The parameters must not change inside the ``with`` statement: use it
    around one model call, never around an optimizer step. Nested uses share
    the outer cache.

    Example:
        >>> import torch
        >>> from nssm_core import parameter_transform, reuse_parameter_transforms
        >>> layer = torch.nn.Linear(2, 2)
        >>> calls = []
        >>> def scaled():
        ...     calls.append(1)
        ...     return 2 * layer.weight
        >>> with reuse_parameter_transforms():
        ...     first = parameter_transform(layer, "scaled", scaled)
        ...     second = parameter_transform(layer, "scaled", scaled)
        >>> first is second, len(calls)
        (True, 1)
    """
    # Under torch.compile the cache stays off: the context variable would break the traced graph.
    if torch.compiler.is_compiling() or _CACHE.get() is not None:
        yield
        return
    token = _CACHE.set({})
    try:
        yield
    finally:
        _CACHE.reset(token)


def parameter_transform(owner: object, key: Hashable, compute: Callable[[], T]) -> T:
    """Return ``compute()``, reused for the same ``owner`` and ``key`` inside :func:`reuse_parameter_transforms`.

    Outside that ``with`` statement, and while ``torch.compile`` traces, this
    is just ``compute()``. Whether autograd is on is part of the key, so a
    value computed under ``torch.no_grad()`` is never returned to a call with
    autograd on, nor the reverse.

    Args:
        owner: The module whose parameters the value depends on.
        key: Anything hashable that, together with ``owner``, names the value;
            include every input that changes it, such as the dtype.
        compute: Computes the value from ``owner``'s parameters alone.
    """
    if torch.compiler.is_compiling():
        return compute()
    cache = _CACHE.get()
    if cache is None:
        return compute()
    cache_key = (id(owner), torch.is_grad_enabled(), key)
    if cache_key not in cache:
        cache[cache_key] = compute()
    return cache[cache_key]
