"""Built-in dynamic cores."""

from ._l2n import L2N, L2NOptions
from ._lru import LRU, LRUOptions

__all__ = ["L2N", "L2NOptions", "LRU", "LRUOptions"]
