"""The package's import graph: no circles, and every arrow points down the layers (module-level and function-level
imports alike, read from the source with ast)."""
import ast
import os

import pytest

PACKAGE = "recbole_compress"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)

# lower rank = lower layer; a module may import modules of its own rank or below (its own group), never above
RANKS = [
    (0, ("recbole_compress", "recbole_compress.errors", "recbole_compress.config_keys", "recbole_compress.checkpoint",
         "recbole_compress.profiling", "recbole_compress.logs", "recbole_compress.intervals")),
    (1, ("recbole_compress.model.layers", "recbole_compress.data")),
    (2, ("recbole_compress.model", "recbole_compress.model.sequential_recommender")),
    (3, ("recbole_compress.export",)),
    (4, ("recbole_compress.trainer",)),
    (5, ("recbole_compress.registry", "recbole_compress.recbole_keys", "recbole_compress.utils")),
    (6, ("recbole_compress.config",)),
    (7, ("recbole_compress.phases",)),
    (8, ("recbole_compress.preflight",)),
    (9, ("recbole_compress.run",)),
    (10, ("recbole_compress.quick_start", "recbole_compress.commandline", "recbole_compress.scaling")),
    (11, ("recbole_compress.benchmark_report", "recbole_compress.distributed")),
    (12, ("recbole_compress.benchmark", "recbole_compress.tune")),
    (13, ("recbole_compress.cli",)),
]


def module_name(path):
    rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def package_modules():
    modules = {}
    for folder, _, files in os.walk(ROOT):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                modules[module_name(path)] = path
    return modules


def imports_of(path, modules):
    """Every plugin module ``path`` imports, at module level or inside functions."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name.startswith(PACKAGE):
                found.add(name)
    return found


def graph():
    modules = package_modules()
    return {m: imports_of(p, modules) - {m} for m, p in modules.items()}


def rank_of(module):
    best = None
    for rank, prefixes in RANKS:
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    assert best is not None, f"{module} has no layer in RANKS: add it"
    return best[0]


def find_circle(edges):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                circle = visit(nxt)
                if circle:
                    return circle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            circle = visit(node)
            if circle:
                return circle
    return None


def test_the_walker_sees_function_level_imports_and_circles():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None
    edges = graph()
    assert "recbole_compress.run" in edges["recbole_compress.quick_start"]  # imported at module level
    assert "recbole_compress.config" in edges["recbole_compress.commandline"]  # imported inside a function


def test_no_import_circles():
    circle = find_circle(graph())
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_imports_only_point_down():
    upward = []
    for module, targets in graph().items():
        for target in targets:
            if target != PACKAGE and rank_of(target) > rank_of(module):
                upward.append(f"{module} (layer {rank_of(module)}) imports {target} (layer {rank_of(target)})")
    assert not upward, "imports that run back up a layer:\n" + "\n".join(sorted(upward))


@pytest.mark.parametrize("module", ["recbole_compress.model.layers", "recbole_compress.model.sequential_recommender"])
def test_models_and_layers_import_no_trainer_exporter_or_run_layer(module):
    for name, targets in graph().items():
        if name.startswith(module):
            assert not {t for t in targets if rank_of(t) > rank_of(name)}, name


def test_every_benchmark_script_imports_names_that_exist():
    """The scripts in benchmarks/ import inside functions too: a name the package no longer has fails only when the
    script runs, so every ``from recbole_compress... import name`` in them is resolved here."""
    import ast
    import glob
    import importlib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    missing = []
    for path in sorted(glob.glob(os.path.join(root, "benchmarks", "*.py"))):
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if not (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("recbole_compress")):
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):
                    try:
                        importlib.import_module(f"{node.module}.{alias.name}")
                    except ImportError:
                        missing.append(f"{os.path.basename(path)}: {node.module}.{alias.name}")
    assert not missing, missing
