"""Every route of the viewer through Starlette's test client, on a job of the shipped slides made by the real
commands: the slide list, a slide's details and layers, DZI tiles, overlays, and the 404s of unknown slides,
missing layers and a job that is still being tiled."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import openslide
import pytest
from PIL import Image
from starlette.testclient import TestClient

from gcmae.serve.app import create_app
from gcmae.slide.coords import read_coords_h5
from tests.serve.conftest import SLIDE_NAMES

pytestmark = pytest.mark.slow  # the session job: tiling, extraction, a tile classifier and ABMIL (~10 s)
CMU, TCGA = SLIDE_NAMES


@pytest.fixture(scope="module")
def client(full_job: Path):
    with TestClient(create_app(full_job), base_url="http://127.0.0.1") as c:
        yield c


def test_slide_list_has_both_slides_with_status_tiles_and_prediction(client, full_job):
    job = client.get("/api/slides").json()
    assert job["job"] == full_job.name and [s["id"] for s in job["slides"]] == SLIDE_NAMES
    predictions = (full_job / "predictions" / "predictions.csv").read_text()
    for s in job["slides"]:
        assert s["status"] == ["tiled", "features", "heatmap", "diagnosis"], s
        assert s["num_tiles"] == len(read_coords_h5(full_job / s["id"] / "coords.h5"))
        assert s["thumbnail"] and s["overlays"] == ["heatmap-clf", "attention"]
        assert s["prediction"]["predicted"] in ("normal", "tumour")
        assert f"{s['id']},{s['prediction']['probabilities']['normal']:.6f}" in predictions


def test_slide_detail_gives_geometry_layers_colour_bars_and_top_tiles(client, full_job):
    d = client.get(f"/api/slides/{TCGA}").json()
    tiles = read_coords_h5(full_job / TCGA / "coords.h5")
    assert d["viewable"] and d["tissue"] and d["dimensions"] == list(tiles.dimensions) and d["mpp"] == 0.5
    assert d["grid"]["step"] == tiles.grid.step and d["layout"]["width"] == tiles.grid.n_cols * tiles.grid.step
    layers = {layer["id"]: layer for layer in d["layers"]}
    assert set(layers) == {"heatmap-clf", "attention"} and all(len(la["colours"]) == 11 for la in layers.values())
    att = np.loadtxt(full_job / "predictions" / "attention" / f"{TCGA}.csv", delimiter=",", skiprows=1)
    top = layers["attention"]["top"]
    assert len(top) == 10 and top[0]["score"] == pytest.approx(att[:, 2].max(), rel=1e-5)
    assert top[0]["relative"] == 1.0 and [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
    assert (top[0]["x"], top[0]["y"]) == tuple(att[att[:, 2].argmax(), :2].astype(int))
    assert layers["heatmap-clf"]["num_tiles"] == len(tiles)


def test_pages_static_files_thumbnail_tissue_and_tile_grid(client, full_job):
    for url in ("/", f"/slide/{CMU}"):
        r = client.get(url)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "openseadragon.min.js" in client.get(f"/slide/{CMU}").text
    for name in ("viewer.js", "index.js", "style.css", "openseadragon/openseadragon.min.js",
                 "openseadragon/LICENSE.txt", "openseadragon/images/zoomin_rest.png"):
        assert client.get(f"/static/{name}").status_code == 200, name
    thumb = client.get(f"/api/slides/{CMU}/thumbnail.png")
    assert thumb.content == (full_job / CMU / "thumbnail.png").read_bytes()
    assert client.get(f"/api/slides/{CMU}/tissue.geojson").json() == \
        json.loads((full_job / CMU / "tissue.geojson").read_text())
    grid = client.get(f"/api/slides/{CMU}/tiles.json").json()
    tiles = read_coords_h5(full_job / CMU / "coords.h5")
    assert grid["coords"] == tiles.coords.tolist() and grid["size"] == tiles.grid.extent


def test_dzi_descriptor_and_tiles_are_the_slide_pixels(client):
    xml = ElementTree.fromstring(client.get(f"/dzi/{TCGA}.dzi").text)
    size = xml.find("{http://schemas.microsoft.com/deepzoom/2008}Size").attrib
    slide = openslide.OpenSlide(str(Path(__file__).parents[2] / "data/samples/slides" / f"{TCGA}.svs"))
    assert (int(size["Width"]), int(size["Height"])) == slide.dimensions and xml.attrib["TileSize"] == "254"
    deepest = int(np.ceil(np.log2(max(slide.dimensions))))
    r = client.get(f"/dzi/{TCGA}_files/{deepest}/1_1.jpeg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    tile = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), dtype=np.float32)
    assert tile.shape == (256, 256, 3)  # 254 + 1 px of overlap on each side
    truth = np.asarray(slide.read_region((253, 253), 0, (256, 256)).convert("RGB"), dtype=np.float32)
    assert np.abs(tile - truth).mean() < 6  # JPEG at quality 85
    assert client.get(f"/dzi/{TCGA}_files/{deepest}/1_1.jpeg").content == r.content  # the cached bytes
    for bad in (f"{deepest + 1}/0_0", f"{deepest}/999_0", f"{deepest}/0_999", "-1/0_0", "x/0_0", f"{deepest}/a_b"):
        assert client.get(f"/dzi/{TCGA}_files/{bad}.jpeg").status_code == 404, bad


def test_score_overlays_paint_each_tile_cell_with_its_colour(client, full_job):
    d = client.get(f"/api/slides/{TCGA}").json()
    img = np.asarray(Image.open(io.BytesIO(client.get(f"/api/slides/{TCGA}/overlays/attention.png").content)))
    cell, step = d["layout"]["cell_px"], d["grid"]["step"]
    assert img.shape == (d["grid"]["n_rows"] * cell, d["grid"]["n_cols"] * cell, 4)
    tiles = read_coords_h5(full_job / TCGA / "coords.h5")
    painted = img[::cell, ::cell, 3] > 0
    expected = np.zeros_like(painted)
    expected[tiles.coords[:, 1] // step, tiles.coords[:, 0] // step] = True
    np.testing.assert_array_equal(painted, expected)
    top = d["layers"][1]["top"][0]
    assert tuple(img[top["y"] // step * cell, top["x"] // step * cell, :3]) == (252, 255, 164)  # inferno at 1.0
    assert client.get(f"/api/slides/{CMU}/overlays/heatmap-clf.png").status_code == 200


@pytest.mark.parametrize("url", [
    "/slide/nope", "/api/slides/nope", "/api/slides/nope/thumbnail.png", "/api/slides/nope/tissue.geojson",
    "/api/slides/nope/tiles.json", "/api/slides/nope/overlays/attention.png", "/dzi/nope.dzi",
    "/dzi/nope_files/0/0_0.jpeg", f"/api/slides/{CMU}/overlays/nope.png", f"/api/slides/{CMU}/overlays/.png",
    f"/api/slides/{CMU}.svs", "/api/slides/predictions", "/static/nope.js", "/favicon.ico", "/api"])
def test_unknown_slides_overlays_and_files_are_404(client, url):
    assert client.get(url).status_code == 404


def test_missing_overlays_a_running_job_and_failed_slides(full_job, tmp_path):
    job = tmp_path / "job"
    shutil.copytree(full_job / CMU, job / CMU)
    (job / CMU / "tissue.geojson").unlink()
    (job / CMU / "heatmap_clf.csv").unlink()
    (job / "later-slide").mkdir()  # being tiled: the lock is there, coords.h5 not yet
    (job / ".later-slide.lock").write_text("12345\n")
    (job / "failures.csv").write_text("path,reason\n/data/broken.svs,cannot open slide broken.svs: corrupt\n")
    with TestClient(create_app(job), base_url="http://127.0.0.1") as c:
        slides = {s["id"]: s for s in c.get("/api/slides").json()["slides"]}
        assert slides[CMU]["status"] == ["tiled", "features"] and slides[CMU]["overlays"] == []
        assert slides["later-slide"]["status"] == ["tiling"] and slides["later-slide"]["num_tiles"] is None
        assert slides["broken"]["status"] == ["failed"] and "corrupt" in slides["broken"]["reason"]
        d = c.get(f"/api/slides/{CMU}").json()
        assert d["layers"] == [] and d["tissue"] is False and d["prediction"] is None
        assert c.get(f"/api/slides/{CMU}/tissue.geojson").status_code == 404
        assert c.get(f"/api/slides/{CMU}/overlays/heatmap-clf.png").status_code == 404
        assert c.get("/slide/later-slide").status_code == 200  # the page says it is not tiled yet
        assert c.get("/api/slides/later-slide").json()["viewable"] is False
        for url in ("/dzi/later-slide.dzi", "/api/slides/later-slide/tiles.json", "/dzi/broken.dzi"):
            assert c.get(url).status_code == 404, url
        shutil.copytree(full_job / TCGA, job / "later-slide", dirs_exist_ok=True)  # the job goes on
        (job / ".later-slide.lock").unlink()
        assert c.get("/api/slides/later-slide").json()["status"] == ["tiled", "features", "heatmap"]
        assert c.get("/dzi/later-slide.dzi").status_code == 200


def test_an_unreadable_score_file_is_reported_not_fatal(full_job, tmp_path):
    job = tmp_path / "job"
    shutil.copytree(full_job / CMU, job / CMU)
    (job / CMU / "heatmap_clf.csv").write_text("x,y\n1,2\n")
    with TestClient(create_app(job), base_url="http://127.0.0.1") as c:
        layer = c.get(f"/api/slides/{CMU}").json()["layers"][0]
        assert "not a score file" in layer["error"]
        assert c.get(f"/api/slides/{CMU}/overlays/heatmap-clf.png").status_code == 404


def test_a_diagnose_output_folder_shows_its_prediction_attention_and_heatmap(full_job, tmp_path):
    out = tmp_path / "diag"
    shutil.copytree(full_job / CMU, out / CMU)
    (out / CMU / "heatmap_clf.csv").rename(out / "heatmap_tile_classifier.csv")
    shutil.copy(full_job / "predictions" / "attention" / f"{CMU}.csv", out / "attention.csv")
    (out / "diagnosis.json").write_text(json.dumps({"predicted": "tumour",
                                                    "probabilities": {"normal": 0.3, "tumour": 0.7}}))
    with TestClient(create_app(out), base_url="http://127.0.0.1") as c:
        d = c.get(f"/api/slides/{CMU}").json()
        assert d["status"] == ["tiled", "features", "heatmap", "diagnosis"]
        assert d["prediction"] == {"predicted": "tumour", "probabilities": {"normal": 0.3, "tumour": 0.7}}
        assert [la["id"] for la in d["layers"]] == ["heatmap-tile_classifier", "attention"]
        assert c.get(f"/api/slides/{CMU}/overlays/attention.png").status_code == 200


def test_missing_job_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="job folder not found"):
        create_app(tmp_path / "nope")


def test_other_host_names_are_refused(full_job):
    # a page that rebinds its own domain to 127.0.0.1 (DNS rebinding) sends its own name as the Host header
    app = create_app(full_job)
    with TestClient(app, base_url="http://evil.example") as c:
        assert c.get("/api/slides").status_code == 400
    for host in ("127.0.0.1", "localhost"):
        with TestClient(app, base_url=f"http://{host}:8000") as c:
            assert c.get("/api/slides").status_code == 200, host


def test_a_slide_that_cannot_be_read_and_bad_prediction_values_are_404s_not_errors(full_job, tmp_path, monkeypatch):
    from gcmae.serve.tiles import DeepZoomSource

    job = tmp_path / "job"
    shutil.copytree(full_job, job)
    (job / "predictions" / "predictions.csv").write_text(f"slide_id,prob_normal,prob_tumour,predicted\n"
                                                          f"{CMU},abc,0.5,tumour\n")

    def corrupt(self, path, *args):
        raise ValueError(f"cannot open slide {path.name}: Not a JPEG file")

    monkeypatch.setattr(DeepZoomSource, "dzi", corrupt)
    monkeypatch.setattr(DeepZoomSource, "tile", corrupt)
    with TestClient(create_app(job), base_url="http://127.0.0.1") as c:
        assert c.get(f"/api/slides/{CMU}").status_code == 200  # the bad row is skipped with a warning
        for url in (f"/dzi/{CMU}.dzi", f"/dzi/{CMU}_files/0/0_0.jpeg"):
            r = c.get(url)
            assert r.status_code == 404 and "Not a JPEG" in r.text, url
