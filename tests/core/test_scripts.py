"""Rule scripts are glue: ``rule_main`` plus exactly one call into the saeflow package, named
for the rule (script ``scripts/R.py`` of rule ``R`` calls ``R_stage``), given the model and
SAEs as one :class:`saeflow.core.bundle.ModelSAEs` where it runs them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[2] / "scripts").glob("*.py"))


def _saeflow_calls(path: Path) -> tuple[str, list[str]]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("saeflow"):
            names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names
                      if a.name.startswith("saeflow")}
    names.discard("rule_main")
    body = next(f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "body")
    calls = [ast.unparse(c.func) for c in ast.walk(body) if isinstance(c, ast.Call)]
    return ast.get_docstring(tree) or "", [c for c in calls if c.split(".")[0] in names]


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_script_makes_one_library_call(path):
    docstring, calls = _saeflow_calls(path)
    assert docstring.startswith(f"Rule {path.stem}"), docstring[:60]
    stage = [c for c in calls if c != "ModelSAEs.from_rule"]
    assert [c.split(".")[-1] for c in stage] == [f"{path.stem}_stage"], calls
    assert "rule_main(body, snakemake)" in path.read_text()
