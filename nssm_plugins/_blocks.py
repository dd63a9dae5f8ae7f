"""Time blocks for long sequences, shared by the cores and the scan backends."""

from __future__ import annotations

__all__ = ["time_blocks"]


def time_blocks(shape: tuple[int, ...], elements: int) -> list[slice]:
    """Return consecutive slices of the time axis of a ``(batch, time, d)`` shape, each about ``elements`` values.

    Elementwise work run block by block keeps its temporaries small enough
    to stay in cache and to reuse freed memory, where one pass over a long
    sequence allocates fresh pages for every temporary. The last slice may
    be shorter; every slice has at least one step.
    """
    batch, steps, width = shape
    length = max(1, elements // max(1, batch * width))
    return [slice(start, min(start + length, steps)) for start in range(0, steps, length)]
