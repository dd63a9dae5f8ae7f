"""Built-in scan backends: ``loop`` (sequential reference), ``scan`` (log-depth parallel scan) and ``chunked``."""

from ._chunked import ChunkedScanBackend
from ._loop import LoopBackend
from ._scan import DefaultScanBackend, ParallelScanBackend

__all__ = ["ChunkedScanBackend", "DefaultScanBackend", "LoopBackend", "ParallelScanBackend"]
