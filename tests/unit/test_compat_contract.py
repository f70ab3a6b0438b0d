"""Every upstream name the package touches beyond a top-level public API is listed in
``lm_eval_ext.compat.UPSTREAM`` and still exists upstream. The list drives the checks: a new
private use that is not listed fails here, so none slips in untested.

Found by reading our source (AST), five ways:
- imports from an upstream submodule (``from transformers.cache_utils import DynamicLayer``);
- in a class that subclasses an upstream class, every ``_name`` it defines, reads or writes that the
  upstream class (or its bases) also uses: an override of a private hook or a private attribute;
- anywhere, an attribute ``x._name`` whose name the package itself never defines;
- anywhere, ``getattr(x, "_name", ...)`` / ``hasattr(x, "_name")`` with such a name in a string;
- anywhere, an attribute read past one that leads into upstream internals (:data:`INTERNAL_ROOTS`:
  ``llm.llm_engine.vllm_config.cache_config.block_size``), each name of the chain.
Non-private upstream internals read through variables (``engine.step()``) cannot be told from our
own attributes by syntax alone: they are listed by hand, and each listed attribute must still be
used somewhere in the package, so the list stays true in both directions.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

from lm_eval_ext.compat import UPSTREAM, UpstreamName

PACKAGE = Path(__file__).resolve().parents[2] / "lm_eval_ext"
UPSTREAM_PACKAGES = ("lm_eval", "transformers", "vllm", "accelerate", "torch")
#: private names of the standard library the package uses on purpose
STDLIB_PRIVATE = {"_exit"}  # os._exit: a replica child must not run atexit handlers
TREES = {p: ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}
#: upstream attributes whose values are upstream internals: every name read past them must be listed
INTERNAL_ROOTS = {"llm_engine", "engine_core", "_hf_hook"}
_ATTRIBUTE_BUILTINS = {"getattr", "hasattr", "setattr", "delattr"}


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


def _found_in_source(names_at) -> dict[str, set[str]]:
    """Each name ``names_at(node)`` returns for some node of our source -> our files."""
    found: dict[str, set[str]] = {}
    for path, tree in TREES.items():
        for node in ast.walk(tree):
            for name in names_at(node):
                found.setdefault(name, set()).add(path.name)
    return found


def foreign_private_attributes() -> dict[str, set[str]]:
    """``x._name`` reads where the package never defines ``_name`` -> our files."""
    defined = names_defined_here()
    return _found_in_source(lambda node: [node.attr] if isinstance(node, ast.Attribute) and _is_private(node.attr)
                            and node.attr not in defined else [])


def _string_attribute(node: ast.AST) -> tuple[ast.expr, str] | None:
    """``getattr(x, "name", ...)`` and its kin -> (x, "name"); else None."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _ATTRIBUTE_BUILTINS \
            and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
        return node.args[0], node.args[1].value
    return None


def foreign_private_strings() -> dict[str, set[str]]:
    """``getattr(x, "_name")`` (and hasattr/setattr/delattr) where the package never defines ``_name``."""
    defined = names_defined_here()

    def names_at(node: ast.AST) -> list[str]:
        reached = _string_attribute(node)
        return [reached[1]] if reached and _is_private(reached[1]) and reached[1] not in defined else []

    return _found_in_source(names_at)


def attribute_chain(node: ast.AST) -> list[str]:
    """The attribute names of an expression from its root out: ``a.b().c[0].d`` -> [b, c, d]."""
    names: list[str] = []
    while True:
        reached = _string_attribute(node)
        if isinstance(node, ast.Attribute):
            names.append(node.attr)
            node = node.value
        elif reached:
            names.append(reached[1])
            node = reached[0]
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Subscript):
            node = node.value
        else:
            return names[::-1]


def names_read_past_internals() -> dict[str, set[str]]:
    """Each name read past an :data:`INTERNAL_ROOTS` attribute -> our files."""

    def names_at(node: ast.AST) -> list[str]:
        chain = attribute_chain(node)
        roots = [i for i, name in enumerate(chain) if name in INTERNAL_ROOTS]
        return chain[roots[0] + 1:] if roots else []

    return _found_in_source(names_at)


def names_used_here() -> set[str]:
    """Every attribute the package reads, writes, defines, passes by keyword or names in a string."""
    used: set[str] = set()
    for tree in TREES.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                used.add(node.attr)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                used.add(node.name)
            elif isinstance(node, ast.keyword) and node.arg:
                used.add(node.arg)
            elif (reached := _string_attribute(node)) is not None:
                used.add(reached[1])
    return used


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


def test_every_private_name_reached_through_a_string_is_listed():
    missing = {a: sorted(f) for a, f in foreign_private_strings().items() if a not in LISTED_ATTRS | STDLIB_PRIVATE}
    assert not missing, f"private upstream names in getattr/hasattr strings, not in compat.UPSTREAM: {missing}"


def test_every_name_read_past_an_upstream_internal_is_listed():
    missing = {a: sorted(f) for a, f in names_read_past_internals().items() if a not in LISTED_ATTRS}
    assert not missing, f"upstream internals read by attribute, not in compat.UPSTREAM: {missing}"


@pytest.mark.parametrize("entry", [e for e in UPSTREAM if "." in e.name], ids=lambda e: e.target)
def test_each_listed_attribute_is_still_used(entry):
    """A listed attribute nothing uses any more must leave the list (it would vouch for nothing)."""
    assert entry.name.split(".")[-1] in names_used_here(), f"{entry.target} is listed but not used in the package"


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
        # an instance attribute or field: set or declared in the class's (or a base's) source, or
        # set on another object by an upstream function (accelerate's ``module._hf_hook = hook``)
        assert i == len(rest) - 1 and (inspect.isclass(obj) or inspect.isfunction(obj)), f"{entry.target}: {part} not found"
        assert _sets_or_declares(obj, part), f"{entry.target}: {part} is not set by {obj.__name__} any more"


def _sets_or_declares(obj, name: str) -> bool:
    """``self.name`` / ``x.name = ...`` in the source, or ``name: type`` declared as a field."""
    if inspect.isclass(obj) and name in _private_names_of(obj):
        return True
    pattern = re.compile(rf"self\.{re.escape(name)}\b|\.{re.escape(name)}\s*=[^=]|^\s+{re.escape(name)}\s*:", re.M)
    for klass in obj.__mro__ if inspect.isclass(obj) else (obj,):
        try:
            if pattern.search(inspect.getsource(klass)):
                return True
        except (OSError, TypeError):  # object, builtins, C extensions
            continue
    return False


def test_the_scanner_finds_a_private_use(tmp_path):
    """The checks can fail: a private upstream import and attribute are reported."""
    probe = tmp_path / "probe.py"
    probe.write_text("from transformers.cache_utils import _private_thing\nx = object()._hidden_upstream_attr\n"
                     "y = getattr(x, '_hidden_by_string', None)\nz = x.llm_engine.new_internal.deeper()\n")
    TREES[probe] = ast.parse(probe.read_text())
    try:
        assert "transformers.cache_utils:_private_thing" in upstream_imports()
        assert "_hidden_upstream_attr" in foreign_private_attributes()
        assert "_hidden_by_string" in foreign_private_strings()
        assert {"new_internal", "deeper"} <= set(names_read_past_internals())
    finally:
        del TREES[probe]
