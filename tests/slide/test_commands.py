"""The slide commands' settings: `--checkpoint random` without `--img-size` takes the data's size (the job's tile
size for extract, the first image of --train for tile-classifier), rounded to a multiple of the patch size."""
from __future__ import annotations

import logging

import pytest

from gcmae.cli import main
from gcmae.slide.bags import read_attrs
from tests.slide.slide_helpers import TILE, copy_job

SLIDE = "cmu-1-small-region"
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # tiles the shipped slides


def test_extract_random_init_takes_the_jobs_tile_size(slide_job, tmp_path, caplog):
    job = copy_job(slide_job, tmp_path / "job")
    with caplog.at_level(logging.INFO, logger="gcmae"):
        assert main(["extract", str(job), "--checkpoint", "random", "--encoder", "vit_tiny", "--patch-size", "8",
                     "--num-workers", "0", "--slide", SLIDE, "--device", "cpu"]) == 0
    (feats,) = (job / SLIDE).glob("features_random-*.h5")
    assert read_attrs(feats)["img_size"] == TILE == 48  # a multiple of 8 already
    assert any(f"without --img-size: {TILE} px, from the tiles of" in r.getMessage() for r in caplog.records)
