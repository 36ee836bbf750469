"""Imports point down: the package's import graph (read with `ast`, function-level and
TYPE_CHECKING imports included) has no cycle, and each module imports only its own layer or
lower ones (see ARCHITECTURE.md):

    errors -> generation_params -> model_files -> model_info -> tokenizer -> backends (base,
    onnx_format; torch, onnx; registry) -> loader -> engines (session, decoding, scoring, ...)
    -> front ends
"""

from __future__ import annotations

import ast
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gpt2cli"

# Lowest first. A module may import its own layer (acyclically) and those below it. Modules
# listed nowhere are engines: above the loader, below the front ends.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("errors", ("gpt2cli", "gpt2cli.errors")),
    ("support", ("gpt2cli.inputs", "gpt2cli.outputs")),
    ("parameter table", ("gpt2cli.generation_params",)),
    ("model files", ("gpt2cli.model_files",)),
    ("model info", ("gpt2cli.model_info",)),
    ("tokenizer", ("gpt2cli.tokenizer",)),
    ("backend interface", ("gpt2cli.backends", "gpt2cli.backends.base")),
    ("backend formats", ("gpt2cli.backends.onnx_format",)),
    ("backends", ("gpt2cli.backends.*",)),
    ("backend registry", ("gpt2cli.backends.registry",)),
    ("loader", ("gpt2cli.loader",)),
    ("engines", ()),
    (
        "front ends",
        (
            "gpt2cli.options",
            "gpt2cli.commands",
            "gpt2cli.commands.*",
            "gpt2cli.cli",
            "gpt2cli.__main__",
            "gpt2cli.server",
            "gpt2cli.server.*",
            "gpt2cli.batch",
            "gpt2cli.batch.*",
        ),
    ),
]
ENGINES = next(i for i, (name, _) in enumerate(LAYERS) if name == "engines")


def module_names() -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its own name)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from a import b` imports a, and a.b when b is a module.
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            # The module itself, else its nearest package in the package.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imported(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> int:
    """The index in LAYERS of `module`: an exact name first, then a wildcard."""
    for exact in (True, False):
        for index, (_, patterns) in enumerate(LAYERS):
            for pattern in patterns:
                wildcard = pattern.endswith("*") and fnmatch(module, pattern)
                if module == pattern or (not exact and wildcard):
                    return index
    return ENGINES


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
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
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    modules = {
        name: tmp_path
        for name in (
            "gpt2cli",
            "gpt2cli.a",
            "gpt2cli.b",
            "gpt2cli.c",
            "gpt2cli.d",
            "gpt2cli.sub",
            "gpt2cli.sub.e",
        )
    }
    source = tmp_path / "m.py"
    source.write_text(
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "import gpt2cli.a\n"
        "from gpt2cli import b\n"
        "if TYPE_CHECKING:\n"
        "    from gpt2cli.c import Thing\n"
        "def f():\n"
        "    from gpt2cli.d import g\n"
        "    from .sub.e import h\n"
        "import numpy\n"
    )
    assert imported("gpt2cli.m", source, modules) == {
        "gpt2cli",
        "gpt2cli.a",
        "gpt2cli.b",
        "gpt2cli.c",
        "gpt2cli.d",
        "gpt2cli.sub.e",
    }
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles between gpt2cli modules: " + "; ".join(
        " <-> ".join(c) for c in found
    )


def test_imports_point_down() -> None:
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "imports that point up:\n" + "\n".join(upward)


@pytest.mark.parametrize(
    ("prefix", "forbidden"),
    [
        (
            "gpt2cli.backends",
            (
                "gpt2cli.loader",
                "gpt2cli.session",
                "gpt2cli.scheduler",
                "gpt2cli.commands",
                "gpt2cli.cli",
                "gpt2cli.options",
            ),
        ),
        ("gpt2cli.model_info", ("gpt2cli.tokenizer", "gpt2cli.backends", "gpt2cli.loader")),
        ("gpt2cli.tokenizer", ("gpt2cli.model_info", "gpt2cli.backends", "gpt2cli.loader")),
        (
            "gpt2cli.loader",
            (
                "gpt2cli.session",
                "gpt2cli.scheduler",
                "gpt2cli.decoding",
                "gpt2cli.commands",
                "gpt2cli.cli",
                "gpt2cli.options",
            ),
        ),
        ("gpt2cli.batch", ("gpt2cli.commands", "gpt2cli.cli", "gpt2cli.server")),
    ],
)
def test_main_layers(prefix: str, forbidden: tuple[str, ...]) -> None:
    def within(module: str, prefixes: tuple[str, ...]) -> bool:
        return any(module == p or module.startswith(p + ".") for p in prefixes)

    bad = [
        f"{module} imports {target}"
        for module, targets in sorted(import_graph().items())
        if within(module, (prefix,))
        for target in sorted(targets)
        if within(target, forbidden)
    ]
    assert not bad, "\n".join(bad)


def test_model_files_import_only_errors_and_the_parameter_table() -> None:
    assert import_graph()["gpt2cli.model_files"] <= {"gpt2cli.errors", "gpt2cli.generation_params"}
    assert import_graph()["gpt2cli.generation_params"] <= {"gpt2cli.errors"}


def test_the_registry_and_model_files_load_light() -> None:
    """The --backend choices come from the registry at CLI start: no numpy, torch or
    onnxruntime to import them."""
    code = (
        "import sys\n"
        "import gpt2cli.backends.registry, gpt2cli.model_info, gpt2cli.options\n"
        "heavy = {'numpy', 'torch', 'transformers', 'onnxruntime', 'optimum', 'huggingface_hub'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
