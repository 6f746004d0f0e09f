"""Constants and plain helpers of the slide-feature tests (their fixtures are in conftest.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SLIDES = REPO / "data" / "samples" / "slides"
PCAM = REPO / "data" / "samples" / "pcam"
MPP, TILE = 6.0, 48  # coarse: ~15 + ~60 tiles; 48 px tiles are resized to the encoder's 32 px


def copy_job(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def pcam_subset(dst: Path, split: str, per_class: dict[str, int]) -> Path:
    """A labelled copy of the first real PCam patches of `split`: {class: count}."""
    for cls, n in per_class.items():
        (dst / cls).mkdir(parents=True, exist_ok=True)
        for f in sorted((PCAM / split / cls).glob("*.jpg"))[:n]:
            shutil.copy(f, dst / cls / f.name)
    return dst
