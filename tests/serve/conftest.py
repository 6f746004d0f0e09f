"""Fixtures of the viewer tests: a job of both shipped slides with every layer the viewer draws (tissue, tile
grid, a tile classifier's heatmap, ABMIL attention and slide predictions), made by the real commands with the
smallest settings (48-px tiles at 6 µm/px, a seeded ViT-Tiny/8 at 32 px, 2 MIL epochs); built once per session."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from gcmae.cli import main
from tests.slide import conftest as slide_fixtures
from tests.conftest import pcam_subset

# the slide tests' session fixtures, shared (a tiny checkpoint, both shipped slides tiled and embedded)
tiny_ckpt, slide_job, extracted_job = slide_fixtures.tiny_ckpt, slide_fixtures.slide_job, slide_fixtures.extracted_job

SLIDE_NAMES = ["cmu-1-small-region", "tcga-cr-7395-01a-01-ts1"]


@pytest.fixture(scope="session")
def full_job(tmp_path_factory: pytest.TempPathFactory, extracted_job, tiny_ckpt) -> Path:
    """The extracted job plus `heatmap_clf.csv` per slide and `predictions/` (mil predict: predictions.csv,
    attention/<slide>.csv) inside the job folder."""
    import shutil

    import torch

    base = tmp_path_factory.mktemp("serve_job")
    job = base / "job"
    shutil.copytree(extracted_job[0], job)
    train = pcam_subset(base / "pcam", "train", {"0_negative": 12, "1_metastatic": 12})
    clf, model = base / "clf", base / "mil"
    labels = base / "labels.csv"
    with open(labels, "w", newline="") as fh:
        csv.writer(fh).writerows([["slide_id", "label"], [SLIDE_NAMES[0], "normal"], [SLIDE_NAMES[1], "tumour"]])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        common = ["--device", "cpu"]
        assert main(["tile-classifier", "train", "--train-dir", str(train), "--checkpoint", str(tiny_ckpt),
                     "--out", str(clf), "--cache-dir", "", *common]) == 0
        assert main(["heatmap", str(job), "--classifier", str(clf)]) == 0
        assert main(["mil", "train", "--features", str(job), "--labels", str(labels), "--out", str(model),
                     "--epochs", "2", "--val-fraction", "0", *common]) == 0
        assert main(["mil", "predict", "--model", str(model), "--features", str(job), "--out",
                     str(job / "predictions"), *common]) == 0
    finally:
        torch.set_num_threads(threads)
    return job
