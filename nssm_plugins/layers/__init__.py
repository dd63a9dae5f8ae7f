"""Built-in static layers."""

from ._glu import GLU, LGLU, LGLUOptions

__all__ = ["GLU", "LGLU", "LGLUOptions"]
