"""What does stain normalisation cost next to feature extraction?

Prints, side by side in one run, the per-tile time of `gcmae extract`'s stain step (``normalize_encoder_input``
on a batch already normalised for the encoder: undo mean/std, torchstain Macenko or Reinhard per tile, redo) and
of the frozen encoder's forward pass (ViT-S/16 at 224, cls pool, random init: the weights do not change the cost)
on the same batch of real tiles (CRC-VAL-HE-7K 224-px tiles and PCam patches resized to 224). The three steps run
interleaved for several rounds (the machine may be shared); medians are reported.

Goal printed next to the numbers: the stain step costs < 20 % of the encoder's time per tile on a CPU.

This is a report, not a test: the exit code is 0 whatever happens.

    .venv/bin/python benchmarks/stain.py              # CPU, 1 thread, batch 16, 5 rounds (~1-2 min)
    .venv/bin/python benchmarks/stain.py --quick      # smoke check: 2 rounds of batch 4
    .venv/bin/python benchmarks/stain.py --device cuda --batch-size 128
"""
from __future__ import annotations

import argparse
import statistics
import time

from _machine import ROOT, benchmark_device, device_name, loadavg, run_report, table  # first: puts src/ on sys.path

import numpy as np
import torch
from PIL import Image

GOAL_PCT = 20.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--encoder", default="vit_small")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="2 rounds of batch 4")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.rounds = 4, 2
    return args


def real_batch(n: int, mean, std) -> torch.Tensor:
    """n real tiles (alternately CRC and PCam), resized to 224 and normalised with the encoder's mean/std."""
    crc = sorted((ROOT / "data/samples/crc-val-he-7k").glob("*/*.png"))
    pcam = sorted((ROOT / "data/samples/pcam/valid").glob("*/*.jpg"))
    files = [f for pair in zip(crc, pcam) for f in pair][:n]
    arrs = []
    for f in files:
        with Image.open(f) as im:
            arrs.append(np.asarray(im.convert("RGB").resize((224, 224), Image.BICUBIC)))
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = benchmark_device("stain.py", args.device, args.threads)
    if device is None:
        return 0
    from gcmae.encoders.embed import embed
    from gcmae.encoders.loading import RANDOM, load_encoder
    from gcmae.stain import StainNormalizer

    encoder = load_encoder(RANDOM, args.encoder, 224, 16)
    model = encoder.model.to(device).eval()
    x = real_batch(args.batch_size, encoder.mean, encoder.std).to(device)
    norms = {m: StainNormalizer.fit(None, m) for m in ("macenko", "reinhard")}
    steps = {"encoder": lambda: embed(model, x, "cls"),
             **{f"stain {m}": (lambda n=n: n.normalize_encoder_input(x, encoder.mean, encoder.std))
                for m, n in norms.items()}}
    with torch.no_grad():
        for fn in steps.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(args.rounds):
            for name, fn in steps.items():
                times[name].append(timed(fn, device) / args.batch_size)
    enc = statistics.median(times["encoder"])
    print(f"torch {torch.__version__}, {device_name(device)}, {torch.get_num_threads()} thread(s), load {loadavg()}")
    print(f"{args.encoder}/16 at 224 px, batch {args.batch_size} real tiles (CRC + PCam), {args.rounds} rounds, "
          f"medians\n")
    rows = [["encoder forward (cls)", f"{enc * 1e3:.1f}", "100.0", ""]]
    for m in norms:
        t = statistics.median(times[f"stain {m}"])
        pct = 100 * t / enc
        verdict = "" if args.quick else ("meets" if pct < GOAL_PCT else "MISSES") + f" < {GOAL_PCT:.0f} %"
        rows.append([f"stain {m} (torchstain, per tile)", f"{t * 1e3:.1f}", f"{pct:.1f}", verdict])
    print(table(["step", "ms / tile", "% of encoder", "goal"], rows))
    return 0


if __name__ == "__main__":
    run_report(main)
