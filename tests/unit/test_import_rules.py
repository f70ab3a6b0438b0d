"""The pure core stays pure, the package has no import cycle, loggers are named after their modules
(read from the source, by AST), and importing a module has no side effect (checked in a fresh
interpreter).

A module whose docstring starts with ``PURE`` decides things from plain data: it may import the
standard library and other PURE modules, nothing else of the package, no ML library, and it may not
read ``os.environ``. Everything else is EDGE. Function-level (lazy) imports count too: a cycle
hidden in a function body is still a cycle.
"""

from __future__ import annotations

import ast
import graphlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lm_eval_ext"
HEAVY = {"torch", "transformers", "vllm", "accelerate", "lm_eval", "huggingface_hub", "tokenizers",
         "psutil", "tqdm", "numpy", "ray", "safetensors"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text()) for name, path in MODULES.items()}


def is_pure(name: str) -> bool:
    return (ast.get_docstring(TREES[name]) or "").startswith("PURE")


def imported(name: str) -> set[str]:
    """Every module ``name`` imports, resolved to package modules where it names one."""
    found: set[str] = set()
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            for alias in node.names:  # "from lm_eval_ext.plan import preflight" imports a module
                if f"{node.module}.{alias.name}" in MODULES:
                    found.add(f"{node.module}.{alias.name}")
    return found


def package_imports(name: str) -> set[str]:
    return {m for m in imported(name) if m in MODULES and m != "lm_eval_ext" and not MODULES[m].name == "__init__.py"}


def reads_environ(name: str) -> bool:
    return any(isinstance(node, ast.Attribute) and node.attr == "environ" for node in ast.walk(TREES[name]))


PURE = sorted(n for n in MODULES if is_pure(n))


def test_the_pure_core_is_marked():
    # the planner, the batch policy, the cache keys and the vLLM sizes are decisions: keep them pure
    for expected in ("lm_eval_ext.plan.planner", "lm_eval_ext.plan.vllm_policy", "lm_eval_ext.plan.types",
                     "lm_eval_ext.plan.facts", "lm_eval_ext.plan.hardware", "lm_eval_ext.hf.policy.batching",
                     "lm_eval_ext.cache.keys", "lm_eval_ext.vllm.sizes"):
        assert expected in PURE


@pytest.mark.parametrize("name", PURE)
def test_pure_module_imports_no_backend_and_no_edge(name):
    heavy = sorted(m for m in imported(name) if m.split(".")[0] in HEAVY)
    assert not heavy, f"{name} is PURE but imports {heavy}"
    edges = sorted(m for m in package_imports(name) if not is_pure(m))
    assert not edges, f"{name} is PURE but imports EDGE modules {edges}"
    assert not reads_environ(name), f"{name} is PURE but reads os.environ"


def test_no_import_cycle():
    graph = {name: package_imports(name) for name in MODULES}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def package_of(name: str) -> str:
    """The package a module belongs to; a module directly under ``lm_eval_ext`` is a room of its own."""
    if MODULES[name].name == "__init__.py":
        return name
    parent = name.rsplit(".", 1)[0]
    return name if parent == "lm_eval_ext" else parent


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name in MODULES:
        edges = graph.setdefault(package_of(name), set())
        edges.update(package_of(m) for m in package_imports(name) if package_of(m) != package_of(name))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def test_no_package_level_cycle():
    """Rooms import one way: a module of package A importing package B while some module of B
    imports A is a cycle between rooms even when no module-level cycle exists."""
    cycle = find_cycle(package_graph())
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle)


def test_the_package_cycle_check_can_fail():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_hf_layers():
    """hf/policy decides (PURE), hf/compute computes (torch, never lm-eval), hf/ glues to lm-eval."""
    for name in MODULES:
        if name.startswith("lm_eval_ext.hf.policy"):
            assert is_pure(name), f"{name} is in hf/policy but not PURE"
        if name.startswith("lm_eval_ext.hf.compute"):
            lm_eval = sorted(m for m in imported(name) if m.split(".")[0] == "lm_eval")
            assert not lm_eval, f"{name} is in hf/compute but imports lm-eval: {lm_eval}"


def test_the_rules_catch_a_violation(tmp_path):
    """The checker itself: a PURE module importing torch and reading the environment is caught."""
    tree = ast.parse('"""PURE: bad."""\nimport os\nimport torch\nX = os.environ.get("A")\n')
    TREES["lm_eval_ext._probe_violation"] = tree
    MODULES["lm_eval_ext._probe_violation"] = tmp_path / "x.py"
    try:
        assert is_pure("lm_eval_ext._probe_violation")
        assert "torch" in imported("lm_eval_ext._probe_violation")
        assert reads_environ("lm_eval_ext._probe_violation")
    finally:
        del TREES["lm_eval_ext._probe_violation"], MODULES["lm_eval_ext._probe_violation"]


#: modules that configure loggers other than their own on purpose
CONFIGURES_LOGGERS = {"lm_eval_ext.logs"}  # shares lm-eval's handlers with the package's root logger
#: modules that name their logger by hand (none: a new one needs a reason here)
KNOWN_LOGGER_NAMES: dict[str, set[str]] = {}


def logger_names_given(name: str) -> set[str]:
    """String constants handed to ``logging.getLogger`` in module ``name``."""
    found = set()
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called == "getLogger" and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def test_logger_names_equal_module_names():
    """``logging.getLogger(__name__)``: a record names the module that wrote it, and a user silences
    or raises one part (``lm_eval_ext.plan``) by the package's own names."""
    wrong = {name: given for name in MODULES if name not in CONFIGURES_LOGGERS
             if (given := logger_names_given(name) - {name})}
    assert wrong == KNOWN_LOGGER_NAMES


def test_the_logger_rule_can_fail():
    TREES["lm_eval_ext._probe_logger"] = ast.parse('import logging\nlogger = logging.getLogger("lm_eval_ext.other")\n')
    try:
        assert logger_names_given("lm_eval_ext._probe_logger") == {"lm_eval_ext.other"}
    finally:
        del TREES["lm_eval_ext._probe_logger"]


#: modules with an import side effect (none). The excepthook belongs where lm-eval builds a model
#: (``lm_args.EvaluatorArgsChecked``), never in an import.
KNOWN_IMPORT_SIDE_EFFECTS: dict[str, list[str]] = {}

_SIDE_EFFECTS_SCRIPT = r"""
import importlib, json, logging, sys

for heavy in ("torch", "transformers", "accelerate", "lm_eval", "lm_eval.api.registry", "lm_eval.models", "vllm"):
    try:  # third-party imports configure their own loggers; only ours are checked
        importlib.import_module(heavy)
    except Exception:
        pass

def logging_state():  # the root logger and ours (third-party imports configure their own on import)
    loggers = {"": logging.root, **{n: l for n, l in logging.root.manager.loggerDict.items()
                                    if isinstance(l, logging.Logger) and n.split(".")[0] in ("lm_eval_ext", "lm_eval")}}
    configured = {n: (tuple(map(id, l.handlers)), l.level, l.propagate, l.disabled) for n, l in loggers.items()}
    return {n: state for n, state in configured.items() if state[0] or state[1] or not state[2] or state[3]}, \
        logging.root.manager.disable

effects = {}
for name in json.loads(sys.argv[1]):
    hook, state = sys.excepthook, logging_state()
    try:
        importlib.import_module(name)
    except ImportError as exc:  # a backend that is not installed here
        effects[name] = ["not importable: " + str(exc).splitlines()[0]]
        continue
    found = []
    if sys.excepthook is not hook:
        found.append("excepthook")
        sys.excepthook = hook
    if logging_state() != state:
        found.append("logging")
    if found:
        effects[name] = found
print(json.dumps(effects))
"""


def import_order() -> list[str]:
    """Every module after the package modules it imports, so an effect is its own, not a dependency's."""
    graph = {name: package_imports(name) for name in MODULES}
    return [name for name in graphlib.TopologicalSorter(graph).static_order() if name in MODULES]


def test_importing_a_module_installs_no_excepthook_and_configures_no_logging():
    root = str(PACKAGE.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", _SIDE_EFFECTS_SCRIPT, json.dumps(import_order())], env=env,
                          cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    effects = json.loads(done.stdout.strip().splitlines()[-1])
    absent = {name: found for name, found in effects.items() if found[0].startswith("not importable")}
    assert all("lm-eval-ext[" in found[0] for found in absent.values()), absent  # only a backend not installed
    assert {name: found for name, found in effects.items() if name not in absent} == KNOWN_IMPORT_SIDE_EFFECTS
