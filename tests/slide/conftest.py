"""Fixtures of the slide-feature tests: a tiny encoder checkpoint and a tiling job of the two real slides, built
once per session; tests that modify a job work on a copy (`copy_job`)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from gcmae.models.vit import create_encoder
from tests.slide.slide_helpers import MPP, SLIDES, TILE


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded timm ViT-Tiny/8 at 32 px state dict (what `load_weights` calls kind 'timm')."""
    path = tmp_path_factory.mktemp("ckpt") / "vit_tiny_p8_32.pth"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(create_encoder("vit_tiny", 32, 8).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def slide_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both shipped slides tiled at 6 µm/px into 48-px tiles (slide MPP 0.5 given: the TCGA slide has none)."""
    from gcmae.slide.batch import tile_slides

    base = tmp_path_factory.mktemp("slide_job")
    slides, root = base / "slides", base / "job"
    slides.mkdir()
    for s in SLIDES.glob("*.svs"):
        (slides / s.name).symlink_to(s)
    tile_slides(slides, root, tile_size=TILE, mpp=MPP, slide_mpp=0.5, mask_size=512, progress=False)
    return root


@pytest.fixture(scope="session")
def extracted_job(tmp_path_factory: pytest.TempPathFactory, slide_job: Path, tiny_ckpt: Path) -> tuple[Path, dict]:
    """(job with features_<tag>.h5 of the tiny checkpoint, cls pool, for both slides; the encoder record)."""
    from gcmae.encoders.loading import load_encoder
    from gcmae.slide.features import encoder_record, extract_job

    root = tmp_path_factory.mktemp("extracted") / "job"
    encoder = load_encoder(tiny_ckpt)
    record = encoder_record(encoder, tiny_ckpt, "cls")
    shutil.copytree(slide_job, root)
    extract_job(root, encoder, record, batch_size=16, num_workers=0, progress=False)
    return root, record


