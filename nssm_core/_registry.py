"""The plugin registry: entries, loading through entry points, and lookups."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pluggy
from pydantic import BaseModel, ConfigDict

from . import hookspecs
from ._certificate import CertificateKind
from ._protocols import PluginKind, RecurrenceStructure

__all__ = [
    "ENTRY_POINT_GROUP",
    "NoOptions",
    "PluginEntry",
    "PluginError",
    "PluginFailure",
    "PluginLoadWarning",
    "Registry",
    "get_registry",
    "load_plugins",
    "reset_registry",
]

logger = logging.getLogger("nssm")

ENTRY_POINT_GROUP = "nssm.plugins"
"""Entry-point group under which distributions list their nssm plugin modules."""

DISABLE_ENV_VAR = "NSSM_DISABLE_PLUGINS"

_HOOK_KINDS = {
    "nssm_register_cores": PluginKind.CORE,
    "nssm_register_layers": PluginKind.LAYER,
    "nssm_register_backends": PluginKind.BACKEND,
}
_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")


class PluginError(ValueError):
    """A plugin entry is invalid, missing, duplicated or failed to load."""


class PluginLoadWarning(UserWarning):
    """A plugin failed to load; the other plugins still work."""


class NoOptions(BaseModel):
    """Options model of a plugin that takes no options."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class PluginEntry:
    """One registered core, layer or backend.

    Attributes:
        name: Registry name, unique within its kind (``"l2n"``, ``"LGLU"``, ``"scan"``).
        kind: Which plugin kind this entry is.
        factory: Callable that builds the object; see :mod:`nssm_core.hookspecs`
            for the call signature of each kind.
        options: Pydantic model of the entry's own options. Flat
            :class:`~nssm_core.SSMConfig` fields whose names match its fields
            are passed to it.
        certificate: The certificate kind the built object declares.
        structure: For cores, the recurrence structure the core needs.
        description: One line for listings.
        distribution: The distribution that registered the entry; filled in by the registry.
    """

    name: str
    kind: PluginKind
    factory: Callable[..., Any]
    options: type[BaseModel] = NoOptions
    certificate: CertificateKind = CertificateKind.NONE
    structure: RecurrenceStructure | None = None
    description: str = ""
    distribution: str = "unknown"

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", PluginKind(self.kind))
        object.__setattr__(self, "certificate", CertificateKind(self.certificate))
        if self.structure is not None:
            object.__setattr__(self, "structure", RecurrenceStructure(self.structure))

    def validate(self) -> None:
        """Check the entry's fields and raise :class:`PluginError` naming the problem."""
        where = f"{self.kind.value} {self.name!r} from distribution {self.distribution!r}"
        if not isinstance(self.name, str) or not _NAME_PATTERN.match(self.name):
            raise PluginError(
                f"invalid plugin name {self.name!r} in {where}: use letters, digits, '_', '-' or '.', "
                "starting with a letter"
            )
        if not callable(self.factory):
            raise PluginError(f"{where} has a factory that is not callable: {self.factory!r}")
        if not (isinstance(self.options, type) and issubclass(self.options, BaseModel)):
            raise PluginError(f"{where} has options {self.options!r}; expected a pydantic BaseModel subclass")
        if self.kind is PluginKind.CORE and self.structure is None:
            raise PluginError(f"{where} must declare its recurrence structure ('diagonal' or 'dense')")

    def describe(self) -> dict[str, Any]:
        """Return the entry as JSON-compatible data for listings."""
        options = {}
        for field_name, info in self.options.model_fields.items():
            default = None if info.is_required() else info.get_default(call_default_factory=True)
            options[field_name] = {
                "type": getattr(info.annotation, "__name__", str(info.annotation)),
                "default": default,
                "required": info.is_required(),
                "description": info.description or "",
            }
        return {
            "name": self.name,
            "kind": self.kind.value,
            "distribution": self.distribution,
            "certificate": self.certificate.value,
            "structure": None if self.structure is None else self.structure.value,
            "description": self.description,
            "options": options,
        }


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded.

    Attributes:
        plugin: The entry-point or plugin name.
        distribution: The distribution that declares it.
        reason: What went wrong, as text.
    """

    plugin: str
    distribution: str
    reason: str


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest of ``choices``, or an empty string."""
    choices = list(choices)
    matches = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if not matches:
        lowered = {choice.lower(): choice for choice in choices}
        if name.lower() in lowered:
            matches = [lowered[name.lower()]]
    return f" Did you mean {matches[0]!r}?" if matches else ""


class Registry:
    """Registered cores, layers and backends, one namespace per kind.

    A registry starts empty. :func:`load_plugins` fills one from the
    installed distributions; tests may build their own and call
    :meth:`register` directly.
    """

    def __init__(self) -> None:
        self._entries: dict[PluginKind, dict[str, PluginEntry]] = {kind: {} for kind in PluginKind}
        self._backends: dict[str, Any] = {}
        self.failures: list[PluginFailure] = []

    def register(self, entry: PluginEntry) -> None:
        """Add ``entry``.

        Raises:
            PluginError: If the entry is invalid or its name is taken in its kind.
        """
        entry.validate()
        existing = self._entries[entry.kind].get(entry.name)
        if existing is not None:
            raise PluginError(
                f"{entry.kind.value} name {entry.name!r} is registered twice: by distribution "
                f"{existing.distribution!r} and by distribution {entry.distribution!r}. "
                f"Uninstall one of them or disable one plugin with {DISABLE_ENV_VAR}."
            )
        self._entries[entry.kind][entry.name] = entry

    def names(self, kind: PluginKind | str) -> list[str]:
        """Return the registered names of ``kind``, sorted."""
        return sorted(self._entries[PluginKind(kind)])

    def entries(self, kind: PluginKind | str | None = None) -> list[PluginEntry]:
        """Return the registered entries of ``kind`` (all kinds when ``None``), sorted by kind and name."""
        kinds = list(PluginKind) if kind is None else [PluginKind(kind)]
        return [self._entries[k][name] for k in kinds for name in sorted(self._entries[k])]

    def __contains__(self, item: tuple[PluginKind | str, str]) -> bool:
        kind, name = item
        return name in self._entries[PluginKind(kind)]

    def get(self, kind: PluginKind | str, name: str) -> PluginEntry:
        """Look up one entry.

        Raises:
            PluginError: If no entry of ``kind`` is called ``name``. The
                message lists the registered names, a close match and any
                plugins that failed to load.
        """
        kind = PluginKind(kind)
        entry = self._entries[kind].get(name)
        if entry is not None:
            return entry
        valid = self.names(kind)
        message = (
            f"unknown {kind.value} {name!r}." + suggest(str(name), valid) + f" Registered {kind.value}s: "
            f"{', '.join(valid) if valid else '(none)'}."
        )
        if self.failures:
            failed = "; ".join(f"{f.plugin!r} from {f.distribution!r}: {f.reason}" for f in self.failures)
            message += f" These plugins failed to load and may provide it: {failed}."
        raise PluginError(message)

    def create(self, kind: PluginKind | str, name: str, *args: Any, options: dict[str, Any] | None = None) -> Any:
        """Validate ``options`` with the entry's options model and call its factory.

        Args:
            kind: Plugin kind.
            name: Registry name.
            *args: Positional arguments for the factory: a :class:`~nssm_core.CoreSpec`
                for cores, a :class:`~nssm_core.LayerSpec` for layers, nothing for backends.
            options: Raw options, validated by the entry's options model.
        """
        entry = self.get(kind, name)
        parsed = validate_options(entry, options or {})
        return entry.factory(*args, parsed)


    def backend(self, name: str) -> Any:
        """Return the shared instance of the scan backend ``name``, built with default options."""
        instance = self._backends.get(name)
        if instance is None:
            instance = self.create(PluginKind.BACKEND, name)
            self._backends[name] = instance
        return instance


def validate_options(entry: PluginEntry, options: dict[str, Any]) -> BaseModel:
    """Validate ``options`` with ``entry``'s options model, naming the plugin on failure."""
    from pydantic import ValidationError

    unknown = [key for key in options if key not in entry.options.model_fields]
    if unknown:
        valid = sorted(entry.options.model_fields)
        hints = "".join(suggest(key, valid) for key in unknown)
        raise PluginError(
            f"{entry.kind.value} {entry.name!r} got unknown options {unknown}.{hints} "
            f"Valid options: {', '.join(valid) if valid else '(none)'}."
        )
    try:
        return entry.options.model_validate(options)
    except ValidationError as error:
        details = "; ".join(
            (f"{'.'.join(str(p) for p in item['loc'])}={item.get('input')!r}: " if item["loc"] else "")
            + item["msg"].removeprefix("Value error, ")
            for item in error.errors()
        )
        raise PluginError(f"invalid options for {entry.kind.value} {entry.name!r}: {details}") from error


def _distribution_of(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    return dist.name if dist is not None else "unknown"


def _disabled_names() -> set[str]:
    return {name.strip() for name in os.environ.get(DISABLE_ENV_VAR, "").split(",") if name.strip()}


def _register_module(manager: pluggy.PluginManager, module: object, name: str) -> str | None:
    """Register ``module`` with ``manager``; return why it is unusable, or ``None``.

    pluggy rejects a hook implementation whose arguments the hook does not
    take, but silently accepts a marked function whose name matches no hook
    (a typo such as ``nssm_register_core``). Both are reported here, and so is
    a module with no marked hook at all, which would otherwise register nothing
    without a word.
    """
    if manager.is_registered(module):
        return f"its module {getattr(module, '__name__', module)!r} is already loaded by another nssm.plugins entry"
    try:
        manager.register(module, name=name)
    except Exception as error:  # pluggy raises PluginValidationError for hook signatures that do not fit
        return f"invalid hook implementation: {type(error).__name__}: {error}"
    callers = manager.get_hookcallers(module) or []
    unknown = sorted(caller.name for caller in callers if caller.spec is None)
    if unknown:
        manager.unregister(module, name=name)
        hints = "".join(suggest(hook, _HOOK_KINDS) for hook in unknown)
        return (
            f"it marks {', '.join(unknown)} with @hookimpl, which is not an nssm hook.{hints} "
            f"The hooks are {', '.join(_HOOK_KINDS)}."
        )
    if not callers:
        manager.unregister(module, name=name)
        return (
            f"it defines no nssm hook; decorate {' / '.join(_HOOK_KINDS)} with nssm_core.hookimpl "
            "in the module that the entry point names"
        )
    return None


def _collect_entries(manager: pluggy.PluginManager, module: object) -> tuple[list[PluginEntry], str | None]:
    """Call every hook that ``module`` implements; return its entries, or the reason it failed."""
    entries: list[PluginEntry] = []
    for hook_name, kind in _HOOK_KINDS.items():
        caller = getattr(manager.hook, hook_name)
        for implementation in caller.get_hookimpls():
            if implementation.plugin is not module:
                continue
            try:
                produced = implementation.function()
                entries.extend(_check_entries(produced, kind, hook_name))
            except Exception as error:  # isolate the failing plugin: the others still load
                return [], f"hook {hook_name} failed: {type(error).__name__}: {error}"
    return entries, None


def load_plugins(
    registry: Registry | None = None,
    *,
    disabled: Iterable[str] | None = None,
    plugins: Iterable[tuple[str, str, object]] | None = None,
) -> Registry:
    """Fill a registry from the ``nssm.plugins`` entry points of installed distributions.

    Each plugin loads as a whole or not at all. A plugin whose import fails,
    whose hook raises or returns something other than
    :class:`PluginEntry` objects, which marks a function that is not an nssm
    hook, or which returns an invalid entry is skipped with a
    :class:`PluginLoadWarning` naming its distribution and the reason, and is
    recorded in :attr:`Registry.failures`; every other plugin still loads, and
    :meth:`Registry.get` mentions the failures when a name is missing.

    Args:
        registry: Registry to fill; a new one when ``None``.
        disabled: Entry-point or distribution names to skip. Defaults to the
            comma-separated names in the ``NSSM_DISABLE_PLUGINS`` environment variable.
        plugins: ``(name, distribution, module_or_object)`` triples to register
            in place of the installed entry points, for tests.

    Returns:
        The filled registry.

    Raises:
        PluginError: If two plugins register the same name in one kind. The
            message names both distributions.
    """
    registry = Registry() if registry is None else registry
    disabled = _disabled_names() if disabled is None else set(disabled)

    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)

    candidates: list[tuple[str, str, Callable[[], object]]] = []
    if plugins is None:
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            candidates.append((entry_point.name, _distribution_of(entry_point), entry_point.load))
    else:
        for name, distribution, obj in plugins:
            candidates.append((name, distribution, lambda obj=obj: obj))

    registered_by: dict[tuple[PluginKind, str], str] = {}
    for index, (name, distribution, load) in enumerate(candidates):
        if name in disabled or distribution in disabled:
            logger.info("plugin %r from %r is disabled by %s", name, distribution, DISABLE_ENV_VAR)
            continue
        try:
            module = load()
        except Exception as error:  # a broken plugin must not take the others down
            _record_failure(registry, name, distribution, f"import failed: {type(error).__name__}: {error}")
            continue
        # Entry-point names need not be unique across distributions, so pluggy gets a unique one.
        pluggy_name = f"{distribution}:{name}:{index}"
        problem = _register_module(manager, module, pluggy_name)
        if problem is not None:
            _record_failure(registry, name, distribution, problem)
            continue

        entries, problem = _collect_entries(manager, module)
        entries = [dataclasses.replace(entry, distribution=distribution) for entry in entries]
        for entry in entries if problem is None else []:
            try:
                entry.validate()
            except PluginError as error:
                problem = f"invalid entry: {error}"
                break
        if problem is not None:
            manager.unregister(module, name=pluggy_name)
            _record_failure(registry, name, distribution, problem)
            continue

        for entry in entries:
            key = (entry.kind, entry.name)
            if key in registered_by:
                existing = registry.get(entry.kind, entry.name)
                raise PluginError(
                    f"{entry.kind.value} name {entry.name!r} is registered twice: by plugin {registered_by[key]!r} "
                    f"of distribution {existing.distribution!r} and by plugin {name!r} of distribution "
                    f"{distribution!r}. Uninstall one of them, or skip one by naming its plugin or "
                    f"distribution in {DISABLE_ENV_VAR}."
                )
            registry.register(entry)
            registered_by[key] = name
    return registry


def _check_entries(produced: object, kind: PluginKind, hook_name: str) -> list[PluginEntry]:
    if produced is None:
        return []
    if isinstance(produced, PluginEntry):
        produced = [produced]
    if not isinstance(produced, (list, tuple)):
        raise PluginError(f"{hook_name} must return a list of PluginEntry, got {type(produced).__name__}")
    entries = []
    for item in produced:
        if not isinstance(item, PluginEntry):
            raise PluginError(f"{hook_name} returned {item!r}, which is not a PluginEntry")
        if item.kind is not kind:
            raise PluginError(
                f"{hook_name} returned {item.name!r} of kind {item.kind.value!r}; it must return kind {kind.value!r}"
            )
        entries.append(item)
    return entries


def _record_failure(registry: Registry, plugin: str, distribution: str, reason: str) -> None:
    failure = PluginFailure(plugin=plugin, distribution=distribution, reason=reason)
    registry.failures.append(failure)
    warnings.warn(
        f"nssm plugin {plugin!r} from distribution {distribution!r} was skipped: {reason}",
        PluginLoadWarning,
        stacklevel=3,
    )


_default_registry: Registry | None = None


def get_registry() -> Registry:
    """Return the process-wide registry, loading the installed plugins on first use."""
    global _default_registry
    if _default_registry is None:
        _default_registry = load_plugins()
    return _default_registry


def reset_registry(registry: Registry | None = None) -> None:
    """Replace the process-wide registry (``None`` reloads it on next use)."""
    global _default_registry
    _default_registry = registry
