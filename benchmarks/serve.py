"""How fast does `gcmae serve` hand out deep-zoom tiles of a real slide?

A job of one shipped slide (default: the TCGA slide, 4443 x 3567 px, 2 levels) is tiled coordinates-only, then
`gcmae serve` runs in its own process (as a user starts it) and HTTP clients fetch every DZI tile of the deepest
level (the slide's full resolution, where panning happens) over keep-alive connections:

  - cold: a fresh server, every tile read from the slide with OpenSlide and JPEG-encoded once;
  - warm: the same tiles again from the server's in-memory LRU cache;

each with 1 client and with 8 concurrent clients (a fresh server for each cold run). Reported per run: tiles,
tiles/s, median and 95th percentile latency per tile in ms. The goal is a warm median under 50 ms. This is a
report, not a test: the exit code is 0.

    .venv/bin/python benchmarks/serve.py            # every deepest-level tile (270 for TCGA), ~20 s on 2 cores
    .venv/bin/python benchmarks/serve.py --quick    # the first 64 tiles
    .venv/bin/python benchmarks/serve.py --slide data/samples/slides/cmu-1-small-region.svs
"""
from __future__ import annotations

import argparse
import http.client
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _machine import ROOT, SRC, device_name, loadavg, run_report, table  # first: it puts src/ on sys.path

import openslide

from gcmae.slide.batch import tile_slides

TCGA = ROOT / "data" / "samples" / "slides" / "tcga-cr-7395-01a-01-ts1.svs"
TILE = 254  # gcmae.serve.tiles.TILE_SIZE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slide", type=Path, default=TCGA)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    p.add_argument("--quick", action="store_true", help="only the first 64 tiles")
    return p.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`gcmae serve JOB` in a child process on a free port."""

    def __init__(self, job: Path) -> None:
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen([sys.executable, "-m", "gcmae", "serve", str(job), "--port", str(self.port)],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gcmae serve did not start: {self.proc.stderr.read().decode()[-2000:]}")
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def fetch_all(port: int, paths: list[str], clients: int) -> tuple[float, list[float]]:
    """(wall seconds, per-tile latencies in s) of `clients` threads sharing `paths`, one keep-alive connection
    each; every response must be a 200 JPEG."""
    latencies: list[float] = []
    lock, queue = threading.Lock(), list(reversed(paths))
    errors: list[str] = []

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                if not queue:
                    break
                path = queue.pop()
            t0 = time.perf_counter()
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                if r.status != 200 or body[:2] != b"\xff\xd8":
                    errors.append(f"{path}: {r.status}")
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} failed tile requests, e.g. {errors[0]}")
    return time.perf_counter() - t0, latencies


def row(mode: str, clients: int, wall: float, lat: list[float]) -> list[str]:
    ms = sorted(x * 1000 for x in lat)
    p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
    return [mode, str(clients), str(len(ms)), f"{len(ms) / wall:.0f}", f"{statistics.median(ms):.1f}", f"{p95:.1f}"]


def main() -> None:
    args = parse_args()
    print(f"gcmae serve DZI tiles: {args.slide.name}; {device_name('cpu')}; load {loadavg()}")
    with openslide.OpenSlide(str(args.slide)) as slide:
        w, h = slide.dimensions
    deepest = math.ceil(math.log2(max(w, h)))
    cols, rows = math.ceil(w / TILE), math.ceil(h / TILE)
    name = args.slide.stem
    paths = [f"/dzi/{name}_files/{deepest}/{c}_{r}.jpeg" for r in range(rows) for c in range(cols)]
    if args.quick:
        paths = paths[:64]
    print(f"slide {w} x {h} px; deepest DZI level {deepest}: {cols} x {rows} tiles of {TILE} px (+1 px overlap); "
          f"fetching {len(paths)}")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        tile_slides(args.slide, Path(tmp) / "job", tile_size=224, mpp=None, slide_mpp=0.5, progress=False)
        results = []
        for clients in args.clients:
            server = Server(Path(tmp) / "job")
            try:
                results.append(row("cold", clients, *fetch_all(server.port, paths, clients)))
                results.append(row("warm", clients, *fetch_all(server.port, paths, clients)))
            finally:
                server.stop()
    print(table(["cache", "clients", "tiles", "tiles/s", "median ms", "p95 ms"], results))
    warm = [float(r[4]) for r in results if r[0] == "warm"]
    print(f"goal: warm median < 50 ms per deepest-level tile: {'met' if max(warm) < 50 else 'NOT met'} "
          f"(worst warm median {max(warm):.1f} ms)")


if __name__ == "__main__":
    run_report(main)
