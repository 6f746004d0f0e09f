"""Constants and plain helpers of the slide-feature tests (their fixtures are in conftest.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SLIDES = REPO / "data" / "samples" / "slides"
MPP, TILE = 6.0, 48  # coarse: ~15 + ~60 tiles; 48 px tiles are resized to the encoder's 32 px


def copy_job(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
