"""The README's screenshot of `gcmae serve`: the demo's job in headless Chromium (Debian's, via Playwright).

    .venv/bin/gcmae demo --out runs/demo                      # the job, with heatmaps and attention
    .venv/bin/python examples/serve_screenshot.py [--job runs/demo/tiles] [--out docs/figures]
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

from gcmae.serve.app import create_app

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--job", default=str(ROOT / "runs/demo/tiles"))
    p.add_argument("--slide", default="tcga-cr-7395-01a-01-ts1")
    p.add_argument("--layer", default="attention", help="the score layer shown")
    p.add_argument("--out", default=str(ROOT / "docs/figures"))
    p.add_argument("--port", type=int, default=8765)
    args = p.parse_args()
    server = uvicorn.Server(uvicorn.Config(create_app(args.job), host="127.0.0.1", port=args.port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    out = Path(args.out) / f"serve_{args.slide}.jpg"
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path="/usr/bin/chromium", args=ARGS,
                                                    headless=True, viewport={"width": 1280, "height": 760})
        page = ctx.new_page()
        page.goto(f"http://127.0.0.1:{args.port}/slide/{args.slide}")
        page.wait_for_function("document.body.dataset.ready === '1'")
        page.check("#toggle-grid")
        page.check(f"#toggle-{args.layer}")
        key = "".join(c if c.isalnum() or c == "_" else "_" for c in args.layer)
        page.wait_for_function(f"document.body.dataset.layer_{key} === 'loaded'")
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out), type="jpeg", quality=88)
        ctx.close()
    server.should_exit = True
    print(out)


if __name__ == "__main__":
    main()
