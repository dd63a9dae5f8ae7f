"""The documentation site: it builds in strict mode, documents every public name and built-in, and its examples run.

The build needs the ``docs`` extra (mkdocs-material, mkdocstrings[python]);
without it the build tests are skipped, and the code examples still run.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import nssm_core
from nssm_core import CoreSpec, LayerSpec, PluginKind, load_plugins

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BUILTIN_DISTRIBUTION = "nssm"

needs_mkdocs = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
    reason="mkdocs and mkdocstrings are not installed; install the docs extra: pip install -e '.[docs]'",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Build the site once for this module, in strict mode, and return its folder."""
    output = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return output


def page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text(encoding="utf-8")


def anchors(html: str) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', html))


def builtin_entries():
    return [entry for entry in load_plugins().entries() if entry.distribution == BUILTIN_DISTRIBUTION]


def built_class(entry) -> type:
    """Return the class an entry's factory builds, from its return annotation or by building a small one."""
    hints = typing.get_type_hints(entry.factory) if not entry.factory.__name__ == "<lambda>" else {}
    if isinstance(hints.get("return"), type):
        return hints["return"]
    options = entry.options()
    if entry.kind is PluginKind.CORE:
        return type(entry.factory(CoreSpec(d_input=4, d_output=4, d_state=4), options))
    if entry.kind is PluginKind.LAYER:
        return type(entry.factory(LayerSpec(d_model=4, d_hidden=4), options))
    return type(entry.factory(options))


@needs_mkdocs
def test_api_documents_model_and_config(site):
    ids = anchors(page(site, "api/nssm_core"))
    assert "nssm_core.DeepSSM" in ids
    assert "nssm_core.SSMConfig" in ids
    assert "nssm_core.DeepSSM.forward" in ids
    assert "nssm_core.DeepSSM.certificate" in ids


@needs_mkdocs
def test_api_documents_every_public_name(site):
    ids = anchors(page(site, "api/nssm_core"))
    submodules = [
        importlib.import_module(f"nssm_core.{info.name}")
        for info in pkgutil.iter_modules(nssm_core.__path__)
        if not info.name.startswith("_") and info.name != "cli"
    ]
    assert {"testing", "analysis", "checkpoint"} <= {module.__name__.rsplit(".", 1)[-1] for module in submodules}
    for module in [nssm_core, *submodules]:
        for name in module.__all__:
            if name.startswith("__"):
                continue
            assert f"{module.__name__}.{name}" in ids, f"{module.__name__}.{name} has no API entry"


@needs_mkdocs
def test_api_documents_every_builtin_plugin_class(site):
    ids = anchors(page(site, "api/nssm_plugins"))
    entries = builtin_entries()
    assert entries
    for entry in entries:
        cls = built_class(entry)
        pattern = re.compile(rf"nssm_plugins(\.\w+)*\.{re.escape(cls.__name__)}")
        assert any(pattern.fullmatch(anchor) for anchor in ids), (
            f"{entry.kind.value} {entry.name!r}: class {cls.__name__} has no API entry; "
            f"export it in __all__ of its nssm_plugins subpackage"
        )


@needs_mkdocs
@pytest.mark.parametrize("kind", ["core", "layer", "backend"])
def test_catalogue_lists_every_builtin(site, kind):
    html = page(site, f"{kind}s")
    for entry in builtin_entries():
        if entry.kind.value != kind:
            continue
        assert f"<code>{entry.name}</code>" in html, f"{kind} {entry.name!r} is missing from the {kind}s page"
        for option in entry.options.model_fields:
            assert f"<code>{option}</code>" in html, f"option {option!r} of {entry.name!r} is not documented"


@needs_mkdocs
def test_cli_reference_shows_every_command(site):
    html = page(site, "cli")
    from nssm_core.cli import build_parser

    subcommands = next(
        action.choices for action in build_parser()._actions if hasattr(action, "choices") and action.choices
    )
    for name in subcommands:
        assert f"nssm {name}" in html
    assert "--json" in html


@needs_mkdocs
def test_maths_is_marked_for_rendering(site):
    html = page(site, "concepts")
    assert 'class="arithmatex"' in html
    assert (site / "javascripts" / "mathjax.js").is_file()


def python_blocks(markdown_file: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown_file.read_text(encoding="utf-8"), re.DOTALL)


@pytest.mark.parametrize("name", ["quickstart.md", "concepts.md"])
def test_page_examples_run(name):
    blocks = python_blocks(DOCS / name)
    assert blocks, f"{name} has no python examples"
    namespace: dict[str, object] = {}
    for index, block in enumerate(blocks):
        exec(compile(block, f"{name} block {index}", "exec"), namespace)
