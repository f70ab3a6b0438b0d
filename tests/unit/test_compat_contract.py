"""Every upstream name the package touches beyond a top-level public API is listed in
``lm_eval_ext.compat.UPSTREAM`` and still exists upstream. The list drives the checks: a new
private use that is not listed fails here, so none slips in untested.

Found by reading our source (AST), three ways:
- imports from an upstream submodule (``from transformers.cache_utils import DynamicLayer``);
- in a class that subclasses an upstream class, every ``_name`` it defines, reads or writes that the
  upstream class (or its bases) also uses: an override of a private hook or a private attribute;
- anywhere, an attribute ``x._name`` whose name the package itself never defines.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

from lm_eval_ext.compat import UPSTREAM, UpstreamName

PACKAGE = Path(__file__).resolve().parents[2] / "lm_eval_ext"
UPSTREAM_PACKAGES = ("lm_eval", "transformers", "vllm", "accelerate", "torch")
#: private names of the standard library the package uses on purpose
STDLIB_PRIVATE = {"_exit"}  # os._exit: a replica child must not run atexit handlers
TREES = {p: ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def upstream_imports() -> dict[str, set[str]]:
    """``module:name`` for every name imported from an upstream submodule -> our files."""
    found: dict[str, set[str]] = {}
    for path, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                parts = node.module.split(".")
                if parts[0] in UPSTREAM_PACKAGES and (len(parts) > 1 or any(_is_private(a.name) for a in node.names)):
                    for alias in node.names:
                        found.setdefault(f"{node.module}:{alias.name}", set()).add(path.name)
    return found


def names_defined_here() -> set[str]:
    defined: set[str] = set()
    for tree in TREES.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                defined.add(node.attr)  # a write marks it ours (upstream attributes we write are listed by hand)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif isinstance(node, ast.arg):
                defined.add(node.arg)
            elif isinstance(node, ast.alias):
                defined.add(node.asname or node.name.split(".")[0])
    return defined


def foreign_private_attributes() -> dict[str, set[str]]:
    """``x._name`` reads where the package never defines ``_name`` -> our files."""
    defined = names_defined_here()
    found: dict[str, set[str]] = {}
    for path, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _is_private(node.attr) and node.attr not in defined:
                found.setdefault(node.attr, set()).add(path.name)
    return found


def _upstream_base(module_tree: ast.Module, base: ast.expr):
    """The upstream class a base expression names (through this module's imports), or None."""
    if not isinstance(base, ast.Name):
        return None
    for node in ast.walk(module_tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in UPSTREAM_PACKAGES:
            for alias in node.names:
                if (alias.asname or alias.name) == base.id:
                    return getattr(importlib.import_module(node.module), alias.name, None)
    return None


def _private_names_of(cls) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object or not klass.__module__.split(".")[0] in UPSTREAM_PACKAGES:
            continue
        names.update(n for n in vars(klass) if _is_private(n))
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for node in ast.walk(ast.parse(inspect.cleandoc(source) if source.startswith(" ") else source)):
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                names.add(node.attr)
    return names


def subclass_private_uses() -> dict[str, set[str]]:
    """``UpstreamClass._name`` for each private name our subclasses share with it -> our files."""
    found: dict[str, set[str]] = {}
    for path, tree in TREES.items():
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            for base in cls.bases:
                upstream = _upstream_base(tree, base)
                if upstream is None:
                    continue
                ours = {n.name for n in ast.walk(cls) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
                ours |= {n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute)}
                for name in sorted(ours & _private_names_of(upstream)):
                    found.setdefault(f"{upstream.__name__}.{name}", set()).add(path.name)
    return found


def _importable(package: str) -> bool:
    try:
        importlib.import_module(package)
    except Exception:  # noqa: BLE001 (a backend that is absent or broken here)
        return False
    return True


def _needs(entry: UpstreamName) -> None:
    if not _importable(entry.module.split(".")[0]):
        pytest.skip(f"{entry.module.split('.')[0]} is not installed")


LISTED_TARGETS = {e.target for e in UPSTREAM}
LISTED_ATTRS = {e.name.split(".")[-1] for e in UPSTREAM}
LISTED_QUALIFIED = {e.name for e in UPSTREAM}


@pytest.mark.parametrize("target", sorted(upstream_imports()))
def test_every_upstream_submodule_import_is_listed(target):
    assert target in LISTED_TARGETS, f"{target} (used in {sorted(upstream_imports()[target])}) is not in compat.UPSTREAM"


def test_every_foreign_private_attribute_is_listed():
    missing = {a: sorted(f) for a, f in foreign_private_attributes().items() if a not in LISTED_ATTRS | STDLIB_PRIVATE}
    assert not missing, f"private upstream attributes not in compat.UPSTREAM: {missing}"


def test_every_private_name_shared_with_an_upstream_base_is_listed():
    pytest.importorskip("torch")
    uses = subclass_private_uses()
    missing = {q: sorted(f) for q, f in uses.items() if q not in LISTED_QUALIFIED}
    assert not missing, f"private names shared with an upstream class, not in compat.UPSTREAM: {missing}"


@pytest.mark.parametrize("entry", UPSTREAM, ids=lambda e: e.target)
def test_each_listed_name_still_exists_upstream(entry):
    _needs(entry)
    assert entry.until, f"{entry.target}: say which upstream version lets it go (or 'open')"
    obj = importlib.import_module(entry.module)
    head, *rest = entry.name.split(".")
    obj = getattr(obj, head)
    for i, part in enumerate(rest):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        # an instance attribute: set somewhere in the class's (or a base's) source
        assert i == len(rest) - 1 and inspect.isclass(obj), f"{entry.target}: {part} not found"
        assert part in _private_names_of(obj) or f"self.{part}" in inspect.getsource(obj), \
            f"{entry.target}: {part} is not set by {obj.__name__} any more"


def test_the_scanner_finds_a_private_use(tmp_path):
    """The checks can fail: a private upstream import and attribute are reported."""
    probe = tmp_path / "probe.py"
    probe.write_text("from transformers.cache_utils import _private_thing\nx = object()._hidden_upstream_attr\n")
    TREES[probe] = ast.parse(probe.read_text())
    try:
        assert "transformers.cache_utils:_private_thing" in upstream_imports()
        assert "_hidden_upstream_attr" in foreign_private_attributes()
    finally:
        del TREES[probe]
