"""The package layout stays as designed: no import cycle inside omniad_edge/ (every import counts, including the
lazy ones inside functions), the TensorRT package imports in one direction, and the device package imports neither
torch nor the training code (but for the command line's `adapt`)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "omniad_edge"
TENSORRT_ORDER = ("cuda", "limits", "precision", "memory", "record", "build", "backend", "cli")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names of everything the module imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports. An import of a module's own ancestor package is left out: Python
    imports the parent before the child anyway, so it can never start a cycle of its own."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        graph[name] = {t for t in _imports(name, path)
                       if t in modules and t != name and not name.startswith(t + ".") and t != "omniad_edge"}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, path)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [])
            if cycle:
                return cycle
    return None


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_tensorrt_modules_import_only_the_ones_above_them():
    graph = import_graph()
    for i, short in enumerate(TENSORRT_ORDER):
        name = f"omniad_edge.tensorrt.{short}"
        inside = {t.rsplit(".", 1)[1] for t in graph[name] if t.startswith("omniad_edge.tensorrt.")}
        assert inside <= set(TENSORRT_ORDER[:i]), f"{name} imports {sorted(inside - set(TENSORRT_ORDER[:i]))}"
        outside = {t for t in graph[name] if not t.startswith("omniad_edge.tensorrt")}
        # no import back into the runtime that uses it (the backend interface, the inspector, the CLI)
        assert outside <= {"omniad_edge.bundle", "omniad_edge.errors", "omniad_edge._version",
                           "omniad_edge.contract"}, f"{name} imports {sorted(outside)}"


def test_device_package_imports_neither_torch_nor_training():
    for name, path in _modules().items():
        roots = {t.split(".")[0] for t in _imports(name, path)}
        assert not roots & {"torch", "transformers"}, name
        if name != "omniad_edge.cli":  # only the `export` and `adapt` commands reach the exporter and the training
            assert not roots & {"export", "training"}, name  # code (extras `export`, `train`; torch imported lazily)
