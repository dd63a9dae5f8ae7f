"""Built-in dynamic cores, and the standalone models ``PureLRUR`` and ``SimpleRNN``."""

from ._l2n import L2N, L2NOptions
from ._l2nt import L2NT, L2NTOptions
from ._l2ru import L2RU, L2RUOptions
from ._lru import LRU, LRUOptions
from ._standalone import PureLRUR, SimpleRNN
from ._tv import TV, TVOptions
from ._zak import ZAK, ZAKOptions, lruz

__all__ = [
    "L2N",
    "L2NT",
    "L2RU",
    "LRU",
    "TV",
    "ZAK",
    "L2NOptions",
    "L2NTOptions",
    "L2RUOptions",
    "LRUOptions",
    "PureLRUR",
    "SimpleRNN",
    "TVOptions",
    "ZAKOptions",
    "lruz",
]
