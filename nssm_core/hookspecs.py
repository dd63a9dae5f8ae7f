"""Hook specifications that plugins implement to add cores, layers and backends.

A plugin is a module listed under the ``nssm.plugins`` entry-point group of
its distribution::

    [project.entry-points."nssm.plugins"]
    my_plugin = "my_package.nssm_plugin"

The module defines any of the hooks below, each decorated with
:data:`hookimpl`, and returns :class:`~nssm_core.PluginEntry` objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from ._registry import PluginEntry

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec", "nssm_register_backends", "nssm_register_cores", "nssm_register_layers"]

PROJECT_NAME = "nssm"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Decorator that marks a plugin's function as an implementation of an nssm hook."""


@hookspec
def nssm_register_cores() -> list[PluginEntry]:
    """Return the dynamic cores this plugin provides.

    Returns:
        Entries of kind ``core``. Each factory is called as
        ``factory(spec: CoreSpec, options: OptionsModel)`` and returns a
        module that follows :class:`~nssm_core.DynamicCore`.
    """


@hookspec
def nssm_register_layers() -> list[PluginEntry]:
    """Return the static layers this plugin provides.

    Returns:
        Entries of kind ``layer``. Each factory is called as
        ``factory(spec: LayerSpec, options: OptionsModel)`` and returns a
        module that follows :class:`~nssm_core.StaticLayer`.
    """


@hookspec
def nssm_register_backends() -> list[PluginEntry]:
    """Return the scan backends this plugin provides.

    Returns:
        Entries of kind ``backend``. Each factory is called as
        ``factory(options: OptionsModel)`` and returns an object that follows
        :class:`~nssm_core.ScanBackend`.
    """
