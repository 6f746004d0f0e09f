"""How much does GCMAE's NPID memory bank cost per training step?

Measures, side by side in one process, training throughput (forward + backward + AdamW step, after warm-up) of

  * MAE                 GCMAE with contrast_weight = 0 (the memory bank is never touched)
  * GCMAE per_sample    contrast_weight = 0.1, a separate K-draw of negatives per image (official NPID)
  * GCMAE shared        contrast_weight = 0.1, one K-draw of negatives per batch

at the paper's bank scale (N = 100,000 entries, K = 8192 negatives, D = 768, ViT-B encoder, decoder 512/8/16).
All three configurations use ONE model and ONE optimiser (only `contrast_weight` / `bank.negatives` are switched
between steps), and the steps are interleaved round-robin with a rotating order, so machine noise hits all
configurations alike; the median step time per configuration is reported.

It also times the bank operations alone (sample_negatives + scores + nce_loss + backward through the scores +
update) for both sampling modes, at the benchmark batch and at the paper's batch of 128.

Goal: the bank may cost at most 5 % of the step at N = 100,000, K = 8192, D = 768.

This is a report, not a test: the exit code is 0 whatever the numbers are.

    .venv/bin/python benchmarks/bank_overhead.py            # CPU default: 224 px, batch 8 (a few minutes on 2 cores)
    .venv/bin/python benchmarks/bank_overhead.py --quick    # smoke check, < ~90 s
    .venv/bin/python benchmarks/bank_overhead.py --device cuda   # paper setting: 224 px, batch 128, bf16 autocast
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from _machine import benchmark_device, device_name, run_report  # first: it puts src/ on sys.path
from gcmae.models.memory_bank import MemoryBank
from gcmae.losses.nce import nce_loss
from gcmae.models.gcmae import GCMAE
from gcmae.models.vit import ENCODER_PRESETS
from gcmae.seeding import step_generator
from gcmae.train.optim import build_adamw

GOAL_PCT = 5.0
PAPER_BATCH = 128
CONTRAST_WEIGHT = 0.1
# (name, contrast_weight, negatives); "negatives" is irrelevant for MAE (the bank is not touched).
CONFIGS = [
    ("MAE (contrast_weight=0)", 0.0, "per_sample"),
    ("GCMAE per_sample", CONTRAST_WEIGHT, "per_sample"),
    ("GCMAE shared", CONTRAST_WEIGHT, "shared"),
]
BANK_PHASES = ("sample", "scores", "nce", "backward", "update")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda runs under bf16 autocast")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=None, help="default: 8 on cpu (2 with --quick), 128 on cuda")
    p.add_argument("--iters", type=int, default=None,
                   help="measured steps per configuration (default: 10 on cpu, 30 on cuda; 2 / 10 with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="un-timed steps per configuration first (default: 1 on cpu, 5 on cuda)")
    p.add_argument("--bank-reps", type=int, default=None,
                   help="timed repetitions of the bank-alone measurement per mode and batch (default 5 cpu, 20 cuda; "
                        "2 / 5 with --quick)")
    p.add_argument("--num-data", type=int, default=100_000, help="bank entries N")
    p.add_argument("--num-negatives", type=int, default=8192, help="negatives K")
    p.add_argument("--encoder", default="vit_base", choices=sorted(ENCODER_PRESETS),
                   help="encoder preset; the bank dimension D is its width (768 for vit_base)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="fewer/smaller steps: a smoke check in < ~90 s on 2 CPU cores")
    a = p.parse_args(argv)
    cuda = a.device == "cuda"
    if a.batch_size is None:
        a.batch_size = PAPER_BATCH if cuda else (2 if a.quick else 8)
    if a.iters is None:
        a.iters = (10 if a.quick else 30) if cuda else (2 if a.quick else 10)
    if a.warmup is None:
        a.warmup = (2 if a.quick else 5) if cuda else 1
    if a.bank_reps is None:
        a.bank_reps = (5 if a.quick else 20) if cuda else (2 if a.quick else 5)
    if a.iters < 1 or a.warmup < 0 or a.bank_reps < 1 or a.batch_size < 1:
        p.error("--iters, --bank-reps and --batch-size must be >= 1, --warmup >= 0")
    return a


class Timer:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()




def busy_cores(interval: float = 0.5) -> float | None:
    """CPU cores kept busy by *other* processes over `interval` seconds (called while this one is idle); Linux only."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    try:
        busy0, total0 = sample()
        time.sleep(interval)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (os.cpu_count() or 1) * (busy1 - busy0) / max(1, total1 - total0)


# --------------------------------------------------------------------------------------------- full training step
def measure_training(args: argparse.Namespace, device: torch.device, timer: Timer) -> dict[str, list[float]]:
    torch.manual_seed(0)
    model = GCMAE(
        num_data=args.num_data, encoder=args.encoder, img_size=args.img_size, patch_size=16,
        decoder_dim=512, decoder_depth=8, decoder_heads=16,
        contrast_weight=CONTRAST_WEIGHT, num_negatives=args.num_negatives, negatives="per_sample",
    ).to(device)
    model.train()
    # paper: base lr 1.5e-4 scaled by batch / 256, weight decay 0.05, betas (0.9, 0.95)
    optimizer = build_adamw(model, 1.5e-4 * args.batch_size / 256, 0.05, (0.9, 0.95))
    b = args.batch_size
    data_gen = torch.Generator().manual_seed(1)
    imgs = torch.randn(b, 3, args.img_size, args.img_size, generator=data_gen).to(device)
    step_counter = [0]

    def step(contrast_weight: float, negatives: str) -> float:
        model.contrast_weight = contrast_weight
        model.bank.negatives = negatives
        # distinct dataset indices per step, as a real epoch would give (drawn outside the timed region)
        indices = torch.randperm(args.num_data, generator=data_gen)[:b].to(device)
        seed = step_counter[0]
        step_counter[0] += 1
        t0 = timer.now()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            loss = model.training_losses(imgs, indices, seed)["loss"]
        loss.backward()
        optimizer.step()
        t1 = timer.now()
        return t1 - t0

    times: dict[str, list[float]] = {name: [] for name, _, _ in CONFIGS}
    n = len(CONFIGS)
    for r in range(args.warmup + args.iters):
        order = [CONFIGS[(r + j) % n] for j in range(n)]  # rotate so no configuration always runs first / last
        for name, cw, neg in order:
            dt = step(cw, neg)
            if r >= args.warmup:
                times[name].append(dt)
        label = "warm-up" if r < args.warmup else "measure"
        print(f"  round {r + 1}/{args.warmup + args.iters} ({label}): "
              + ", ".join(f"{name.split(' (')[0]} {times[name][-1]:.3f}s" if r >= args.warmup else name.split(" (")[0]
                          for name, _, _ in order), flush=True)
    return times  # the model and optimiser are freed with `step`'s closure


# --------------------------------------------------------------------------------------------- bank operations alone
def measure_bank(args: argparse.Namespace, device: torch.device, timer: Timer, dim: int,
                 batches: list[int]) -> dict[tuple[str, int], dict[str, float]]:
    """Median time per phase of one step's bank work, for each (mode, batch); modes interleaved per repetition."""
    torch.manual_seed(0)
    bank = MemoryBank(args.num_data, dim, args.num_negatives).to(device)
    gen = torch.Generator().manual_seed(2)
    modes = ("per_sample", "shared")
    raw: dict[tuple[str, int], dict[str, list[float]]] = {
        (m, b): {ph: [] for ph in BANK_PHASES} for m in modes for b in batches}
    seed = 10_000
    for b in batches:
        for rep in range(1 + args.bank_reps):  # rep 0 = warm-up (also estimates Z on the very first call)
            for mode in (modes if rep % 2 == 0 else modes[::-1]):
                bank.negatives = mode
                emb = F.normalize(torch.randn(b, dim, generator=gen), dim=1).to(device).requires_grad_()
                indices = torch.randperm(args.num_data, generator=gen)[:b].to(device)
                seed += 1
                t = [timer.now()]
                with autocast(device):
                    negatives = bank.sample_negatives(b, step_generator(seed, 1))
                    t.append(timer.now())
                    probs = bank.scores(emb, indices, negatives)
                    t.append(timer.now())
                    loss = CONTRAST_WEIGHT * nce_loss(probs, bank.size)
                    t.append(timer.now())
                loss.backward()
                t.append(timer.now())
                bank.update(emb.detach(), indices)
                bank.flush()  # the deferred write into the bank belongs to the update's cost
                t.append(timer.now())
                if rep > 0:
                    for ph, t0, t1 in zip(BANK_PHASES, t[:-1], t[1:]):
                        raw[(mode, b)][ph].append(t1 - t0)
                del negatives, probs, loss, emb
    out = {}
    for key, phases in raw.items():
        med = {ph: statistics.median(v) for ph, v in phases.items()}
        totals = [sum(vals) for vals in zip(*phases.values())]
        med["total"] = statistics.median(totals)
        out[key] = med
    return out


# --------------------------------------------------------------------------------------------- report
def spread_pct(values: list[float]) -> float:
    """Half the inter-quartile range as % of the median (a robust +/- noise figure); 0 for < 2 values."""
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return 100.0 * (q[2] - q[0]) / 2 / statistics.median(values)


def verdict(pct: float) -> str:
    return "PASS" if pct <= GOAL_PCT else "FAIL"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    device = benchmark_device("bank_overhead.py", args.device, args.threads)
    if device is None:
        return 0
    timer = Timer(device)
    dim = ENCODER_PRESETS[args.encoder]["embed_dim"]

    print("GCMAE memory-bank overhead benchmark")
    print(f"  torch {torch.__version__}, device {device_name(device)}, threads {torch.get_num_threads()}, "
          f"precision {'bf16 autocast' if device.type == 'cuda' else 'fp32'}")
    print(f"  encoder {args.encoder}, decoder 512/8/16, img {args.img_size}px, patch 16, mask 0.5, batch {args.batch_size}")
    print(f"  bank N={args.num_data:,} K={args.num_negatives} (D = encoder width), contrast_weight {CONTRAST_WEIGHT}")
    print(f"  {args.warmup} warm-up + {args.iters} measured steps per configuration, interleaved round-robin"
          f"{' [--quick]' if args.quick else ''}")
    others_before = busy_cores() if device.type == "cpu" else None
    print("training steps (forward + backward + AdamW):", flush=True)
    times = measure_training(args, device, timer)

    batches = sorted({args.batch_size, PAPER_BATCH})
    print(f"bank operations alone at batch {', '.join(map(str, batches))} ({args.bank_reps} reps + 1 warm-up each)...",
          flush=True)
    bank = measure_bank(args, device, timer, dim, batches)

    mae_name = CONFIGS[0][0]
    mae_fast = min(times[mae_name])  # denominator of the bank-alone shares: the fastest MAE step (conservative)
    b = args.batch_size

    print()
    print(f"== Training throughput: {args.encoder} + decoder 512/8/16, {args.img_size}px, batch {b}, "
          f"N={args.num_data:,} K={args.num_negatives} D={dim}, {device.type} ==")
    head = (f"{'config':<24} {'img/s':>8} {'step ms':>10} {'min ms':>10} {'+/-%':>6} {'overhead':>9} {'goal':>5}   "
            f"{'bank-alone ms':>13} {'% of MAE':>9} {'goal':>5}")
    print(head)
    print("-" * len(head))
    for name, _, neg in CONFIGS:
        med = statistics.median(times[name])
        row = (f"{name:<24} {b / med:>8.2f} {med * 1e3:>10.1f} {min(times[name]) * 1e3:>10.1f} "
               f"{spread_pct(times[name]):>6.1f} ")
        if name == mae_name:
            row += f"{'-':>9} {'-':>5}   {'-':>13} {'-':>9} {'-':>5}"
        else:
            # paired: each round ran every configuration back to back, so compare within rounds
            over = 100.0 * (statistics.median(t / m for t, m in zip(times[name], times[mae_name])) - 1.0)
            alone = bank[(neg, b)]["total"]
            share = 100.0 * alone / mae_fast
            row += (f"{over:>+8.1f}% {verdict(over):>5}   {alone * 1e3:>13.1f} {share:>8.1f}% {verdict(share):>5}")
        print(row)
    print("  img/s and step ms from the median step; overhead = median over rounds of (step / MAE step in the same")
    print("  round) - 1, measured end to end; +/-% = half the inter-quartile range of the per-step times")
    print("  (end-to-end differences below it are noise);")
    print("  bank-alone = median time of the same bank work timed in isolation at this batch, as % of the fastest")
    print("  MAE step (a conservative, less noisy estimate of the bank's share). goal: the bank <= "
          f"{GOAL_PCT:.0f}% of the step.")

    print()
    print(f"== Bank operations alone (median ms per step), N={args.num_data:,} K={args.num_negatives} D={dim}, "
          f"{device.type}{', bf16 autocast' if device.type == 'cuda' else ''} ==")
    mae_per_img = mae_fast / b
    head2 = (f"{'mode':<11} {'batch':>5} " + " ".join(f"{ph:>9}" for ph in BANK_PHASES)
             + f" {'total':>9} {'% of MAE step':>14} {'goal':>5}")
    print(head2)
    print("-" * len(head2))
    for mode in ("per_sample", "shared"):
        for bb in batches:
            m = bank[(mode, bb)]
            mae_step = mae_per_img * bb  # measured if bb == b, else linear projection from the per-image time
            share = 100.0 * m["total"] / mae_step
            tag = "" if bb == b else "*"
            print(f"{mode:<11} {bb:>5} " + " ".join(f"{m[ph] * 1e3:>9.2f}" for ph in BANK_PHASES)
                  + f" {m['total'] * 1e3:>9.2f} {share:>13.1f}%{tag or ' '} {verdict(share):>5}")
    print("  % of MAE step: bank total as % of the fastest measured MAE step at that batch.")
    if any(bb != b for bb in batches):
        print(f"  * MAE step at batch {PAPER_BATCH} projected linearly from the measured {mae_per_img * 1e3:.1f} ms/img "
              f"at batch {b} (run with --batch-size {PAPER_BATCH} to measure it).")
    print("  phases: sample = sample_negatives (CPU generator + copy to device), scores = gather + dot products + exp,"
          " nce = nce_loss, backward = backward through scores + nce, update = momentum update of the batch's entries.")
    print()
    if device.type == "cpu":
        others_after = busy_cores()
        seen = [x for x in (others_before, others_after) if x is not None]
        if seen:
            print(f"other processes kept {', '.join(f'{x:.1f}' for x in seen)} of {os.cpu_count()} cores busy "
                  "(sampled for 0.5 s before / after the measurements)")
            if max(seen) > 0.25:
                print("note: other processes competed for the CPU, so per-step times are noisy; look at the "
                      "min column, the +/-% spread and the bank-alone share.")
    if args.quick:
        print("--quick: a smoke check; too few steps for the end-to-end overhead / PASS-FAIL to mean much.")
    print(f"wall time {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    run_report(main)
