"""The viewer serves only files inside the job folder and the slides its coords.h5 files record: path traversal in
every spelling a client can send (raw `..`, encoded, double-encoded, absolute, backslashes), symlinks out of the
folder and directory listings all get 404 from a real uvicorn server, and serving writes nothing."""
from __future__ import annotations

import http.client
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from starlette.testclient import TestClient

from gcmae.serve.app import create_app
from tests.serve.conftest import SLIDE_NAMES
from tests.serve.live import live_server

pytestmark = pytest.mark.slow  # the session job (~10 s) and a live server
CMU, TCGA = SLIDE_NAMES
SECRET = "top secret, outside the job"


@pytest.fixture(scope="module")
def job(full_job: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the job with traps: a secret file beside it, symlinks from inside the job to outside, a slide
    folder that is a symlink to a folder outside."""
    base = tmp_path_factory.mktemp("traps")
    root = base / "job"
    shutil.copytree(full_job, root, symlinks=True)
    (base / "secret.txt").write_text(SECRET)
    outside = base / "outside-slide"
    shutil.copytree(full_job / CMU, outside)
    (root / "linked-slide").symlink_to(outside, target_is_directory=True)
    (root / TCGA / "thumbnail.png").unlink()
    (root / TCGA / "thumbnail.png").symlink_to(base / "secret.txt")
    (root / TCGA / "tissue.geojson").unlink()
    (root / TCGA / "tissue.geojson").symlink_to(base / "secret.txt")
    (root / TCGA / "heatmap_clf.csv").unlink()
    (root / TCGA / "heatmap_clf.csv").symlink_to(outside / "heatmap_clf.csv")  # a real score file, outside
    return root


def raw_get(base: str, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written (no normalisation of `..` or percent-escapes by the client)."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=False, skip_accept_encoding=True)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


TRAVERSALS = [
    "/static/../pyproject.toml", "/static/../../../../../../etc/passwd", "/static/%2e%2e/app.py",
    "/static/%2E%2E/%2E%2E/job.py", "/static/..%2fapp.py", "/static/..%2Fapp.py", "/static/%2e%2e%2fapp.py",
    "/static/%252e%252e/app.py", "/static/..%5capp.py", "/static/..\\app.py", "/static//etc/passwd",
    "/static/%2Fetc%2Fpasswd", "/static/%2fetc/passwd", "/static/./viewer.js/../../app.py",
    "/static/openseadragon/../../app.py", "/static/openseadragon/%2e%2e/%2e%2e/app.py",
    "/api/slides/..", "/api/slides/%2e%2e", "/api/slides/../secret.txt", "/api/slides/..%2f..%2fsecret.txt",
    "/api/slides/%2e%2e%2f%2e%2e/thumbnail.png", "/api/slides/..%2Fsecret.txt/thumbnail.png",
    f"/api/slides/{CMU}/..%2f..%2fsecret.txt", f"/api/slides/{CMU}/%2e%2e/%2e%2e/secret.txt",
    f"/api/slides/{CMU}/overlays/..%2f..%2fsecret.png", f"/api/slides/{CMU}/overlays/%2e%2e%2fheatmap_clf.png",
    "/dzi/..%2f..%2fsecret.dzi", "/dzi/%2e%2e.dzi", f"/dzi/{CMU}_files/../../secret.txt",
    "/dzi/%2Fetc%2Fpasswd.dzi", "/dzi/%2fetc%2fpasswd_files/0/0_0.jpeg", "/slide/..%2f..%2fsecret.txt",
    "/slide/%2e%2e", "/../secret.txt", "/%2e%2e/secret.txt", "/secret.txt", "/coords.h5",
    f"/{CMU}/thumbnail.png", f"/{CMU}/coords.h5", "/failures.csv", "/predictions/predictions.csv",
    "/dzi/%00.dzi", f"/dzi/{CMU}%00.dzi", "/api/slides/%00", "/static/viewer.js%00", "/dzi/.dzi",
    "/dzi/._files/0/0_0.jpeg",
    f"/dzi/{CMU}%2f..%2f{TCGA}.dzi", f"/dzi/{CMU}%5c..%5c{TCGA}.dzi",
]
LISTINGS = ["/static", "/static/", "/static/openseadragon", "/static/openseadragon/",
            "/static/openseadragon/images/", "/api/slides/", f"/api/slides/{CMU}/", f"/api/slides/{CMU}/overlays/",
            "/dzi/", f"/dzi/{CMU}_files/", f"/dzi/{CMU}_files/0/", "/slide/"]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(Path(dirpath) / name)
            out[str(Path(dirpath, name).relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def test_traversal_listings_and_symlinks_out_are_404_on_a_real_server(job):
    before = snapshot(job.parent)
    with live_server(job) as base:
        assert raw_get(base, "/static/viewer.js")[0] == 200 and raw_get(base, f"/dzi/{CMU}.dzi")[0] == 200
        for path in TRAVERSALS + LISTINGS:
            status, body = raw_get(base, path)
            assert status in (404, 400), (path, status)  # 400: uvicorn refuses some malformed targets itself
            assert SECRET.encode() not in body and b"<Image" not in body, path
        # symlinks from inside the job to files outside it
        assert raw_get(base, f"/api/slides/{TCGA}/thumbnail.png")[0] == 404
        assert raw_get(base, f"/api/slides/{TCGA}/tissue.geojson")[0] == 404
        assert raw_get(base, f"/api/slides/{TCGA}/overlays/heatmap-clf.png")[0] == 404
        # a slide folder that is a symlink out of the job is not a slide of the job
        for path in ("/slide/linked-slide", "/api/slides/linked-slide", "/dzi/linked-slide.dzi",
                     "/api/slides/linked-slide/thumbnail.png"):
            assert raw_get(base, path)[0] == 404, path
        assert raw_get(base, "/api/slides")[1].count(b'"id"') == 2
        # the slides themselves only through the DZI routes, by slide id
        assert raw_get(base, f"/dzi/{TCGA}_files/0/0_0.jpeg")[0] == 200
    assert snapshot(job.parent) == before  # nothing written, nothing touched


def test_absolute_urls_and_odd_hosts_do_not_reach_files(job):
    with TestClient(create_app(job), base_url="http://127.0.0.1") as c:
        for path in ("/static//work/main/pyproject.toml", f"/static/{Path(__file__).resolve()}",
                     f"/api/slides/{job / CMU}/thumbnail.png", f"/dzi/{job / CMU}.dzi"):
            assert c.get(path).status_code == 404, path
        assert [o["id"] for o in c.get(f"/api/slides/{TCGA}").json()["layers"]] == ["attention"]
