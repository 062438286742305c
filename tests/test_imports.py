"""No import cycle among rsd_pl's modules, lazy (function-level) imports included, and every module imports
alone in a fresh interpreter state."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rsd_pl"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """rsd_pl modules imported anywhere in the file (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from rsd_pl.eval import loop` imports the module rsd_pl.eval.loop; `from x import Name` imports x
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("rsd_pl"):
                found.add(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), or a module importing itself."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return out


def test_no_import_cycles_even_through_lazy_imports():
    modules = all_modules()
    graph = {}
    for name, path in modules.items():
        package_parents = {name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)}
        graph[name] = imports_of(path, set(modules)) - {name} - package_parents  # a package's own __init__
    assert cycles(graph) == []
    assert "rsd_pl.models.openvla.backbone" not in graph["rsd_pl.models.backbone"]
    assert "rsd_pl.models.backbone" in graph["rsd_pl.models.factory"]


IMPORT_EACH = """
import importlib, sys
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "rsd_pl" or m.startswith("rsd_pl.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as error:
        failed.append(f"{name}: {type(error).__name__}: {error}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_alone():
    names = [name for name in all_modules() if not name.endswith("__main__")]
    done = subprocess.run([sys.executable, "-c", IMPORT_EACH, *names], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]


ALLOWED_EVAL_IMPORTS = {  # docs/contracts.md, "Evaluation structure"
    "config": set(),
    "policy": set(),
    "episode_log": set(),
    "stats": set(),
    "plot_labels": set(),
    "video": set(),
    "models": {"config", "policy"},
    "episodes": {"config", "episode_log"},
    "runner": {"report"},
    "vector": {"runner"},
    "loop": {"config", "episodes", "episode_log", "runner", "report", "vector", "video"},
    "session": {"config", "models", "loop"},
    "cli": {"config", "episodes", "episode_log", "session"},
}


def test_eval_modules_import_only_what_their_contract_allows():
    modules = all_modules()
    for short, allowed in ALLOWED_EVAL_IMPORTS.items():
        name = f"rsd_pl.eval.{short}"
        used = {m.removeprefix("rsd_pl.eval.") for m in imports_of(modules[name], set(modules))
                if m.startswith("rsd_pl.eval.")}
        assert used <= allowed, f"{name} imports {sorted(used - allowed)} beyond its contract"
