"""Peak memory of `gcmae mil train` with every bag held in memory vs bags streamed from disk (--max-preload-gb 0),
at two cohort sizes (N/2 and N bags).

Goal (default sizes; --quick gives no verdict, fixed costs dominate there): the memory that streaming needs does
not grow with the cohort (at N bags at most 1.25 x what it needs at N/2), so a cohort larger than RAM trains; and
both modes train the same model. Each run is its own process and reports its own peak RSS (ru_maxrss); one more
process only imports what training imports, and the table shows memory *above* that. The bags are random features
written as HDF5 (the sizes matter here, not the content).
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _machine import ROOT, SRC, benchmark_device, device_name, run_report, table

import h5py  # noqa: E402
import numpy as np  # noqa: E402

GOAL = 1.25  # streamed memory above the import baseline, N bags / N/2 bags

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {src!r})
from gcmae.slide.mil_train import MILTrainOptions, train_mil
import h5py, safetensors.torch, sklearn.metrics  # the baseline imports what training imports later too
opts = json.loads(sys.argv[1])
t0 = time.perf_counter()
if opts:
    train_mil(MILTrainOptions(**opts), progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
print(json.dumps({{"seconds": time.perf_counter() - t0,
                  "peak_mb": peak / (2**20 if sys.platform == "darwin" else 2**10)}}))
"""


def write_bags(folder: Path, n_bags: int, n_tiles: int, dim: int) -> float:
    """`n_bags` HDF5 bags of (n_tiles, dim) float32 features and labels.csv; returns the MB of feature data."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    rows = []
    for i in range(n_bags):
        x = rng.normal(size=(n_tiles, dim)).astype(np.float32)
        x[: n_tiles // 40, 0] += 3.0 * (i % 2)  # a few "positive" tiles in every other bag
        with h5py.File(folder / f"s{i:04d}.h5", "w") as h5:
            h5["features"] = x
        rows.append((f"s{i:04d}", i % 2))
    with open(folder / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("slide_id", "label"), *rows])
    return n_bags * n_tiles * dim * 4 / 2**20


def child(opts: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD.format(src=str(SRC)), json.dumps(opts)], check=True,
                         capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bags", type=int, default=400, help="N, the larger cohort")
    p.add_argument("--tiles", type=int, default=2000, help="tiles per bag")
    p.add_argument("--dim", type=int, default=384, help="feature size (ViT-S)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="N = 40 bags of 500 tiles, 1 epoch")
    p.add_argument("--device", default="cpu", help="where ABMIL trains (peak RSS is host memory either way)")
    args = p.parse_args()
    if benchmark_device("mil_memory.py", args.device) is None:
        return
    if args.quick:
        args.bags, args.tiles, args.epochs = 40, 500, 1
    print(f"mil_memory: {device_name(args.device)}; bags of {args.tiles} tiles x {args.dim} features, "
          f"{args.epochs} epochs")
    base = child({})
    rows, streamed, same = [["import only", "", "", f"{base['peak_mb']:.0f}", "0", ""]], {}, True
    with tempfile.TemporaryDirectory(prefix="gcmae-bench-mil-") as tmp:
        for n in (args.bags // 2, args.bags):
            bags = Path(tmp) / f"bags{n}"
            data_mb = write_bags(bags, n, args.tiles, args.dim)
            common = {"features": str(bags), "labels": str(bags / "labels.csv"), "epochs": args.epochs,
                      "device": args.device, "patience": args.epochs}
            histories = []
            for name, gb in (("held in memory", 1e3), ("streamed from disk", 0.0)):
                out = Path(tmp) / f"{name}-{n}"
                r = child({**common, "out": str(out), "max_preload_gb": gb})
                histories.append((out / "history.csv").read_text())
                extra = r["peak_mb"] - base["peak_mb"]
                if gb == 0.0:
                    streamed[n] = extra
                rows.append([name, str(n), f"{data_mb:.0f}", f"{r['peak_mb']:.0f}", f"{extra:.0f}",
                             f"{r['seconds']:.1f}"])
            same &= histories[0] == histories[1]
    print(table(["configuration", "bags", "bag data MB", "peak RSS MB", "above import MB", "train s"], rows))
    small, large = streamed[args.bags // 2], streamed[args.bags]
    growth = large / max(small, 1.0)
    verdict = ("no verdict with --quick" if args.quick else
               "no verdict on cuda (held bags live in GPU memory)" if args.device.startswith("cuda") else
               "PASS" if growth <= GOAL and same else "FAIL")
    print(f"streamed memory above import, {args.bags} / {args.bags // 2} bags = {growth:.2f} (goal <= {GOAL}); "
          f"same training history held vs streamed: {same}: {verdict}")


if __name__ == "__main__":
    run_report(main)
