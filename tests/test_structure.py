"""The layout rules: files under 400 lines, functions under 80, no import cycle, the README's architecture = the tree.

Deferred imports (inside functions) count as dependencies too: a cycle hidden behind one is
still a cycle for whoever reads the code.
"""

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "rlvr")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, str]:
    """Dotted module name -> path, for every .py file under rlvr/."""
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[dotted.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: str, modules: dict[str, str]) -> set[str]:
    """The rlvr modules ``name`` imports, at any depth of its code."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m in modules and m != name}


def test_no_file_over_400_lines_and_no_function_over_80():
    long_files, long_functions = [], []
    for name, path in _modules().items():
        source = open(path, encoding="utf-8").read()
        if len(source.splitlines()) > MAX_FILE_LINES:
            long_files.append((name, len(source.splitlines())))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append((f"{name}.{node.name}", length))
    assert not long_files, f"files over {MAX_FILE_LINES} lines: {long_files}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> modules it imports), or None."""
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> list[str] | None:
        if node in stack:
            return stack[stack.index(node):] + [node]
        if node in done:
            return None
        for dep in sorted(graph.get(node, ())):
            found = visit(dep, stack + [node])
            if found:
                return found
        done.add(node)
        return None

    for name in sorted(graph):
        found = visit(name, [])
        if found:
            return found
    return None


def test_no_import_cycle_between_rlvr_modules():
    modules = _modules()
    cycle = _cycle({name: _imports(name, path, modules) for name, path in modules.items()})
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle_behind_a_deferred_import(tmp_path):
    modules = {"rlvr.a": str(tmp_path / "a.py"), "rlvr.b": str(tmp_path / "b.py")}
    (tmp_path / "a.py").write_text("from rlvr.b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from rlvr.a import y\n")
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert graph == {"rlvr.a": {"rlvr.b"}, "rlvr.b": {"rlvr.a"}}
    assert _cycle(graph) == ["rlvr.a", "rlvr.b", "rlvr.a"]


def test_the_readmes_architecture_is_the_tree():
    """Every module and package of rlvr/ is in the README's architecture section, and nothing else is."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    listed, package = set(), None
    for line in section.splitlines():
        top = re.match(r"    (rlvr/[\w/]*?)(?:\.py)?/?\s", line + " ")
        if top:
            entry = top.group(1)
            package = entry if line.split()[0].endswith("/") else None
            listed.add(entry)
            continue
        inner = re.match(r"      ([\w.]+(?:, [\w.]+)*)\s", line)
        if inner and package:
            listed |= {f"{package}/{n.removesuffix('.py')}" for n in inner.group(1).split(", ")}
    actual = set()
    for name, path in _modules().items():
        rel = os.path.relpath(path, ROOT)[:-3]
        if rel.endswith("__init__"):
            actual.add(os.path.dirname(rel))
        elif not rel.endswith("__main__"):
            actual.add(rel)
    actual.discard("rlvr")
    # a package listed as a whole (rlvr/devtools/) covers its modules
    covered = {a for a in actual if any(a.startswith(p + "/") for p in listed)}
    assert actual - covered - listed == set(), "in the tree but not in the README's architecture"
    assert listed - actual == set(), "in the README's architecture but not in the tree"
