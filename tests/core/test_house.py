"""The house's shape, read from the code: no import cycles; the toy world a leaf that no real
module imports (statically, and when every real module is imported); helpers for tests,
benchmarks and docs in saeflow.testing only; no function over 8 parameters and no module
over 400 lines in the package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "saeflow"
MAX_PARAMETERS, MAX_LINES = 8, 400


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path) -> set[str]:
    """The saeflow modules a file imports, function-local imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("saeflow"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("saeflow")}
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {d for d in imports(p) if d in mods and d != m} for m, p in mods.items()}


def test_no_two_modules_import_each_other_through_any_path():
    g = graph()
    seen, stack, on_stack, cycles = set(), [], set(), []

    def visit(m: str) -> None:
        seen.add(m)
        stack.append(m)
        on_stack.add(m)
        for d in sorted(g[m]):
            if d in on_stack:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in seen:
                visit(d)
        stack.pop()
        on_stack.discard(m)

    for m in sorted(g):
        if m not in seen:
            visit(m)
    assert not cycles, cycles


def test_the_toy_world_is_a_leaf_and_test_helpers_stay_in_their_room():
    g = graph()
    real = [m for m in g if not m.startswith(("saeflow.toy", "saeflow.testing"))]
    assert not {m: sorted(d for d in g[m] if d.startswith("saeflow.toy")) for m in real
                if any(d.startswith("saeflow.toy") for d in g[m])}
    assert not {m for m in g if not m.startswith("saeflow.testing")
                and any(d.startswith("saeflow.testing") for d in g[m])}
    # and at run time: importing every real module loads no toy module
    code = (f"import importlib, sys\nfor m in {sorted(real)!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.startswith('saeflow.toy')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_short_signatures_and_modules():
    long_modules, long_signatures = [], []
    for name, path in modules().items():
        text = path.read_text()
        if text.count("\n") > MAX_LINES:
            long_modules.append((name, text.count("\n")))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                n = (len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg)
                     + bool(a.kwarg) - (bool(a.args) and a.args[0].arg in ("self", "cls")))
                if n > MAX_PARAMETERS:
                    long_signatures.append((name, node.name, n))
    assert not long_modules and not long_signatures, (long_modules, long_signatures)
