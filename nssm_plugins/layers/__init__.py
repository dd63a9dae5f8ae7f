"""Built-in static layers.

Every static layer class is importable from here, as from the older
``neural_ssm.layers`` module: ``GLU``, ``MLP``, ``LGLU``, ``LMLP`` and ``TLIP``.
"""

from ._glu import GLU as GLU
from ._glu import LGLU as LGLU
from ._glu import LGLUOptions as LGLUOptions
from ._lipschitz import LMLP as LMLP
from ._lipschitz import TLIP as TLIP
from ._lipschitz import LMLPOptions as LMLPOptions
from ._lipschitz import SandwichLayer as SandwichLayer
from ._lipschitz import TLIPOptions as TLIPOptions
from ._lipschitz import cayley as cayley
from ._lipschitz import centered_group_sort as centered_group_sort
from ._lipschitz import centered_sort_halves as centered_sort_halves
from ._lipschitz import group_sort as group_sort
from ._lipschitz import halves_order as halves_order
from ._mlp import MLP as MLP

__all__ = [
    "GLU",
    "LGLU",
    "LMLP",
    "MLP",
    "TLIP",
    "LGLUOptions",
    "LMLPOptions",
    "SandwichLayer",
    "TLIPOptions",
    "cayley",
    "centered_group_sort",
    "centered_sort_halves",
    "group_sort",
    "halves_order",
]
