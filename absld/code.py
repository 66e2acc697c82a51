"""The code a stage runs: the import closure of its command, read statically, and its digest.

A stage's DVC deps are this closure (tests/test_dvc_deps.py holds dvc.yaml to it), and its resume
fingerprint hashes the same files, so an edit reruns, and stops the resumption of, exactly the
stages whose code it touches: an analysis-only edit leaves a killed 300-epoch training resumable.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
"""The directory holding the ``absld`` and ``pipeline`` packages."""

PACKAGES = ("absld", "pipeline")

NO_RESULT_MODULES = {
    "absld/__init__.py": "the package's version string",
    "pipeline/__init__.py": "empty",
    "absld/errors.py": "the UserError base: how a failure is printed",
    "absld/tracking.py": "W&B runs only; no DVC output depends on it",
}
"""Modules every stage imports that cannot change an output: not deps, so editing them reruns nothing."""


def module_file(name: str, root: Path = PROJECT) -> Path | None:
    """The file of module ``name`` (``absld.train.loop``) under ``root``, or None."""
    path = root / Path(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def imported_modules(path: Path, root: Path = PROJECT) -> set[str]:
    """The project modules a file imports (anywhere in it, lazy imports included)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    package = parts[:-1]  # the package a relative import starts from (for __init__ too)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # submodules imported by name
    return {m for m in found if m.split(".")[0] in PACKAGES}


def closure(module: str, root: Path = PROJECT) -> set[str]:
    """Project files (relative paths) imported, directly or not, by ``module``, with the packages'
    ``__init__.py`` they sit in."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = module_file(name, root)
        if path is None or path.relative_to(root).as_posix() in seen:
            continue
        seen.add(path.relative_to(root).as_posix())
        todo += [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        todo += sorted(imported_modules(path, root))
    return seen


def stage_files(command: str, root: Path = PROJECT) -> list[str]:
    """The files that can change the outputs of stage command ``command`` (``pipeline.<command>``):
    its closure without :data:`NO_RESULT_MODULES`, sorted."""
    return sorted(f for f in closure(f"pipeline.{command}", root) if f not in NO_RESULT_MODULES)


@functools.cache
def stage_digest(command: str) -> str:
    """sha256 over the paths and bytes of :func:`stage_files`: the code that made a resumable state."""
    digest = hashlib.sha256()
    for name in stage_files(command):
        digest.update(f"{name}\0".encode())
        digest.update((PROJECT / name).read_bytes())
    return digest.hexdigest()
