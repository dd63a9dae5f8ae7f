"""Built-in nssm plugins: dynamic cores, static layers and scan backends.

They register through the ``nssm.plugins`` entry point (module
:mod:`nssm_plugins.hooks`) exactly like a third-party plugin; importing this
package registers nothing.
"""

from .backends import DefaultScanBackend, LoopBackend, ParallelScanBackend
from .cores import (
    L2N,
    L2NT,
    L2RU,
    LRU,
    TV,
    ZAK,
    L2NOptions,
    L2NTOptions,
    L2RUOptions,
    LRUOptions,
    PureLRUR,
    SimpleRNN,
    TVOptions,
    ZAKOptions,
    lruz,
)
from .layers import GLU, LGLU, LMLP, MLP, TLIP, LGLUOptions, LMLPOptions, TLIPOptions

__all__ = [
    "GLU",
    "L2N",
    "L2NOptions",
    "L2NT",
    "L2NTOptions",
    "L2RU",
    "L2RUOptions",
    "LGLU",
    "LGLUOptions",
    "LMLP",
    "LMLPOptions",
    "LRU",
    "LRUOptions",
    "LoopBackend",
    "MLP",
    "DefaultScanBackend",
    "ParallelScanBackend",
    "PureLRUR",
    "SimpleRNN",
    "TLIP",
    "TLIPOptions",
    "TV",
    "TVOptions",
    "ZAK",
    "ZAKOptions",
    "lruz",
]
