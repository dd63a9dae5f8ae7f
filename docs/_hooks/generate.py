"""mkdocs hook that fills generated parts of the pages from the live code.

A page marks a generated part with an HTML comment on a line of its own:

* ``<!-- nssm:catalogue core -->`` (or ``layer``, ``backend``): a table of the
  built-in entries of that kind, read from the plugin registry, followed by
  each entry's options.
* ``<!-- nssm:api nssm_core -->``: one mkdocstrings block per name in the
  module's ``__all__``.
* ``<!-- nssm:modules nssm_core -->``: a section per public submodule, with
  its docstring and one block per name in its ``__all__``.
* ``<!-- nssm:cli -->``: the help text of ``nssm`` and of each subcommand.

Generating these parts keeps them from drifting from the code: a new plugin
entry, public name or command option appears on the next build. The hook also
adds the pages in ``OPTIONAL_PAGES`` to the nav when their files exist.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import pkgutil
import re
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

_MARKER = re.compile(r"^<!-- nssm:(?P<what>catalogue|api|modules|cli)(?: (?P<arg>[\w.]+))? -->$", re.MULTILINE)

# Public submodules that the API pages leave out, with the reason.
SKIPPED_MODULES = {
    "nssm_core.cli": "the CLI reference page documents the commands",
}

BUILTIN_DISTRIBUTION = "nssm"


# Pages that other parts of the project may add; each joins the nav when its file exists.
OPTIONAL_PAGES = {
    "catalogue.md": "Catalogue",
    "certificates.md": "Certificates",
    "benchmarks.md": "Benchmarks",
    "training.md": "Training",
}


def on_config(config: Any, **kwargs: Any) -> Any:
    """Add each optional page that exists but is not in the nav, before the CLI reference."""
    nav = config["nav"]
    if nav is None:
        return config
    listed = set(_nav_files(nav))
    docs_dir = Path(config["docs_dir"])
    missing = [{title: name} for name, title in OPTIONAL_PAGES.items() if (docs_dir / name).is_file() and name not in listed]
    titles = [next(iter(item)) if isinstance(item, dict) else None for item in nav]
    position = titles.index("CLI reference") if "CLI reference" in titles else len(nav)
    nav[position:position] = missing
    return config


def _nav_files(nav: Any) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [name for value in nav.values() for name in _nav_files(value)]
    if isinstance(nav, list):
        return [name for item in nav for name in _nav_files(item)]
    return []


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Replace every generation marker in a page with the generated Markdown."""
    return _MARKER.sub(_expand, markdown)


def _expand(match: re.Match[str]) -> str:
    what, argument = match["what"], match["arg"]
    if what == "catalogue":
        return catalogue_markdown(argument)
    if what == "api":
        return api_markdown(argument)
    if what == "modules":
        return modules_markdown(argument)
    return cli_markdown()


def _registry():
    from nssm_core import PluginLoadWarning, load_plugins

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        return load_plugins()


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def catalogue_markdown(kind: str | None) -> str:
    """Return the table of built-in entries of ``kind`` and, per entry, a table of its options."""
    if kind not in {"core", "layer", "backend"}:
        raise ValueError(f"nssm:catalogue needs a kind (core, layer or backend), got {kind!r}")
    registered = [e for e in _registry().entries(kind) if e.distribution == BUILTIN_DISTRIBUTION]
    entries = [e.describe() for e in registered]
    annotations = {e.name: {n: f.annotation for n, f in e.options.model_fields.items()} for e in registered}
    if not entries:
        raise ValueError(f"the registry has no built-in {kind} entries; is nssm installed in this environment?")

    lines = []
    if kind == "core":
        lines += ["| name | certificate | recurrence | description |", "| --- | --- | --- | --- |"]
        for e in entries:
            lines.append(f"| [`{e['name']}`](#{_anchor(e['name'])}) | {e['certificate']} | {e['structure']} | {_cell(e['description'])} |")
    elif kind == "layer":
        lines += ["| name | certificate | description |", "| --- | --- | --- |"]
        for e in entries:
            lines.append(f"| [`{e['name']}`](#{_anchor(e['name'])}) | {e['certificate']} | {_cell(e['description'])} |")
    else:
        lines += ["| name (`mode=`) | description |", "| --- | --- |"]
        for e in entries:
            lines.append(f"| [`{e['name']}`](#{_anchor(e['name'])}) | {_cell(e['description'])} |")

    for e in entries:
        lines += ["", f"### `{e['name']}` {{ #{_anchor(e['name'])} }}", "", _cell(e["description"]) or "", ""]
        if not e["options"]:
            lines.append("No options.")
            continue
        lines += ["| option | type | default | description |", "| --- | --- | --- | --- |"]
        for name, info in e["options"].items():
            default = "required" if info["required"] else f"`{json.dumps(info['default'], default=str)}`"
            type_text = _type_name(annotations[e["name"]][name])
            lines.append(f"| `{name}` | {_cell(type_text)} | {default} | {_cell(info['description'])} |")
    return "\n".join(lines) + "\n"


def _type_name(annotation: object) -> str:
    """Return a readable name of a type annotation: ``float``, ``float | None``, ``Literal['a', 'b']``."""
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("NoneType", "None")


def _anchor(name: str) -> str:
    return "entry-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def api_markdown(module_name: str | None) -> str:
    """Return one mkdocstrings block per name in ``module_name.__all__``, sorted.

    A package's names that a public subpackage also lists in its ``__all__``
    are left out, because the page documents that subpackage in its own section.
    """
    if not module_name:
        raise ValueError("nssm:api needs a module name, for example <!-- nssm:api nssm_core -->")
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        raise ValueError(f"{module_name} has no __all__; list its public names there")
    documented_in_subpackages = set()
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        if info.ispkg and not info.name.startswith("_"):
            subpackage = importlib.import_module(f"{module_name}.{info.name}")
            documented_in_subpackages.update(getattr(subpackage, "__all__", []))
    blocks = []
    for name in sorted(names):
        if name.startswith("__") or name in documented_in_subpackages:
            continue
        blocks.append(f"::: {module_name}.{name}\n")
    return "\n".join(blocks)


def public_submodules(package_name: str) -> list[str]:
    """Return the dotted names of ``package_name``'s public submodules, sorted, without the skipped ones."""
    package = importlib.import_module(package_name)
    names = []
    for info in pkgutil.iter_modules(package.__path__):
        name = f"{package_name}.{info.name}"
        if not info.name.startswith("_") and name not in SKIPPED_MODULES:
            names.append(name)
    return sorted(names)


def modules_markdown(package_name: str | None) -> str:
    """Return a section per public submodule of ``package_name``: its docstring and its ``__all__`` names."""
    if not package_name:
        raise ValueError("nssm:modules needs a package name, for example <!-- nssm:modules nssm_core -->")
    sections = []
    for name in public_submodules(package_name):
        sections += [
            f"## `{name}`",
            "",
            f"::: {name}",
            "    options:",
            "      members: false",
            "      show_root_heading: false",
            "",
            api_markdown(name),
        ]
    return "\n".join(sections)


def cli_markdown() -> str:
    """Return the ``--help`` text of ``nssm`` and of every subcommand, as code blocks."""
    import argparse

    from nssm_core.cli import build_parser

    parser = build_parser()
    sections = [("nssm", parser)]
    for action in parser._actions:  # argparse has no public accessor for subparsers
        if isinstance(action, argparse._SubParsersAction):
            sections += [(f"nssm {name}", sub) for name, sub in action.choices.items()]
    lines = []
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps help to the terminal width; fix it so builds match
    try:
        for title, command in sections:
            buffer = io.StringIO()
            with redirect_stdout(buffer):
                command.print_help()
            lines += [f"## `{title}`", "", "```text", buffer.getvalue().rstrip(), "```", ""]
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return "\n".join(lines)
