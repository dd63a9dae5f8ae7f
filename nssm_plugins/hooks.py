"""Registration of the built-in plugins.

This module is the ``builtins`` entry of the ``nssm.plugins`` entry-point
group in nssm's own ``pyproject.toml``, so the built-ins load through the
same path as a third-party plugin. Each subpackage lists its own entries.
"""

from __future__ import annotations

from nssm_core import PluginEntry, hookimpl

from .backends._entries import backend_entries
from .cores._entries import core_entries
from .layers._entries import layer_entries


@hookimpl
def nssm_register_cores() -> list[PluginEntry]:
    """Register the built-in dynamic cores."""
    return core_entries()


@hookimpl
def nssm_register_layers() -> list[PluginEntry]:
    """Register the built-in static layers."""
    return layer_entries()


@hookimpl
def nssm_register_backends() -> list[PluginEntry]:
    """Register the built-in scan backends."""
    return backend_entries()
