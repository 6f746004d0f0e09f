"""Every format the tiler reads is viewable: a pyramidal TIFF and a plain PNG, both made from the real CMU pixels,
tiled by `gcmae tile`, served as DZI with their own size; the TIFF's MPP is shown, the PNG has none."""
from __future__ import annotations

import io

import numpy as np
import openslide
import pytest
from PIL import Image
from starlette.testclient import TestClient

from gcmae.serve.app import create_app
from gcmae.slide.batch import tile_slides
from tests.conftest import SAMPLES
from tests.slide.test_pyramid import write_pyramid_tiff

pytestmark = pytest.mark.slow


def test_a_tiff_pyramid_and_a_plain_png_are_served(tmp_path):
    with openslide.OpenSlide(str(SAMPLES / "slides" / "cmu-1-small-region.svs")) as slide:
        base = np.asarray(slide.read_region((0, 0), 0, (1024, 1280)).convert("RGB"))
    slides = tmp_path / "slides"
    slides.mkdir()
    write_pyramid_tiff(slides / "pyramid.tif", base, levels=3, mpp=0.5)
    Image.fromarray(base[:700, :600]).save(slides / "plain.png")
    job = tmp_path / "job"
    tile_slides(slides, job, tile_size=64, mpp=None, min_tissue=0.3, mask_size=256, progress=False)
    with TestClient(create_app(job), base_url="http://127.0.0.1") as c:
        listed = {s["id"]: s for s in c.get("/api/slides").json()["slides"]}
        assert listed["pyramid"]["mpp"] == pytest.approx(0.5) and listed["plain"]["mpp"] is None
        assert listed["pyramid"]["dimensions"] == [1024, 1280] and listed["plain"]["dimensions"] == [600, 700]
        for name, (w, h), truth in (("pyramid", (1024, 1280), base), ("plain", (600, 700), base[:700, :600])):
            assert f'Width="{w}" Height="{h}"' in c.get(f"/dzi/{name}.dzi").text
            deepest = int(np.ceil(np.log2(max(w, h))))
            tile = np.asarray(Image.open(io.BytesIO(c.get(f"/dzi/{name}_files/{deepest}/0_0.jpeg").content)))
            assert tile.shape == (255, 255, 3)  # 254 + 1 px overlap on the inside edges only
            assert np.abs(tile.astype(float) - truth[:255, :255]).mean() < 6, name
            assert c.get(f"/dzi/{name}_files/0/0_0.jpeg").status_code == 200  # the 1-px level
            assert c.get(f"/api/slides/{name}/tiles.json").json()["coords"]
