"""The README's code blocks run, and CI calls the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_readme_python_block_runs(index):
    code = _blocks("python")[index]
    namespace: dict[str, object] = {}
    exec(compile(code, f"README.md python block {index}", "exec"), namespace)
    y, state = namespace["y"], namespace["state"]
    assert tuple(y.shape) == (8, 200, 1)
    assert len(state) == 4
    assert namespace["model"].certificate().bound == pytest.approx(2.0, rel=1e-6)


def test_ci_runs_readme_test_command():
    commands = [block.strip() for block in _blocks("bash") if "pytest" in block]
    assert len(commands) == 1
    ci_script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[0] in ci_script


CERTIFIED_CORES = ["l2n", "tv", "l2ru", "zak", "l2nt"]
CERTIFIED_LAYERS = ["LGLU", "LMLP", "TLIP"]


@pytest.mark.parametrize("core", CERTIFIED_CORES)
@pytest.mark.parametrize("layer", CERTIFIED_LAYERS)
def test_readme_blocks_with_each_certified_plugin(core, layer):
    for index, code in enumerate(_blocks("python")):
        assert 'param="l2n"' in code
        assert 'ff="LGLU"' in code
        edited = code.replace('param="l2n"', f'param="{core}"').replace('ff="LGLU"', f'ff="{layer}"')
        namespace: dict[str, object] = {}
        exec(compile(edited, f"README.md python block {index} ({core}, {layer})", "exec"), namespace)
        assert tuple(namespace["y"].shape) == (8, 200, 1)
        report = namespace["model"].certificate()
        assert report.bound == pytest.approx(2.0, rel=1e-6)
