"""``nssm plugins``: the table, the JSON listing, kind filters and load failures."""

from __future__ import annotations

import json
import sys
import types
import warnings

import pytest

import nssm_plugins.hooks as builtin_hooks
from nssm_core import PluginEntry, PluginKind, get_registry, hookimpl, load_plugins, reset_registry
from nssm_core.cli import main
from nssm_plugins.cores._lru import LRUOptions, build_lru


@pytest.fixture(autouse=True)
def fresh_default_registry():
    reset_registry(None)
    yield
    reset_registry(None)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(["plugins", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def registry_with_failure():
    """Return a registry of the built-ins plus one plugin whose hook raised."""
    broken = types.ModuleType("broken")

    @hookimpl
    def nssm_register_cores():
        raise RuntimeError("missing CUDA kernel")

    broken.nssm_register_cores = nssm_register_cores
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_plugins(plugins=[("builtins", "nssm", builtin_hooks), ("broken", "broken-dist", broken)])


def test_table_lists_every_entry(capsys):
    status, out, _ = run_cli(capsys)
    assert status == 0
    entries = get_registry().entries()
    assert entries
    for entry in entries:
        row = next((line.split() for line in out.splitlines() if line.split()[:1] == [entry.name]), None)
        assert row is not None, f"{entry.kind.value} {entry.name!r} is missing from:\n{out}"
        assert entry.certificate.value in row
        assert entry.distribution in row
    for title in ("Dynamic cores", "Static layers", "Scan backends"):
        assert title in out


def test_table_shows_options_with_defaults(capsys):
    _, out, _ = run_cli(capsys, "--kind", "core")
    assert "rho=0.9" in out
    assert 'init="random"' in out
    assert "Static layers" not in out


def test_json_matches_describe(capsys):
    status, out, _ = run_cli(capsys, "--json")
    assert status == 0
    listing = json.loads(out)
    expected = json.loads(json.dumps([entry.describe() for entry in get_registry().entries()], default=str))
    assert listing["entries"] == expected
    assert listing["failures"] == []


def test_json_kind_filter(capsys):
    _, out, _ = run_cli(capsys, "--json", "--kind", "layer")
    kinds = {entry["kind"] for entry in json.loads(out)["entries"]}
    assert kinds == {"layer"}


def test_json_reports_certificate_and_structure(capsys):
    _, out, _ = run_cli(capsys, "--json", "--kind", "core")
    by_name = {entry["name"]: entry for entry in json.loads(out)["entries"]}
    assert by_name["l2n"]["certificate"] == "incremental"
    assert by_name["l2n"]["structure"] == "diagonal"
    assert by_name["l2n"]["distribution"] == "nssm"
    assert by_name["l2n"]["options"]["rho"]["default"] == 0.9
    assert by_name["lru"]["certificate"] == "none"


def test_failed_plugin_is_listed(capsys):
    reset_registry(registry_with_failure())
    status, out, _ = run_cli(capsys)
    assert status == 0
    assert "Plugins that failed to load (1)" in out
    assert "broken from distribution broken-dist" in out
    assert "missing CUDA kernel" in out


def test_failed_plugin_in_json(capsys):
    reset_registry(registry_with_failure())
    _, out, _ = run_cli(capsys, "--json")
    failures = json.loads(out)["failures"]
    assert len(failures) == 1
    assert failures[0]["distribution"] == "broken-dist"
    assert "missing CUDA kernel" in failures[0]["reason"]


def test_duplicate_plugin_exits_with_error(capsys, tmp_path, monkeypatch):
    info = tmp_path / "nssm_fake_clash-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nssm-fake-clash\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[nssm.plugins]\nclash = nssm_fake_clash\n")
    (tmp_path / "nssm_fake_clash.py").write_text(
        "from nssm_core import hookimpl\n"
        "from tests_cli_clash_entries import entries\n"
        "@hookimpl\n"
        "def nssm_register_cores():\n"
        "    return entries()\n"
    )
    helper = types.ModuleType("tests_cli_clash_entries")
    helper.entries = lambda: [
        PluginEntry(name="lru", kind=PluginKind.CORE, factory=build_lru, options=LRUOptions, structure="diagonal")
    ]
    monkeypatch.setitem(sys.modules, "tests_cli_clash_entries", helper)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        status, out, err = run_cli(capsys)
    finally:
        sys.modules.pop("nssm_fake_clash", None)
    assert status == 2
    assert out == ""
    assert "nssm plugins: error:" in err
    assert "'lru' is registered twice" in err
    assert "'nssm-fake-clash'" in err


def test_disabled_plugin_is_not_listed(capsys, monkeypatch):
    monkeypatch.setenv("NSSM_DISABLE_PLUGINS", "builtins")
    _, out, _ = run_cli(capsys, "--json")
    assert [entry for entry in json.loads(out)["entries"] if entry["distribution"] == "nssm"] == []


def test_unknown_kind_is_rejected(capsys):
    with pytest.raises(SystemExit) as raised:
        main(["plugins", "--kind", "cores"])
    assert raised.value.code == 2
    assert "invalid choice: 'cores'" in capsys.readouterr().err
