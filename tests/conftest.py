"""Shared fixtures: paths to the real sample data shipped in data/samples."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"


@pytest.fixture(scope="session")
def samples() -> Path:
    assert SAMPLES.is_dir(), f"sample data missing: {SAMPLES}"
    return SAMPLES


@pytest.fixture()
def small_pcam(tmp_path: Path, samples: Path) -> Path:
    """A 32-image labelled copy of real PCam train patches (16 per class)."""
    root = tmp_path / "pcam_small"
    for cls in ("0_negative", "1_metastatic"):
        (root / cls).mkdir(parents=True)
        for f in sorted((samples / "pcam" / "train" / cls).glob("*.jpg"))[:16]:
            shutil.copy(f, root / cls / f.name)
    return root
