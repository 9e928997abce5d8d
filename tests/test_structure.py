"""The package's shape holds its contracts: modules import on their own, no import cycles, the core
never imports ``benchmarks``, no module shadows the standard library, signal names are declared
once, and the README's Layout section is the real tree."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import vtr
from vtr.registry import get_spec, list_reducers
from vtr.signals import Signal

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"vtr": ROOT / "vtr", "vtr.adapters": ROOT / "adapters"}


def modules() -> dict[str, Path]:
    """Every module of the package, by import name (``adapters/`` installs as ``vtr.adapters``)."""
    found = {}
    for prefix, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    return found


def imported_names(path: Path, name: str) -> set[str]:
    """Every module ``path`` imports, at module level or inside a function, resolved to absolute names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {m for m in imported_names(path, name) if m in known and m != name} for name, path in known.items()}


def test_every_module_imports_on_its_own():
    """One interpreter; before each module, every vtr module is dropped from ``sys.modules`` (third-party
    packages stay loaded: only vtr's own import order can hide a cycle)."""
    names = sorted(modules())
    script = (
        "import importlib, json, sys, traceback\n"
        "import torch, transformers, PIL, numpy\n"
        f"names = {names!r}\nfailed = {{}}\n"
        "for name in names:\n"
        "    for m in [m for m in sys.modules if m == 'vtr' or m.startswith('vtr.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        failed[name] = traceback.format_exc(limit=3)\n"
        "print(json.dumps(failed))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    failed = json.loads(result.stdout.strip().splitlines()[-1])
    assert not failed, "\n".join(f"{k}:\n{v}" for k, v in failed.items())


def test_no_import_cycles():
    """Import edges between vtr modules, lazy (function-level) imports included, form no cycle."""
    graph = import_graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                # a package importing its own submodules, which import siblings, is not a cycle
                if not all(b.startswith(a + ".") or a.startswith(b + ".") for a, b in zip(cycle, cycle[1:])):
                    pytest.fail("import cycle: " + " -> ".join(cycle))
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_core_never_imports_benchmarks_or_tests():
    offenders = {name: sorted(m for m in imported_names(path, name) if m.split(".")[0] in {"benchmarks", "tests"})
                 for name, path in modules().items()}
    assert not {k: v for k, v in offenders.items() if v}


def test_no_module_shadows_the_standard_library():
    shadowing = sorted(n for n in modules() if n.rpartition(".")[2] in sys.stdlib_module_names)
    assert not shadowing


def test_reducers_read_declared_signals_and_never_name_them_as_strings():
    for name in list_reducers():
        spec = get_spec(name)
        reducer = spec.reducer_class(spec.config_class())
        assert all(isinstance(s, Signal) for s in reducer.signals_read()), name
    for path in (ROOT / "vtr" / "reducers").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "signal" and node.args:
                assert not isinstance(node.args[0], (ast.Constant, ast.JoinedStr)), f"{path.name}: signal name as a string"


def test_adapters_provide_what_they_serve():
    """Each family's Signals providers are exactly its declared ``provides``."""
    from vtr.adapters import ADAPTERS
    from vtr.testing import example_inputs, tiny_model

    for adapter_class in ADAPTERS:
        family = adapter_class.family
        model, processor = tiny_model(family)
        adapter = adapter_class(model)
        kind = "video" if family == "video_llava" else "image"
        inputs = dict(example_inputs(processor, family, kind))
        for encoded in adapter.encode(inputs):
            adapter.add_shared_signals(encoded, inputs)  # what the engine adds after encode (prompt embeddings)
            assert set(encoded.visual.signals.available) == {s.value for s in adapter_class.provides}, family


def test_patch_refuses_a_reducer_whose_signals_the_family_lacks():
    @vtr.register_reducer("_needs_anyres")
    class NeedsLayout(vtr.Reducer):
        reads = (Signal.ANYRES_LAYOUT,)

        def plan(self, visual):
            raise AssertionError("never called")

    from vtr.registry import unregister_reducer
    from vtr.testing import tiny_model

    try:
        model, _ = tiny_model("llava")
        with pytest.raises(ValueError, match="anyres_layout.*'llava' models do not provide"):
            vtr.patch(model, "_needs_anyres")
        assert not vtr.is_patched(model)
    finally:
        unregister_reducer("_needs_anyres")


def layout_paths() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    return [m.group(1) for line in block.splitlines() if (m := re.match(r"^\s*([\w./-]+/)\s", line + " "))]


def test_readme_layout_is_the_real_tree():
    listed = layout_paths()
    assert listed, "the README's Layout section lists no folders"
    for folder in listed:
        assert (ROOT / folder).is_dir(), f"README lists {folder}, which does not exist"
    packages = {str(p.parent.relative_to(ROOT)) + "/" for p in (ROOT / "vtr").rglob("__init__.py")}
    packages |= {str(p.parent.relative_to(ROOT)) + "/" for p in (ROOT / "adapters").rglob("__init__.py")}
    missing = sorted(p for p in packages if p not in listed)
    assert not missing, f"packages not in the README's Layout section: {missing}"
