"""Built-in scan backends: ``loop`` (sequential reference) and ``scan`` (log-depth parallel scan)."""

from ._loop import LoopBackend
from ._scan import ParallelScanBackend

__all__ = ["LoopBackend", "ParallelScanBackend"]
