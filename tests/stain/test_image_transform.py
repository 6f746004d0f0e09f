"""StainTransform (a stain normaliser as a PIL dataset transform) on real tiles: the stain vectors move to the
target's (measured independently, NumPy Macenko), background comes back untouched, the size and mode are kept."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gcmae.stain import DEFAULT_TARGET, StainNormalizer
from gcmae.stain.image_transform import StainTransform
from gcmae.stain.stats import angle_deg, od_stain_vectors

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"
pytestmark = pytest.mark.usefixtures("one_thread")


def _he_angle(rgb: np.ndarray, target: np.ndarray) -> float:
    he, he_t = od_stain_vectors(rgb), od_stain_vectors(target)
    return (angle_deg(he[0], he_t[0]) + angle_deg(he[1], he_t[1])) / 2


def test_a_pil_tile_is_normalised_toward_the_target_and_background_passes_through():
    transform = StainTransform(StainNormalizer.fit(None, "macenko"))
    with Image.open(DEFAULT_TARGET) as im:
        target = np.asarray(im.convert("RGB")).copy()
    tiles = sorted((SAMPLES / "pcam" / "valid").glob("*/*.jpg"))[:3]  # another lab than the CRC target
    for path in tiles:
        with Image.open(path) as im:
            image = im.convert("RGB")
        out = transform(image)
        assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == image.size
        before, after = np.asarray(image), np.asarray(out)
        assert np.abs(after.astype(int) - before.astype(int)).mean() > 2
        assert _he_angle(after, target) < 0.5 * _he_angle(before, target), path.name

    white = Image.fromarray(np.full((96, 96, 3), 245, np.uint8))
    assert transform(white) is white  # no stain estimate: unchanged, as in every normalised pipeline here
    grey = transform(white.convert("L"))  # other modes come out RGB whether normalised or not (batches collate)
    assert grey.mode == "RGB" and np.array_equal(np.asarray(grey), np.asarray(white))
    with Image.open(tiles[0]) as im:
        rgba = im.convert("RGBA")
    assert transform(rgba).mode == "RGB"
