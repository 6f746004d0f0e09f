"""Imports run one way: the core (config, models, losses, data, io) never imports the rooms built on it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "gcmae"
ABOVE_CORE = {"train", "evaluate", "slide", "experiments", "viz", "cli", "demo"}
# package -> sub-packages it must not import
FORBIDDEN = {
    "config": ABOVE_CORE | {"io", "models", "data"},
    "losses": ABOVE_CORE | {"io", "models", "data"},
    "models": ABOVE_CORE | {"io", "data"},
    "data": ABOVE_CORE | {"models"},
    "io": ABOVE_CORE,
    "stain": ABOVE_CORE,
    "pretrained": ABOVE_CORE | {"io"},
    "train": {"slide", "experiments", "cli", "demo"},
    "evaluate": {"slide", "experiments", "cli", "demo"},
}


def _imported_subpackages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "gcmae" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package):
    files = [PACKAGE / f"{package}.py"] if (PACKAGE / f"{package}.py").exists() else \
        sorted((PACKAGE / package).rglob("*.py"))
    assert files, package
    upward = {f"{f.relative_to(PACKAGE)} imports gcmae.{sub}" for f in files
              for sub in _imported_subpackages(f) & FORBIDDEN[package]}
    assert not upward, sorted(upward)
