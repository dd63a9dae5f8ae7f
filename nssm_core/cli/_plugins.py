"""``nssm plugins``: list the registered cores, layers and backends.

The listing is built from :meth:`nssm_core.PluginEntry.describe`, so it shows
what the registry holds: built-ins and third-party plugins alike, each with
the distribution that registered it, its certificate kind and its options.
Plugins that failed to load are listed after the entries.
"""

from __future__ import annotations

import argparse
import json
import warnings
from typing import Any

from .._protocols import PluginKind
from .._registry import PluginLoadWarning, get_registry

_KIND_TITLES = {PluginKind.CORE: "Dynamic cores", PluginKind.LAYER: "Static layers", PluginKind.BACKEND: "Scan backends"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``nssm plugins``."""
    parser = subparsers.add_parser(
        "plugins",
        help="List registered cores, layers and backends.",
        description=(
            "List every registered dynamic core, static layer and scan backend with its source "
            "distribution, certificate kind and options, then any plugin that failed to load. "
            "Set NSSM_DISABLE_PLUGINS to a comma-separated list of plugin or distribution names to skip them."
        ),
    )
    parser.add_argument(
        "--kind", choices=[kind.value for kind in PluginKind], help="List only this kind (default: all kinds)."
    )
    parser.add_argument("--json", action="store_true", help="Print JSON for programs instead of a table.")
    parser.set_defaults(handler=run)


def collect(kind: str | None = None) -> dict[str, Any]:
    """Return the registry listing as JSON-compatible data: ``{"entries": [...], "failures": [...]}``."""
    with warnings.catch_warnings():
        # The failures are part of the listing, so the load-time warnings would only repeat them.
        warnings.simplefilter("ignore", PluginLoadWarning)
        registry = get_registry()
    entries = [entry.describe() for entry in registry.entries(kind)]
    failures = [
        {"plugin": failure.plugin, "distribution": failure.distribution, "reason": failure.reason}
        for failure in registry.failures
    ]
    return {"entries": entries, "failures": failures}


def _format_default(value: Any) -> str:
    return json.dumps(value, default=str)


def _format_options(options: dict[str, dict[str, Any]]) -> str:
    if not options:
        return "(none)"
    parts = []
    for name, info in options.items():
        if info["required"]:
            parts.append(f"{name}: {info['type']} (required)")
        else:
            parts.append(f"{name}={_format_default(info['default'])}")
    return ", ".join(parts)


def format_table(listing: dict[str, Any]) -> str:
    """Render :func:`collect` output as text: one table per kind, with each entry's options below it."""
    lines: list[str] = []
    header = ("NAME", "CERTIFICATE", "STRUCTURE", "DISTRIBUTION")
    for kind in PluginKind:
        rows = [entry for entry in listing["entries"] if entry["kind"] == kind.value]
        if not rows:
            continue
        cells = [(e["name"], e["certificate"], e["structure"] or "-", e["distribution"]) for e in rows]
        widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
        if lines:
            lines.append("")
        lines.append(f"{_KIND_TITLES[kind]} ({len(rows)})")
        lines.append("  " + "  ".join(text.ljust(width) for text, width in zip(header, widths)).rstrip())
        for entry, row in zip(rows, cells):
            lines.append("  " + "  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip())
            if entry["description"]:
                lines.append(f"      {entry['description']}")
            lines.append(f"      options: {_format_options(entry['options'])}")
    if not listing["entries"]:
        lines.append("No plugins are registered. Is nssm installed, and is NSSM_DISABLE_PLUGINS set?")
    if listing["failures"]:
        lines.append("")
        lines.append(f"Plugins that failed to load ({len(listing['failures'])})")
        for failure in listing["failures"]:
            lines.append(f"  {failure['plugin']} from distribution {failure['distribution']}: {failure['reason']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the listing; return 0."""
    listing = collect(args.kind)
    if args.json:
        print(json.dumps(listing, indent=2, default=str))
    else:
        print(format_table(listing))
    return 0
