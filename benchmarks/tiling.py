"""How fast does `gcmae tile` turn a slide into tissue tiles, next to the straightforward ways?

On one slide with one set of parameters (default: the shipped CMU slide, 224 px at 0.5 µm/px, >= 50 % tissue),
measured side by side in this run, interleaved round-robin so that machine noise hits every method alike:

  A. `gcmae tile` coordinates only (the default): thumbnail, tissue mask, grid, coords.h5, tissue.geojson,
     thumbnail/mask PNGs; no tile pixel is read;
  B. `gcmae tile --export-png`: the same plus every kept tile read, resized and written as PNG;
  C. a straightforward OpenSlide grid loop: `read_region` of every tile of the same grid (same level, size and
     resize), each tile kept when >= 50 % of its pixels have HSV saturation > 0.07 (the tissue floor used by
     gcmae's mask), nothing written;
  D. reading only the tiles that A kept (`gcmae.slide.tiling.read_tile` at the coords.h5 coordinates): what a
     later step (feature extraction) pays to get the pixels on demand;
  E. histolab's GridTiler (level 0, check_tissue, tissue_percent=50, PNGs written), if `import histolab` works
     here or in the interpreter given with `--histolab-python`; else "histolab not installed".

Reported per method: tiles produced, median seconds per slide, tiles/s (tiles produced / seconds), and the
speed ratio to A. A and B run `gcmae.slide.batch.tile_slides` in this process (the `gcmae tile` command adds
the interpreter start and imports, printed separately). This is a report, not a test: the exit code is 0.

    .venv/bin/python benchmarks/tiling.py                      # CMU slide, 3 rounds (~1 min on 2 cores)
    .venv/bin/python benchmarks/tiling.py --quick              # 1 round
    .venv/bin/python benchmarks/tiling.py --slide data/samples/slides/tcga-cr-7395-01a-01-ts1.svs --slide-mpp 0.25
    .venv/bin/python benchmarks/tiling.py --mosaic 4 --histolab-python /tmp/venv-histolab/bin/python
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path


from _machine import ROOT, SRC, device_name, run_report, table  # first: it puts src/ on sys.path

import numpy as np
import openslide

from gcmae.slide.batch import tile_slides
from gcmae.slide.coords import read_coords_h5
from gcmae.slide.reader import open_slide
from gcmae.slide.tiling import TilingSettings, plan_grid, read_tile

CMU = ROOT / "data" / "samples" / "slides" / "cmu-1-small-region.svs"
SAT_FLOOR = 0.07


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slide", type=Path, default=CMU)
    p.add_argument("--mosaic", type=int, default=0,
                   help="K > 1: benchmark on a K x K mosaic of the slide's real level-0 pixels (alternate copies "
                        "mirrored so that seams continue), written as a 3-level pyramidal TIFF with its MPP: "
                        "a whole-slide-sized input from the small sample slide")
    p.add_argument("--tile-size", type=int, default=224)
    p.add_argument("--mpp", type=float, default=0.5, help="target µm/px (0: level 0)")
    p.add_argument("--slide-mpp", type=float, default=None, help="for slides without MPP metadata")
    p.add_argument("--min-tissue", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=None, help="measured rounds (default 3, 1 with --quick)")
    p.add_argument("--histolab-python", default=None, help="a python with histolab installed (run in a subprocess)")
    p.add_argument("--quick", action="store_true", help="one round")
    p.add_argument("--device", default="cpu", help="ignored (tiling runs on the CPU); accepted for run_all.py")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.mpp = args.mpp or None
    return args


def mosaic_slide(src: Path, k: int, path: Path) -> Path:
    """A K x K mosaic of ``src``'s level 0 as a tiled pyramidal TIFF (levels 1, 4, 16) carrying its MPP."""
    import tifffile
    from PIL import Image

    with openslide.OpenSlide(str(src)) as slide:
        base = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
        mpp = float(slide.properties.get(openslide.PROPERTY_NAME_MPP_X, 0.5))
    rows = [np.concatenate([(b if j % 2 == 0 else b[:, ::-1]) for j in range(k)], axis=1)
            for b in (base if i % 2 == 0 else base[::-1] for i in range(k))]
    image = Image.fromarray(np.concatenate(rows, axis=0))
    with tifffile.TiffWriter(path, bigtiff=image.width * image.height * 3 > 2**31) as tif:
        for i, factor in enumerate((1, 4, 16)):
            level = image.reduce(factor) if factor > 1 else image
            res = 1e4 / (mpp * factor)
            tif.write(np.asarray(level), tile=(512, 512), compression="zlib", compressionargs={"level": 1},
                      photometric="rgb", subfiletype=int(i > 0), resolution=(res, res), resolutionunit="CENTIMETER")
    return path


def run_gcmae(args: argparse.Namespace, work: Path, export_png: bool) -> int:
    out = work / ("png" if export_png else "coords")
    shutil.rmtree(out, ignore_errors=True)
    settings = TilingSettings(tile_size=args.tile_size, mpp=args.mpp, min_tissue=args.min_tissue,
                              slide_mpp=args.slide_mpp, export_png=export_png)
    summary = tile_slides(args.slide, out, settings, progress=False)
    return summary.tiles_written


def run_grid_loop(args: argparse.Namespace) -> int:
    """Every grid tile read with OpenSlide and tested on its own pixels."""
    with open_slide(args.slide) as reader:
        grid = plan_grid(reader, args.tile_size, args.mpp, args.slide_mpp)
    kept = 0
    with openslide.OpenSlide(str(args.slide)) as slide:
        size = (grid.read_size, grid.read_size)
        for row in range(grid.n_rows):
            for col in range(grid.n_cols):
                tile = slide.read_region((col * grid.step, row * grid.step), grid.level, size).convert("RGB")
                if grid.read_size != grid.tile_size:
                    tile = tile.resize((grid.tile_size, grid.tile_size))
                rgb = np.asarray(tile, dtype=np.float32)
                cmax = rgb.max(axis=2)
                sat = np.divide(cmax - rgb.min(axis=2), cmax, out=np.zeros_like(cmax), where=cmax > 0)
                kept += int((sat > SAT_FLOOR).mean() >= args.min_tissue)
    return kept


def run_read_kept(args: argparse.Namespace, coords_h5: Path) -> int:
    tiles = read_coords_h5(coords_h5)
    with open_slide(args.slide) as reader:
        for x, y in tiles.coords:
            read_tile(reader, tiles.grid, int(x), int(y))
    return len(tiles)


HISTOLAB_SNIPPET = textwrap.dedent("""
    import inspect, sys, time
    from pathlib import Path
    import histolab
    from histolab.slide import Slide
    from histolab.tiler import GridTiler
    slide_path, out, size, min_tissue = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    # tissue_percent exists from histolab 0.3 on; older releases use their own fixed tissue threshold
    tissue = ({"tissue_percent": 100 * min_tissue}
              if "tissue_percent" in inspect.signature(GridTiler.__init__).parameters else {})
    t0 = time.perf_counter()
    slide = Slide(slide_path, processed_path=str(out))
    GridTiler(tile_size=(size, size), level=0, check_tissue=True, pixel_overlap=0, prefix="", suffix=".png",
              **tissue).extract(slide)
    dt = time.perf_counter() - t0
    print(histolab.__version__, "own" if not tissue else "given", len(list(out.rglob("*.png"))), dt)
""")


def run_histolab(args: argparse.Namespace, work: Path) -> tuple[str, int, float] | str:
    python = args.histolab_python
    if python is None:
        if importlib.util.find_spec("histolab") is None:
            return "histolab not installed"
        python = sys.executable
    out = work / "histolab"
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run([python, "-c", HISTOLAB_SNIPPET, str(args.slide), str(out), str(args.tile_size),
                           str(args.min_tissue)], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return f"histolab failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
    version, threshold, n, dt = proc.stdout.split()[-4:]
    label = f"E histolab {version} GridTiler (level 0, PNGs{'' if threshold == 'given' else ', its own tissue test'})"
    return label, int(n), float(dt)


def cli_start_seconds() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gcmae", "tile", "--help"], capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(SRC)}, check=False)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    print(f"gcmae tiling benchmark: torch {torch.__version__}, openslide {openslide.__library_version__}, "
          f"{device_name('cpu')}")
    work = Path(tempfile.mkdtemp(prefix="gcmae-bench-tiling-"))
    try:
        if args.mosaic > 1:
            t0 = time.perf_counter()
            args.slide = mosaic_slide(args.slide, args.mosaic, work / f"{args.slide.stem}-mosaic{args.mosaic}.tif")
            print(f"built {args.slide.name} ({args.mosaic} x {args.mosaic} mosaic of the real slide) in "
                  f"{time.perf_counter() - t0:.1f} s")
        with open_slide(args.slide) as reader:
            grid = plan_grid(reader, args.tile_size, args.mpp, args.slide_mpp)
            print(f"slide {args.slide.name}: {reader.dimensions[0]} x {reader.dimensions[1]} px, "
                  f"{reader.level_count} level(s), mpp {reader.mpp}; grid {grid.n_cols} x {grid.n_rows} = "
                  f"{grid.n_cols * grid.n_rows} tiles of {args.tile_size} px at {args.mpp or 'native'} µm/px "
                  f"(level {grid.level}, {grid.read_size} px read); min tissue {args.min_tissue:g}; "
                  f"{args.rounds} round(s)")
        methods: dict[str, Callable[[], int]] = {
            "A gcmae tile (coords only)": lambda: run_gcmae(args, work, export_png=False),
            "B gcmae tile --export-png": lambda: run_gcmae(args, work, export_png=True),
            "C OpenSlide grid loop (read every grid tile)": lambda: run_grid_loop(args),
            "D read the kept tiles on demand (read_tile)": lambda: run_read_kept(
                args, work / "coords" / args.slide.stem / "coords.h5"),
        }
        run_gcmae(args, work, export_png=False)  # warm-up: file cache, imports; also makes D's coords.h5
        times: dict[str, list[float]] = {k: [] for k in methods}
        counts: dict[str, int] = {}
        for r in range(args.rounds):
            order = list(methods)[r % len(methods):] + list(methods)[:r % len(methods)]  # rotate who goes first
            for name in order:
                t0 = time.perf_counter()
                counts[name] = methods[name]()
                times[name].append(time.perf_counter() - t0)
        histolab = run_histolab(args, work)
        base = statistics.median(times["A gcmae tile (coords only)"])
        base_rate = counts["A gcmae tile (coords only)"] / base
        rows = []
        for name in methods:
            t = statistics.median(times[name])
            rows.append([name, str(counts[name]), f"{t:.2f}", f"{counts[name] / t:.1f}",
                         f"{counts[name] / t / base_rate:.2f}"])
        if isinstance(histolab, tuple):
            label, n, t = histolab
            rows.append([label + " [1 run]", str(n), f"{t:.2f}", f"{n / t:.1f}", f"{n / t / base_rate:.2f}"])
        print(table(["method", "tiles", "s/slide (median)", "tiles/s", "speed vs A"], rows))
        if not isinstance(histolab, tuple):
            print(f"E histolab GridTiler: {histolab}")
        print(f"C keeps tiles by their own pixels (saturation > {SAT_FLOOR}), A/B by the thumbnail mask: the counts "
              f"differ. `gcmae tile` as a command also pays {cli_start_seconds():.1f} s of interpreter start "
              f"and imports (`gcmae tile --help`).")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    run_report(main)
