"""Griffe extension that turns Sphinx cross-reference roles in docstrings into mkdocs links.

nssm's docstrings follow Google style but refer to other objects with Sphinx
roles such as ``:class:`~nssm_core.SSMConfig```, which Markdown would print
literally. Each role becomes an optional autorefs link: it links to the
object's API entry when the site documents it, and renders as plain code
otherwise, so a reference to an undocumented object never breaks a strict build.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(
    r":(?P<role>class|func|meth|attr|mod|data|exc|obj|const):`(?P<tilde>~?)(?P<target>[\w.]+)(?P<call>\(\))?`"
)
_ABSOLUTE = ("nssm_core", "nssm_plugins", "torch", "pydantic")


def documented_path(path: str) -> str:
    """Return the path under which the API pages document the object at ``path``.

    Public objects live in private modules and are re-exported by their
    package, so the private module drops out:
    ``nssm_core._base.CoreBase.forward`` gives ``nssm_core.CoreBase.forward``.
    """
    parts = path.split(".")
    kept = [part for part in parts if not part.startswith("_")]
    return ".".join(kept)


def rewrite_roles(text: str, module_path: str, class_path: str | None) -> str:
    """Replace every Sphinx role in ``text`` with an optional autorefs link.

    Relative targets of ``:meth:`` and ``:attr:`` resolve inside the class
    ``class_path`` when there is one, other relative targets inside ``module_path``.
    """

    def replace(match: re.Match[str]) -> str:
        target = match["target"]
        if not target.startswith(_ABSOLUTE):
            member_role = match["role"] in ("meth", "attr")
            context = class_path if member_role and class_path else module_path
            target = f"{documented_path(context)}.{target}"
        shown = match["target"].rsplit(".", 1)[-1] if match["tilde"] else match["target"]
        shown += match["call"] or ""
        return (
            f'<autoref identifier="{html.escape(target)}" optional>'
            f"<code>{html.escape(shown)}</code></autoref>"
        )

    return _ROLE.sub(replace, text)


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every loaded object's docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring in place, if it has one."""
        if obj.docstring is None:
            return
        module_path = obj.module.path if not obj.is_module else obj.path
        if obj.is_class:
            class_path = obj.path
        elif obj.parent is not None and obj.parent.is_class:
            class_path = obj.parent.path
        else:
            class_path = None
        obj.docstring.value = rewrite_roles(obj.docstring.value, module_path, class_path)
