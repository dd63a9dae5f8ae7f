"""Plugin loading: built-ins, lookups, failure isolation, duplicates and disabling.

Fake plugins are either modules built in the test and passed to
``load_plugins(plugins=...)``, or real distributions written to a temporary
folder on ``sys.path`` (a ``*.dist-info`` folder with ``METADATA`` and
``entry_points.txt``) that ``importlib.metadata`` finds like an installed one.
"""

from __future__ import annotations

import sys
import textwrap
import types
import warnings
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

import nssm_plugins.hooks as builtin_hooks
from nssm_core import (
    CertificateKind,
    DeepSSM,
    NoOptions,
    PluginEntry,
    PluginError,
    PluginKind,
    PluginLoadWarning,
    RecurrenceStructure,
    SSMConfig,
    get_registry,
    hookimpl,
    load_plugins,
    reset_registry,
)
from nssm_plugins.backends._entries import backend_entries
from nssm_plugins.cores._entries import core_entries
from nssm_plugins.cores._lru import LRUOptions, build_lru
from nssm_plugins.layers._entries import layer_entries
from nssm_plugins.layers._glu import build_glu

BUILTINS = ("builtins", "nssm", builtin_hooks)


@pytest.fixture(autouse=True)
def fresh_default_registry():
    """Make every test start and end with a default registry loaded from scratch."""
    reset_registry(None)
    yield
    reset_registry(None)


def make_plugin(name: str, **hooks) -> types.ModuleType:
    """Build a plugin module whose hooks return the given values (or raise, if a value is an exception)."""
    module = types.ModuleType(name)
    for hook_name, value in hooks.items():

        def implementation(value=value):
            if isinstance(value, BaseException):
                raise value
            return value

        implementation.__name__ = hook_name
        setattr(module, hook_name, hookimpl(implementation))
    return module


def core_entry(name: str, **changes) -> PluginEntry:
    fields = dict(
        name=name,
        kind=PluginKind.CORE,
        factory=build_lru,
        options=LRUOptions,
        structure=RecurrenceStructure.DIAGONAL,
        description="test core",
    )
    fields.update(changes)
    return PluginEntry(**fields)


def layer_entry(name: str) -> PluginEntry:
    return PluginEntry(name=name, kind=PluginKind.LAYER, factory=build_glu, options=NoOptions)


def load_quietly(plugins, **kwargs):
    """Load ``plugins`` and return ``(registry, warning messages)``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry = load_plugins(plugins=plugins, **kwargs)
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginLoadWarning)]
    return registry, messages


# Built-ins and lookups


def test_every_builtin_is_listed():
    registry = load_plugins()
    expected = core_entries() + layer_entries() + backend_entries()
    assert expected, "the built-in entry lists are empty"
    for entry in expected:
        assert (entry.kind, entry.name) in registry, f"built-in {entry.kind.value} {entry.name!r} is not registered"
        registered = registry.get(entry.kind, entry.name)
        assert registered.distribution == "nssm"
        assert registered.certificate is entry.certificate
    assert registry.failures == []


def test_builtins_load_through_entry_point():
    registry = load_plugins()
    assert registry.get(PluginKind.CORE, "l2n").distribution == "nssm"


def test_unknown_core_lists_valid_names():
    registry = load_plugins()
    with pytest.raises(PluginError) as raised:
        registry.get(PluginKind.CORE, "l2m")
    message = str(raised.value)
    assert "unknown core 'l2m'" in message
    assert "Did you mean 'l2n'?" in message
    for name in registry.names(PluginKind.CORE):
        assert name in message


def test_unknown_layer_in_config_lists_valid_names():
    with pytest.raises(ValidationError) as raised:
        SSMConfig(ff="lglu")
    message = str(raised.value)
    assert "unknown layer 'lglu'" in message
    assert "Did you mean 'LGLU'?" in message
    for name in get_registry().names(PluginKind.LAYER):
        assert name in message


def test_unknown_backend_mode_lists_valid_names():
    model = DeepSSM(1, 1, d_model=4, d_state=4, n_layers=1)
    with pytest.raises(PluginError, match="Registered backends: .*loop.*scan"):
        model(torch.randn(1, 5, 1), mode="sacn")


# Failure isolation with in-memory plugins


def test_raising_hook_skips_only_that_plugin():
    broken = make_plugin(
        "broken",
        nssm_register_cores=RuntimeError("weights file missing"),
        nssm_register_layers=[layer_entry("BrokenLayer")],
    )
    registry, messages = load_quietly([BUILTINS, ("broken", "broken-dist", broken)])

    assert len(messages) == 1
    assert "'broken-dist'" in messages[0]
    assert "nssm_register_cores failed: RuntimeError: weights file missing" in messages[0]
    assert "BrokenLayer" not in registry.names(PluginKind.LAYER), "a failed plugin must load nothing"
    assert "l2n" in registry.names(PluginKind.CORE)
    assert [f.distribution for f in registry.failures] == ["broken-dist"]


def test_missing_name_error_mentions_failed_plugin():
    broken = make_plugin("broken", nssm_register_cores=RuntimeError("boom"))
    registry, _ = load_quietly([BUILTINS, ("broken", "broken-dist", broken)])
    with pytest.raises(PluginError) as raised:
        registry.get(PluginKind.CORE, "fancy")
    message = str(raised.value)
    assert "failed to load" in message
    assert "'broken-dist'" in message
    assert "boom" in message


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ([core_entry("no-structure", structure=None)], "must declare its recurrence structure"),
        ([core_entry("9lives")], "invalid plugin name '9lives'"),
        ([core_entry("nofactory", factory=42)], "factory that is not callable"),
        ([core_entry("badoptions", options=dict)], "expected a pydantic BaseModel subclass"),
        ([layer_entry("WrongKind")], "must return kind 'core'"),
        ("lru", "must return a list of PluginEntry, got str"),
        ([core_entry("fine"), {"name": "x"}], "which is not a PluginEntry"),
    ],
)
def test_invalid_entry_is_reported(entries, reason):
    bad = make_plugin("bad", nssm_register_cores=entries)
    registry, messages = load_quietly([BUILTINS, ("bad", "bad-dist", bad)])
    assert len(messages) == 1, messages
    assert "'bad-dist'" in messages[0]
    assert reason in messages[0]
    assert "fine" not in registry.names(PluginKind.CORE), "a plugin with one invalid entry must load nothing"
    assert "lru" in registry.names(PluginKind.CORE)


def test_misspelled_hook_is_reported():
    typo = make_plugin("typo", nssm_register_core=[core_entry("typo-core")])
    registry, messages = load_quietly([BUILTINS, ("typo", "typo-dist", typo)])
    assert len(messages) == 1
    assert "'typo-dist'" in messages[0]
    assert "nssm_register_core with @hookimpl, which is not an nssm hook" in messages[0]
    assert "Did you mean 'nssm_register_cores'?" in messages[0]


def test_plugin_without_hooks_is_reported():
    registry, messages = load_quietly([BUILTINS, ("empty", "empty-dist", types.ModuleType("empty"))])
    assert len(messages) == 1
    assert "'empty-dist'" in messages[0]
    assert "defines no nssm hook" in messages[0]


def test_hook_with_wrong_arguments_is_reported():
    module = types.ModuleType("args")

    @hookimpl
    def nssm_register_cores(config):
        return []

    module.nssm_register_cores = nssm_register_cores
    registry, messages = load_quietly([BUILTINS, ("args", "args-dist", module)])
    assert len(messages) == 1
    assert "'args-dist'" in messages[0]
    assert "invalid hook implementation" in messages[0]
    assert "config" in messages[0]


def test_good_plugin_builds_model_by_name():
    good = make_plugin(
        "good",
        nssm_register_cores=[core_entry("extra_core", certificate=CertificateKind.NONE)],
        nssm_register_layers=[layer_entry("ExtraLayer")],
    )
    registry, messages = load_quietly([BUILTINS, ("good", "good-dist", good)])
    assert messages == []
    assert registry.get(PluginKind.CORE, "extra_core").distribution == "good-dist"

    reset_registry(registry)
    model = DeepSSM(2, 1, d_model=4, d_state=4, n_layers=2, param="extra_core", ff="ExtraLayer")
    y, states = model(torch.randn(3, 6, 2))
    assert y.shape == (3, 6, 1)
    assert len(states) == 2


def test_same_entry_name_in_two_distributions_loads_both():
    first = make_plugin("first", nssm_register_cores=[core_entry("first_core")])
    second = make_plugin("second", nssm_register_cores=[core_entry("second_core")])
    registry, messages = load_quietly([("extra", "first-dist", first), ("extra", "second-dist", second)])
    assert messages == []
    assert registry.get(PluginKind.CORE, "first_core").distribution == "first-dist"
    assert registry.get(PluginKind.CORE, "second_core").distribution == "second-dist"


def test_module_listed_twice_is_reported():
    plugin = make_plugin("twice", nssm_register_cores=[core_entry("once")])
    registry, messages = load_quietly([("one", "dist-a", plugin), ("two", "dist-b", plugin)])
    assert len(messages) == 1
    assert "'two' from distribution 'dist-b'" in messages[0]
    assert "already loaded by another nssm.plugins entry" in messages[0]
    assert registry.get(PluginKind.CORE, "once").distribution == "dist-a"


# Duplicates


def test_duplicate_name_names_both_distributions():
    first = make_plugin("first", nssm_register_cores=[core_entry("twin")])
    second = make_plugin("second", nssm_register_cores=[core_entry("twin")])
    with pytest.raises(PluginError) as raised:
        load_quietly([("first", "first-dist", first), ("second", "second-dist", second)])
    message = str(raised.value)
    assert "core name 'twin' is registered twice" in message
    assert "'first-dist'" in message
    assert "'second-dist'" in message
    assert "NSSM_DISABLE_PLUGINS" in message


def test_duplicate_of_builtin_names_nssm():
    clash = make_plugin("clash", nssm_register_layers=[layer_entry("LGLU")])
    with pytest.raises(PluginError, match="'LGLU' is registered twice.*'nssm'.*'clash-dist'"):
        load_quietly([BUILTINS, ("clash", "clash-dist", clash)])


def test_same_name_in_different_kinds_is_allowed():
    plugin = make_plugin("ok", nssm_register_layers=[layer_entry("lru")])
    registry, messages = load_quietly([BUILTINS, ("ok", "ok-dist", plugin)])
    assert messages == []
    assert registry.get(PluginKind.LAYER, "lru").distribution == "ok-dist"
    assert registry.get(PluginKind.CORE, "lru").distribution == "nssm"


# Disabling


def test_disable_env_var_skips_plugin(monkeypatch):
    clash = make_plugin("clash", nssm_register_layers=[layer_entry("LGLU")])
    monkeypatch.setenv("NSSM_DISABLE_PLUGINS", " other , clash")
    registry, messages = load_quietly([BUILTINS, ("clash", "clash-dist", clash)])
    assert messages == []
    assert registry.get(PluginKind.LAYER, "LGLU").distribution == "nssm"


def test_disable_by_distribution_name(monkeypatch):
    extra = make_plugin("extra", nssm_register_layers=[layer_entry("ExtraLayer")])
    monkeypatch.setenv("NSSM_DISABLE_PLUGINS", "extra-dist")
    registry, _ = load_quietly([BUILTINS, ("extra", "extra-dist", extra)])
    assert "ExtraLayer" not in registry.names(PluginKind.LAYER)


def test_disabled_argument_overrides_env(monkeypatch):
    monkeypatch.setenv("NSSM_DISABLE_PLUGINS", "builtins")
    registry, _ = load_quietly([BUILTINS], disabled=[])
    assert "l2n" in registry.names(PluginKind.CORE)


def test_disabling_builtins_through_entry_points(monkeypatch):
    monkeypatch.setenv("NSSM_DISABLE_PLUGINS", "builtins")
    registry = load_plugins()
    assert [entry.name for entry in registry.entries() if entry.distribution == "nssm"] == []
    with pytest.raises(PluginError, match="unknown core 'l2n'"):
        registry.get(PluginKind.CORE, "l2n")


# Fake distributions found by importlib.metadata


def install_fake_distribution(root: Path, dist_name: str, entry_points: dict[str, str], modules: dict[str, str]):
    """Write a distribution's metadata and modules under ``root``, as pip would into site-packages."""
    info = root / f"{dist_name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 1.0\n")
    lines = ["[nssm.plugins]"] + [f"{name} = {target}" for name, target in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module_name, source in modules.items():
        (root / f"{module_name}.py").write_text(textwrap.dedent(source))


GOOD_MODULE = """
    from nssm_core import PluginEntry, PluginKind, RecurrenceStructure, hookimpl
    from nssm_plugins.cores._lru import LRUOptions, build_lru

    @hookimpl
    def nssm_register_cores():
        return [PluginEntry(name="disk_core", kind=PluginKind.CORE, factory=build_lru, options=LRUOptions,
                            structure=RecurrenceStructure.DIAGONAL, description="from a fake distribution")]
"""


@pytest.fixture()
def site_dir(tmp_path, monkeypatch):
    """A temporary folder on ``sys.path`` that acts as a site-packages."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("nssm_fake_")]:
        del sys.modules[name]


def test_fake_distribution_registers_and_builds(site_dir):
    install_fake_distribution(
        site_dir, "nssm-fake-good", {"good": "nssm_fake_good"}, {"nssm_fake_good": GOOD_MODULE}
    )
    registry, messages = load_quietly(None)
    assert messages == []
    assert registry.get(PluginKind.CORE, "disk_core").distribution == "nssm-fake-good"
    assert "l2n" in registry.names(PluginKind.CORE)

    reset_registry(registry)
    y, _ = DeepSSM(1, 1, d_model=4, d_state=4, n_layers=1, param="disk_core")(torch.randn(2, 5, 1))
    assert y.shape == (2, 5, 1)


def test_fake_distribution_import_error_is_isolated(site_dir):
    install_fake_distribution(
        site_dir, "nssm-fake-good", {"good": "nssm_fake_good"}, {"nssm_fake_good": GOOD_MODULE}
    )
    install_fake_distribution(
        site_dir,
        "nssm-fake-broken",
        {"broken": "nssm_fake_broken", "gone": "nssm_fake_missing_module", "attr": "nssm_fake_good:not_there"},
        {"nssm_fake_broken": "import a_dependency_that_is_not_installed\n"},
    )
    registry, messages = load_quietly(None)

    assert len(messages) == 3, messages
    by_plugin = {failure.plugin: failure for failure in registry.failures}
    assert set(by_plugin) == {"broken", "gone", "attr"}
    for failure in by_plugin.values():
        assert failure.distribution == "nssm-fake-broken"
    assert "import failed: ModuleNotFoundError" in by_plugin["broken"].reason
    assert "a_dependency_that_is_not_installed" in by_plugin["broken"].reason
    assert "nssm_fake_missing_module" in by_plugin["gone"].reason
    assert "not_there" in by_plugin["attr"].reason
    assert all("nssm-fake-broken" in message for message in messages)

    assert registry.get(PluginKind.CORE, "disk_core").distribution == "nssm-fake-good"
    assert "l2n" in registry.names(PluginKind.CORE)
    with pytest.raises(PluginError, match="nssm-fake-broken"):
        registry.get(PluginKind.CORE, "broken_core")


def test_fake_distribution_duplicate_names_both(site_dir):
    for dist in ("nssm-fake-one", "nssm-fake-two"):
        module = dist.replace("-", "_")
        install_fake_distribution(site_dir, dist, {module: module}, {module: GOOD_MODULE})
    with pytest.raises(PluginError) as raised:
        load_quietly(None)
    assert "'nssm-fake-one'" in str(raised.value)
    assert "'nssm-fake-two'" in str(raised.value)


def test_fake_distribution_disabled_by_env(site_dir, monkeypatch):
    install_fake_distribution(
        site_dir, "nssm-fake-good", {"good": "nssm_fake_good"}, {"nssm_fake_good": GOOD_MODULE}
    )
    monkeypatch.setenv("NSSM_DISABLE_PLUGINS", "good")
    registry, _ = load_quietly(None)
    assert "disk_core" not in registry.names(PluginKind.CORE)
    assert "nssm_fake_good" not in sys.modules, "a disabled plugin must not be imported"


def test_default_registry_warns_once_and_keeps_working(site_dir):
    install_fake_distribution(
        site_dir, "nssm-fake-broken", {"broken": "nssm_fake_broken"}, {"nssm_fake_broken": "raise OSError('x')\n"}
    )
    with pytest.warns(PluginLoadWarning, match="'broken' from distribution 'nssm-fake-broken'.*OSError: x"):
        registry = get_registry()
    assert get_registry() is registry
    y, _ = DeepSSM(1, 1, d_model=4, d_state=4, n_layers=1, param="l2n", ff="LGLU", gamma=1.5)(torch.randn(1, 3, 1))
    assert torch.isfinite(y).all()


# The worked example package, loaded from its source folder


def test_example_plugin_builds_certified_model(monkeypatch):
    source = Path(__file__).resolve().parents[1] / "examples" / "nssm_example_plugin" / "src"
    monkeypatch.syspath_prepend(str(source))
    import nssm_example_plugin.plugin as example_hooks

    registry, messages = load_quietly([BUILTINS, ("example", "nssm-example-plugin", example_hooks)])
    assert messages == []
    assert registry.get(PluginKind.CORE, "realdiag").distribution == "nssm-example-plugin"
    assert registry.get(PluginKind.LAYER, "ScaledGroupSort").certificate is CertificateKind.INCREMENTAL

    reset_registry(registry)
    model = DeepSSM(1, 1, d_model=4, d_state=4, n_layers=2, param="realdiag", ff="ScaledGroupSort", gamma=1.2)
    y, _ = model(torch.randn(2, 9, 1))
    assert y.shape == (2, 9, 1)
    assert model.certificate().bound <= 1.2
