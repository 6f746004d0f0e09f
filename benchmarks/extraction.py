"""Does reading tiles from the slide keep the encoder busy?

Prints, side by side in one run, tiles/s of `gcmae extract`'s path (TileDataset over real slide coordinates ->
torch DataLoader with 0, 1, 2, ... worker processes -> frozen encoder) against the bare encoder on an in-memory
tensor batch of the same size, plus the reading alone (DataLoader without the encoder).

Tiles: cells of the 224-px grid at 0.5 µm/px of both shipped slides (tissue or not; the TCGA slide has no
MPP metadata and is taken as 0.25 µm/px; on a CPU the first 32), each read once per configuration and round
with fresh slide handles (cold OpenSlide caches). Configurations run interleaved for several rounds (the machine
may be shared) and the medians are reported. `--repeat R` cycles the coordinates R times for devices that need more tiles to time; later
passes then hit OpenSlide's per-handle tile cache, so reading is faster than on a real, larger slide.

Goal printed next to the numbers: with 2 workers the reader reaches >= 90 % of the bare encoder's rate.

This is a report, not a test: the exit code is 0 whatever happens.

    .venv/bin/python benchmarks/extraction.py                 # CPU: ViT-S/16 at 224, batch 16, < 2 min on 2 cores
    .venv/bin/python benchmarks/extraction.py --quick         # smoke check: ViT-Tiny, 48 tiles
    .venv/bin/python benchmarks/extraction.py --device cuda   # GPU: bf16, batch 128, workers 0,2,4,8,12, --repeat 20
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import traceback
from typing import Any


from _machine import ROOT, benchmark_device, device_name, loadavg, run_report  # first: it puts src/ on sys.path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Subset


GOAL_PCT = 90.0
SLIDES = ((ROOT / "data/samples/slides/cmu-1-small-region.svs", None),
          (ROOT / "data/samples/slides/tcga-cr-7395-01a-01-ts1.svs", 0.25))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--encoder", default=None, help="vit_tiny/small/base (default vit_small; --quick vit_tiny)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=None, help="default 16 cpu, 128 cuda")
    p.add_argument("--workers", default=None, help="comma list (default 0,1,2 cpu; 0,2,4,8,12 cuda)")
    p.add_argument("--repeat", type=int, default=None, help="pass over the coordinates R times (default 1 cpu, 20 "
                                                             "cuda)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="default fp32 cpu, bf16 cuda")
    p.add_argument("--max-tiles", type=int, default=None, help="use at most this many tiles (per pass)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in the main process")
    p.add_argument("--rounds", type=int, default=None, help="interleaved repetitions (default 3; --quick 1)")
    p.add_argument("--quick", action="store_true", help="smoke check in < ~30 s")
    a = p.parse_args(argv)
    cuda = a.device == "cuda"
    a.encoder = a.encoder or ("vit_tiny" if a.quick else "vit_small")
    a.batch_size = a.batch_size or (128 if cuda else 16)
    a.workers = [int(w) for w in (a.workers or ("0,2,4,8,12" if cuda else "0,1,2")).split(",")]
    a.repeat = a.repeat or (20 if cuda else 1)
    a.precision = a.precision or ("bf16" if cuda else "fp32")
    a.rounds = a.rounds or (1 if a.quick else 3)
    if a.max_tiles is None:
        a.max_tiles = 48 if a.quick else (None if cuda else 32)
    return a


def slide_dataset(args: argparse.Namespace, encoder) -> ConcatDataset:
    """Every grid cell of both slides at 0.5 µm/px, as TileDatasets (what gcmae extract reads), cycled R times."""
    from gcmae.slide.features import TileDataset
    from gcmae.slide.reader import open_slide
    from gcmae.slide.tiling import plan_grid

    parts = []
    for path, slide_mpp in SLIDES:
        with open_slide(path) as reader:
            grid = plan_grid(reader, 224, 0.5, slide_mpp)
        cols, rows = np.meshgrid(np.arange(grid.n_cols), np.arange(grid.n_rows))
        coords = np.stack([cols.ravel(), rows.ravel()], 1) * grid.step
        parts.append(TileDataset(path, coords, grid, encoder.img_size, encoder.mean, encoder.std))
    data = ConcatDataset(parts)
    n = min(len(data), args.max_tiles or len(data))
    one = Subset(data, range(n))
    return ConcatDataset([one] * args.repeat)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def bare_rate(model, device: torch.device, args: argparse.Namespace, n_batches: int) -> float:
    from gcmae.encoders.embed import embed
    from gcmae.slide.features import autocast

    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    with autocast(device, args.precision):
        embed(model, x, "cls")
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            embed(model, x, "cls")
        sync(device)
    return n_batches * args.batch_size / (time.perf_counter() - t0)


@torch.no_grad()
def loader_rate(data, model, device: torch.device, args: argparse.Namespace, workers: int) -> tuple[float, float]:
    """(steady tiles/s from the first batch on, tiles/s including worker start-up) of the extract path; with
    model None, of the reading alone."""
    from gcmae.encoders.embed import embed
    from gcmae.slide.features import autocast

    loader = DataLoader(data, batch_size=args.batch_size, num_workers=workers, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if workers else None)
    t_start = time.perf_counter()
    t_first, n_after, n = None, 0, 0
    for imgs, _ in loader:
        if model is not None:
            with autocast(device, args.precision):
                embed(model, imgs.to(device, non_blocking=True), "cls").float().cpu()
        n += len(imgs)
        if t_first is None:
            t_first = time.perf_counter()
        else:
            n_after += len(imgs)
    end = time.perf_counter()
    return n_after / max(end - t_first, 1e-9), n / (end - t_start)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = benchmark_device("extraction.py", args.device, args.threads)
    if device is None:
        return 0
    from gcmae.encoders.loading import load_encoder

    encoder = load_encoder("random", args.encoder, args.img_size, 16)
    model = encoder.model.to(device).eval()
    data = slide_dataset(args, encoder)
    print(f"extraction.py: torch {torch.__version__}, device {device_name(args.device)}, torch threads "
          f"{torch.get_num_threads()}, {os.cpu_count()} logical cores; {encoder.description}, pool cls, "
          f"{args.precision}, batch {args.batch_size}; {len(data)} tiles per configuration and round "
          f"({len(data) // args.repeat} distinct x {args.repeat}); {args.rounds} rounds, configurations "
          f"interleaved in rotating order, medians reported" + (", --quick" if args.quick else ""))
    print(f"load average at start: {loadavg()}", flush=True)
    n_batches = max(2, len(data) // args.batch_size)
    configs: list[tuple[str, Any]] = [("bare encoder (in-memory batch)", lambda: (bare_rate(model, device, args,
                                                                                            n_batches), None))]
    for w in args.workers:
        configs.append((f"slide -> DataLoader({w} workers) -> encoder",
                        lambda w=w: loader_rate(data, model, device, args, w)))
    for w in args.workers:
        configs.append((f"reading only, {w} workers", lambda w=w: loader_rate(data, None, device, args, w)))
    results: dict[str, list[tuple[float, float | None]]] = {name: [] for name, _ in configs}
    t0 = time.perf_counter()
    for r in range(args.rounds):
        for name, fn in configs[r % len(configs):] + configs[: r % len(configs)]:
            try:
                results[name].append(fn())
            except Exception:  # noqa: BLE001
                traceback.print_exc()
    med = {n: (statistics.median(v[0] for v in vals),
               statistics.median(v[1] for v in vals) if vals and vals[0][1] is not None else None,
               min(v[0] for v in vals), max(v[0] for v in vals)) for n, vals in results.items() if vals}
    bare = med[configs[0][0]][0]
    print(f"\n{'configuration':<44}{'tiles/s':>9}{'min-max':>15}{'% bare':>8}{'incl. start-up':>16}")
    for name, (rate, total, lo, hi) in med.items():
        pct = f"{100 * rate / bare:.0f}%" if "encoder" in name else ""
        tot = f"{total:.1f}" if total is not None else ""
        print(f"{name:<44}{rate:>9.1f}{f'{lo:.1f}-{hi:.1f}':>15}{pct:>8}{tot:>16}")
    two = med.get("slide -> DataLoader(2 workers) -> encoder")
    if two is not None:
        pct = 100 * two[0] / bare
        print(f"\ngoal: reader with 2 workers >= {GOAL_PCT:.0f}% of the bare encoder: {pct:.0f}% -> "
              f"{'PASS' if pct >= GOAL_PCT else 'FAIL'}")
    print(f"load average at end: {loadavg()}")
    print(f"total wall time {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    run_report(main)
