"""The viewer in a real browser: headless Chromium (Debian's, driven by Playwright) opens the slide list and both
slide pages of a job of the shipped slides, waits for the deep-zoom canvas to draw, toggles the heatmap and
attention layers, flies to the most attended tile and saves screenshots. It fails on a blank canvas, a layer that
changes nothing, a failed request or a console error.

`make test` installs Chromium (apt-get) where it is missing; the test is skipped, saying why, only on a machine
without apt-get. GCMAE_SCREENSHOTS=DIR also copies the screenshots into DIR (how docs/figures/ is made)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.serve.conftest import SLIDE_NAMES
from tests.serve.live import live_server

pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")
# without these Chromium hangs or phones home on a closed network
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# share of sampled canvas pixels that are neither white-ish nor transparent, and the mean change of a layer
CANVAS_JS = """() => {
  const c = window.gcmae.viewer.drawer.canvas, ctx = c.getContext('2d');
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let drawn = 0, n = 0;
  for (let i = 0; i < d.length; i += 4 * 97) {
    n++;
    if (d[i + 3] > 0 && Math.min(d[i], d[i + 1], d[i + 2]) < 235) drawn++;
  }
  return { drawn: drawn / n, pixels: Array.from(d.filter((_, i) => i % (4 * 97) < 3)) };
}"""


def _chromium() -> Path:
    if not CHROMIUM.is_file():
        if shutil.which("apt-get") is None:
            pytest.skip(f"{CHROMIUM} is missing and this machine has no apt-get to install it (Debian's "
                        "'chromium' package); the browser test needs it")
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install -y chromium)")
    return CHROMIUM


def _mean_change(a: list[int], b: list[int]) -> float:
    return sum(abs(x - y) for x, y in zip(a, b)) / max(len(a), 1)


@pytest.fixture()
def browser_page(tmp_path):
    from playwright.sync_api import sync_playwright  # the `test` extra of pyproject.toml

    exe = _chromium()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=str(exe), args=CHROMIUM_ARGS,
                                                    headless=True, viewport={"width": 1280, "height": 800})
        ctx.set_default_timeout(60_000)
        page = ctx.new_page()
        log: dict[str, list] = {"errors": [], "failed": [], "tiles": []}
        page.on("console", lambda m: m.type == "error" and log["errors"].append(m.text))
        page.on("pageerror", lambda e: log["errors"].append(str(e)))
        page.on("requestfailed", lambda r: log["failed"].append(f"{r.url}: {r.failure}"))
        page.on("response", lambda r: r.status >= 400 and log["failed"].append(f"{r.url}: {r.status}"))
        page.on("response", lambda r: "/dzi/" in r.url and r.url.endswith(".jpeg") and log["tiles"].append(r.status))
        try:
            yield page, log
        finally:
            ctx.close()


def _shoot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000
    if os.environ.get("GCMAE_SCREENSHOTS"):
        Path(os.environ["GCMAE_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["GCMAE_SCREENSHOTS"]) / path.name)


def _toggle(page, box: str, layer: str) -> float:
    """Tick `box`, wait for `layer` to load and the canvas to settle; the mean change of the canvas pixels."""
    before = page.evaluate(CANVAS_JS)["pixels"]
    page.check(box)
    page.wait_for_function(f"document.body.dataset.layer_{layer} === 'loaded'")
    page.wait_for_timeout(700)  # the layer fades in over OpenSeadragon's blend time
    return _mean_change(before, page.evaluate(CANVAS_JS)["pixels"])


def test_the_viewer_draws_both_slides_with_their_layers(full_job, browser_page, tmp_path):
    page, log = browser_page
    with live_server(full_job) as base:
        page.goto(base + "/")
        page.wait_for_selector("tr.slide-row >> nth=1")
        rows = page.locator("tr.slide-row").all_inner_texts()
        assert [r.split("\t")[1].strip() for r in rows] == SLIDE_NAMES
        assert all("diagnosis" in r for r in rows)
        page.wait_for_load_state("networkidle")
        assert page.evaluate("Array.from(document.images).every((i) => i.complete && i.naturalWidth > 0)")
        _shoot(page, tmp_path, "serve_index")

        for name in SLIDE_NAMES:
            page.goto(f"{base}/slide/{name}")
            page.wait_for_function("document.body.dataset.ready === '1' "
                                   "&& Number(document.body.dataset.tilesLoaded) > 0")
            page.wait_for_load_state("networkidle")
            page.wait_for_timeout(500)
            canvas = page.evaluate(CANVAS_JS)
            assert canvas["drawn"] > 0.05, f"{name}: the slide canvas is blank ({canvas['drawn']:.3f} drawn)"
            assert page.evaluate("document.body.dataset.layer_tissue") == "loaded"
            assert page.locator("#tissue-overlay path").get_attribute("d").count("M") >= 1
            assert page.locator("#scalebar").is_visible() and "µm" in page.inner_text("#scalebar-label")
            assert _toggle(page, "#toggle-heatmap-clf", "heatmap_clf") > 3, f"{name}: heatmap changed nothing"
            assert page.locator(".colourbar").count() == 1
            assert _toggle(page, "#toggle-attention", "attention") > 1, f"{name}: attention changed nothing"
            assert page.locator(".colourbar").count() == 2
            page.uncheck("#toggle-heatmap-clf")
            page.check("#toggle-grid")
            page.wait_for_function("document.body.dataset.layer_grid === 'loaded'")
            assert page.locator("#top-list li").count() == min(10, len(page.evaluate(
                "window.gcmae.detail.layers[1].top")))
            zoom = page.evaluate("window.gcmae.viewer.viewport.getZoom()")
            page.click("#top-list li >> nth=0")
            page.wait_for_timeout(2000)
            assert page.evaluate("window.gcmae.viewer.viewport.getZoom()") > zoom  # flew in
            assert page.locator(".highlight").count() == 1
            page.wait_for_load_state("networkidle")
            _shoot(page, tmp_path, f"serve_{name}")
    assert not log["errors"], log["errors"]
    assert not log["failed"], log["failed"]
    assert log["tiles"] and set(log["tiles"]) == {200}, log["tiles"]
