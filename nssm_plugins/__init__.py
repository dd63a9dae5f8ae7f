"""Built-in nssm plugins: dynamic cores, static layers and scan backends.

They register through the ``nssm.plugins`` entry point (module
:mod:`nssm_plugins.hooks`) exactly like a third-party plugin; importing this
package registers nothing.
"""

from .backends import LoopBackend, ParallelScanBackend
from .cores import L2N, LRU, L2NOptions, LRUOptions
from .layers import GLU, LGLU, LMLP, MLP, TLIP, LGLUOptions, LMLPOptions, TLIPOptions

__all__ = [
    "GLU",
    "L2N",
    "L2NOptions",
    "LGLU",
    "LGLUOptions",
    "LMLP",
    "LMLPOptions",
    "LRU",
    "LRUOptions",
    "LoopBackend",
    "MLP",
    "ParallelScanBackend",
    "TLIP",
    "TLIPOptions",
]
