"""Registry entries of the built-in scan backends."""

from __future__ import annotations

from nssm_core import PluginEntry, PluginKind

from ._chunked import ChunkedOptions, ChunkedScanBackend
from ._loop import LoopBackend
from ._scan import DefaultScanBackend, ParallelScanBackend


def backend_entries() -> list[PluginEntry]:
    """Return the entries of the built-in scan backends."""
    return [
        PluginEntry(
            name="loop",
            kind=PluginKind.BACKEND,
            factory=lambda options: LoopBackend(),
            description="Sequential reference: one time step after the other.",
        ),
        PluginEntry(
            name="scan",
            kind=PluginKind.BACKEND,
            factory=lambda options: DefaultScanBackend(),
            description="Default: the fastest measured method per structure (chunked diagonal and dense scans).",
        ),
        PluginEntry(
            name="assoc",
            kind=PluginKind.BACKEND,
            factory=lambda options: ParallelScanBackend(),
            description="Log-depth associative scan of diagonal recurrences; supports double backward.",
        ),
        PluginEntry(
            name="chunked",
            kind=PluginKind.BACKEND,
            factory=lambda options: ChunkedScanBackend(options.chunk_size),
            options=ChunkedOptions,
            description="Diagonal recurrences in chunks: exact products inside a chunk, carried state between chunks.",
        ),
    ]
