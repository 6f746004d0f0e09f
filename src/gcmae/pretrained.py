"""Encoders shipped inside the package, loadable by name with no network (`gcmae.from_pretrained(NAME)`).

Each is a `gcmae export` folder (model.safetensors, timm config.json, README.md model card) under
`gcmae/weights/NAME/`; its card records the data, recipe, seed and measured numbers.
"""
from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"


def available() -> list[str]:
    """Names of the shipped encoders."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / "model.safetensors").is_file())


def is_pretrained_name(name: str | Path) -> bool:
    """True for the name of a shipped encoder that is not also an existing path (a path always wins)."""
    return not Path(name).exists() and str(name) in available()


def resolve(name_or_path: str | Path) -> Path:
    """The folder of a shipped encoder given its name; any other input is returned as a path unchanged."""
    if is_pretrained_name(name_or_path):
        return WEIGHTS_DIR / str(name_or_path)
    return Path(name_or_path)
