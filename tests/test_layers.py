"""Imports run one way: the core (config, models, losses, data, io) never imports what is built on it; encoders/
and scoring/ sit under the rooms (train, evaluate, slide), and no room imports evaluate/ or slide/."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "gcmae"
ABOVE_CORE = {"encoders", "scoring", "train", "evaluate", "slide", "experiments", "viz", "cli", "demo"}
ROOMS = {"train", "evaluate", "slide", "experiments", "cli", "demo"}
# package -> sub-packages it must not import
FORBIDDEN = {
    "config": ABOVE_CORE | {"io", "models", "data"},
    "device": ABOVE_CORE | {"io", "models", "data"},
    "options": ABOVE_CORE | {"io", "models", "data"},
    "progress": ABOVE_CORE | {"io", "models", "data"},
    "losses": ABOVE_CORE | {"io", "models", "data"},
    "models": ABOVE_CORE | {"io", "data"},
    "data": ABOVE_CORE | {"models"},
    "io": ABOVE_CORE,
    "stain": ABOVE_CORE,
    "pretrained": ABOVE_CORE | {"io"},
    "viz": ROOMS | {"encoders", "scoring"},
    # the layer under the rooms: encoders and their features; kNN, the probe, metrics and reports
    "encoders": ROOMS | {"scoring", "viz"},
    "scoring": ROOMS | {"encoders"},
    # the rooms: none imports another (experiments and the commands compose them)
    "train": ROOMS - {"train"},
    "evaluate": ROOMS - {"evaluate", "train"},
    "slide": ROOMS - {"slide"},
    "experiments": {"cli", "demo"},
}


def _imported_subpackages(path: Path) -> set[str]:
    """gcmae sub-packages imported by a file, in every form: `import gcmae.x`, `from gcmae.x import y`,
    `from gcmae import x` and relative imports (`from ..x import y`)."""
    here = ["gcmae", *path.relative_to(PACKAGE).parent.parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [a.name.split(".") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (node.module or "").split(".") if node.level == 0 else \
                here[: len(here) - node.level + 1] + ([*node.module.split(".")] if node.module else [])
            modules = [base + [a.name] for a in node.names] if base == ["gcmae"] else [base]
        else:
            continue
        found.update(m[1] for m in modules if m[0] == "gcmae" and len(m) > 1)
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package):
    files = [PACKAGE / f"{package}.py"] if (PACKAGE / f"{package}.py").exists() else \
        sorted((PACKAGE / package).rglob("*.py"))
    assert files, package
    upward = {f"{f.relative_to(PACKAGE)} imports gcmae.{sub}" for f in files
              for sub in _imported_subpackages(f) & FORBIDDEN[package]}
    assert not upward, sorted(upward)
