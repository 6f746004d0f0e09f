"""How close does GCMAE training run to this machine's limit?

Prints, measured on whatever machine it runs on (`--device cpu|cuda`; CUDA runs under bf16 autocast with fused
attention):

  1. the dense-matmul peak of this machine, measured in this run (square fp32 GEMMs, best of several; bf16 too;
     on CPU it says whether bf16 is actually faster than fp32);
  2. GCMAE training throughput (img/s of forward + backward + AdamW step on synthetic images) and model FLOPs
     utilisation (MFU = FLOPs of one step counted by torch.utils.flop_counter.FlopCounterMode / step time /
     measured matmul peak) for ViT-Tiny/Small/Base at 96 and 224 px, with the peak memory of each step
     (CPU: VmHWM of a fresh subprocess per config; CUDA: torch.cuda.max_memory_allocated);
  3. the data loader's img/s on the shipped 96-px PCam JPEGs (ImageFolderDataset + pretrain_transform +
     SeededEpochSampler, as `gcmae pretrain` builds it) with 0, 1 and 2 workers, against the demo model's trainer
     (ViT-Tiny/16 at 96, decoder 128/2/4, batch 64), and the end-to-end loop with real data vs synthetic tensors;
  4. "try what helps": variants of one ViT-Small/16 224-px training step measured side by side, interleaved
     round-robin: timm fused attention off, bf16 autocast, AdamW foreach / for-loop vs the library's fused, 1 thread,
     optionally torch.compile (`--compile`).

Goals printed next to the numbers: >= 50 % of the measured fp32 matmul peak on CPU for ViT-S/B at 224 px;
>= 40 % bf16 MFU on an H100-class GPU.

This is a report, not a test: the exit code is 0 whatever happens.

    .venv/bin/python benchmarks/throughput.py                 # CPU default, about 3 min on 2 cores
    .venv/bin/python benchmarks/throughput.py --quick         # smoke check, < ~30 s
    .venv/bin/python benchmarks/throughput.py --device cuda   # GPU: bf16 autocast, bigger batches
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path


from _machine import ROOT, benchmark_device, device_name, loadavg, run_report, table  # first: it puts src/ on sys.path

import torch


CPU_GOAL_PCT = 50.0
GPU_GOAL_PCT = 40.0
PRESETS = {"tiny": "vit_tiny", "small": "vit_small", "base": "vit_base"}
PCAM_TRAIN = ROOT / "data" / "samples" / "pcam" / "train"


# ------------------------------------------------------------------------------------------------------ helpers
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--models", default="tiny,small,base", help="comma list of tiny,small,base")
    p.add_argument("--img-sizes", default="96,224", help="comma list of image sizes")
    p.add_argument("--batch-size", type=int, default=None,
                   help="training batch for section 2 (default cpu: 16 at <=128 px, 4 above; cuda: 256 / 128)")
    p.add_argument("--variant-batch", type=int, default=None, help="batch of section 4 (default 8 cpu, 128 cuda)")
    p.add_argument("--iters", type=int, default=None, help="measured steps per config (default 3 cpu, 20 cuda)")
    p.add_argument("--num-data", type=int, default=10_000, help="memory-bank entries of the section-2/4 models")
    p.add_argument("--num-negatives", type=int, default=4096)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--compile", action="store_true", help="also try torch.compile in section 4 (skipped if > 120 s)")
    p.add_argument("--skip", default="", help="comma list of sections to skip: peak,train,loader,variants")
    p.add_argument("--quick", action="store_true", help="smoke check in < ~30 s on 2 CPU cores")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    cuda = a.device == "cuda"
    if a.iters is None:
        a.iters = (5 if a.quick else 20) if cuda else (1 if a.quick else 3)
    if a.variant_batch is None:
        a.variant_batch = 128 if cuda else (2 if a.quick else 8)
    if a.quick:
        if a.models == "tiny,small,base":
            a.models = "tiny"
        if a.img_sizes == "96,224":
            a.img_sizes = "96"
    return a


def default_batch(args: argparse.Namespace, img_size: int) -> int:
    if args.batch_size:
        return args.batch_size
    if args.device == "cuda":
        return 256 if img_size <= 128 else 128
    return (4 if args.quick else 16) if img_size <= 128 else 4




def busy_cores(interval: float = 0.5) -> tuple[float, float] | None:
    """(cores kept busy by *other* processes, of which hypervisor steal) over `interval` s, sampled while this
    process idles; Linux only. Steal is CPU time the host gave to other virtual machines."""

    def sample() -> tuple[int, int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        steal = fields[7] if len(fields) > 7 else 0
        return sum(fields[:8]) - idle, steal, sum(fields[:8])

    try:
        b0, s0, t0 = sample()
        time.sleep(interval)
        b1, s1, t1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    n, dt = (os.cpu_count() or 1), max(1, t1 - t0)
    return n * (b1 - b0) / dt, n * (s1 - s0) / dt


def load_line(tag: str) -> str:
    bc = busy_cores()
    return f"[load {tag}] loadavg {loadavg()}; cores busy with other work (0.5 s sample): " + (
        f"{bc[0]:.2f} of {os.cpu_count()} (hypervisor steal {bc[1]:.2f})" if bc is not None else "?")


def vm_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class Timer:
    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def autocast(device: str, bf16: bool):
    return torch.autocast(device, dtype=torch.bfloat16) if bf16 else nullcontext()


# ---------------------------------------------------------------------------------------------- 1. matmul peak
def matmul_peak(args: argparse.Namespace) -> dict[str, float]:
    """Best GFLOP/s of square GEMMs; returns {'fp32': ..., 'bf16': ...} (bf16 absent if unsupported)."""
    dev = args.device
    timer = Timer(dev)
    cuda = dev == "cuda"
    sizes = ([4096, 8192] if cuda else ([1024] if args.quick else [2048, 4096]))
    reps = (10 if cuda else (2 if args.quick else 3))
    rows, best = [], {}
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for n in sizes:
            try:
                a = torch.randn(n, n, device=dev, dtype=dtype)
                b = torch.randn(n, n, device=dev, dtype=dtype)
                t0 = timer.now()
                a @ b  # warm-up (also a cheap guard against a pathologically slow path)
                first = timer.now() - t0
                times = []
                for _ in range(reps if first < 5 else 1):
                    t0 = timer.now()
                    a @ b
                    times.append(timer.now() - t0)
                gf = 2 * n**3 / min(times) / 1e9
                rows.append([dtype_name, f"{n}x{n}", f"{min(times) * 1e3:.1f}", f"{statistics.median(times) * 1e3:.1f}",
                             f"{gf:.1f}"])
                best[dtype_name] = max(best.get(dtype_name, 0.0), gf)
                del a, b
                if first > 8:  # do not spend minutes on a slow bf16 emulation
                    break
            except Exception as err:  # noqa: BLE001
                rows.append([dtype_name, f"{n}x{n}", "-", "-", f"failed: {type(err).__name__}"])
                break
    print(table(["dtype", "GEMM", "best ms", "median ms", "GFLOP/s (best)"], rows))
    if "bf16" in best:
        ratio = best["bf16"] / best["fp32"]
        verdict = "faster" if ratio > 1.1 else ("no faster" if ratio > 0.9 else "SLOWER")
        print(f"bf16 / fp32 matmul peak: {ratio:.2f}x -> bf16 is {verdict} than fp32 on this device")
    return best


# ------------------------------------------------------------------------------------ 2. training step (worker)
def build_model(encoder: str, img_size: int, dec: tuple[int, int, int], num_data: int, num_negatives: int, device: str):
    from gcmae.models.gcmae import GCMAE

    torch.manual_seed(0)
    model = GCMAE(num_data=num_data, encoder=encoder, img_size=img_size, patch_size=16, decoder_dim=dec[0],
                  decoder_depth=dec[1], decoder_heads=dec[2], contrast_weight=0.1,
                  num_negatives=min(num_negatives, num_data - 1), negatives="per_sample").to(device)
    model.train()
    return model


def set_fused_attn(model: torch.nn.Module, on: bool) -> None:
    from timm.models.vision_transformer import Attention

    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_attn = on


class Stepper:
    """One GCMAE training step (zero_grad, forward under optional autocast, backward, optimizer step)."""

    def __init__(self, model, optimizer, batch: int, img_size: int, num_data: int, device: str) -> None:
        self.model, self.opt, self.device = model, optimizer, device
        gen = torch.Generator().manual_seed(1)
        self.imgs = torch.randn(batch, 3, img_size, img_size, generator=gen).to(device)
        self.gen, self.num_data, self.batch, self.seed = gen, num_data, batch, 0

    def __call__(self, bf16: bool, imgs: torch.Tensor | None = None, indices: torch.Tensor | None = None,
                 model=None, opt=None) -> None:
        model = model or self.model
        opt = opt or self.opt
        if indices is None:
            indices = torch.randperm(self.num_data, generator=self.gen)[: self.batch].to(self.device)
        self.seed += 1
        opt.zero_grad(set_to_none=True)
        with autocast(self.device, bf16):
            loss = model.training_losses(self.imgs if imgs is None else imgs, indices, self.seed)["loss"]
        loss.backward()
        opt.step()


def count_step_flops(model, stepper: Stepper, bf16: bool) -> float:
    """FLOPs of one training step (forward + backward), counted with attention as explicit matmuls."""
    from torch.utils.flop_counter import FlopCounterMode

    fused = [getattr(m, "fused_attn", None) for m in model.modules()]
    set_fused_attn(model, False)  # make sure attention FLOPs are counted whatever sdpa kernels are registered
    fc = FlopCounterMode(display=False)
    with fc:
        stepper(bf16)
    for m, f in zip(model.modules(), fused):
        if f is not None:
            m.fused_attn = f
    return float(fc.get_total_flops())


def train_worker(spec: dict) -> dict:
    from gcmae.train.optim import build_adamw

    dev, bf16 = spec["device"], spec["device"] == "cuda"
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    timer = Timer(dev)
    model = build_model(spec["encoder"], spec["img_size"], tuple(spec["decoder"]), spec["num_data"],
                        spec["num_negatives"], dev)
    opt = build_adamw(model, 1e-4, 0.05, (0.9, 0.95))
    st = Stepper(model, opt, spec["batch"], spec["img_size"], spec["num_data"], dev)
    local_peak = 0.0  # this process's own GEMM peak, measured right before its steps (contention check)
    n = 4096 if dev == "cuda" else 2048
    dt_peak = torch.bfloat16 if dev == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=dev, dtype=dt_peak), torch.randn(n, n, device=dev, dtype=dt_peak)
    for _ in range(4):
        t0 = timer.now()
        a @ b
        local_peak = max(local_peak, 2 * n**3 / (timer.now() - t0) / 1e9)
    del a, b
    rss0 = vm_kib("VmRSS")
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
        mem0 = torch.cuda.memory_allocated()
    st(bf16)  # warm-up (also allocates the AdamW state)
    times = []
    for _ in range(spec["iters"]):
        t0 = timer.now()
        st(bf16)
        times.append(timer.now() - t0)
    if dev == "cuda":
        peak, base = torch.cuda.max_memory_allocated() / 2**20, mem0 / 2**20
    else:
        peak, base = (vm_kib("VmHWM") or 0) / 1024, (rss0 or 0) / 1024
    flops = count_step_flops(model, st, bf16)
    return {"times": times, "flops": flops, "peak_mib": peak, "base_mib": base, "local_peak": local_peak,
            "params_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6}


def run_worker_subprocess(spec: dict, timeout: float = 300) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", json.dumps(spec)]
    env = dict(os.environ)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (r.stderr.strip().splitlines() or ["no output"])[-1][:200]}


def section_train(args: argparse.Namespace, peak: dict[str, float]) -> list[dict]:
    cuda = args.device == "cuda"
    peak_key = "bf16" if cuda else "fp32"
    rows, results, raw = [], [], []
    for m in [x.strip() for x in args.models.split(",") if x.strip()]:
        for s in [int(x) for x in args.img_sizes.split(",") if x.strip()]:
            b = default_batch(args, s)
            spec = dict(device=args.device, encoder=PRESETS.get(m, m), img_size=s, decoder=[512, 8, 16], batch=b,
                        iters=args.iters, num_data=args.num_data, num_negatives=args.num_negatives, threads=args.threads)
            t0 = time.perf_counter()
            r = run_worker_subprocess(spec) if not cuda else _inproc(spec)
            name = f"ViT-{m.capitalize()}/16 @ {s}"
            raw.append((m, s, b, name, r))
            if "local_peak" in r:
                peak[peak_key] = max(peak.get(peak_key, 0.0), r["local_peak"])
            print(f"  {name}, batch {b}: done in {time.perf_counter() - t0:.1f} s", flush=True)
    ref = peak.get(peak_key)  # the best GEMM rate seen anywhere in this run (contention only lowers it)
    for m, s, b, name, r in raw:
        if "error" in r:
            rows.append([name, str(b), "-", "-", "-", "-", "-", "-", "-", f"failed: {r['error']}"])
            continue
        med = statistics.median(r["times"])
        gflop_img = r["flops"] / b / 1e9
        achieved = r["flops"] / med / 1e9
        mfu = 100 * achieved / ref if ref else float("nan")
        if cuda:
            goal = f">= {GPU_GOAL_PCT:.0f} % (H100-class): " + ("met" if mfu >= GPU_GOAL_PCT else "NOT met")
        elif s >= 224 and m in ("small", "base"):
            goal = f">= {CPU_GOAL_PCT:.0f} %: " + ("met" if mfu >= CPU_GOAL_PCT else "NOT met")
        else:
            goal = "(no goal)"
        rows.append([name, str(b), f"{med * 1e3:.0f}", f"{b / med:.1f}", f"{gflop_img:.2f}", f"{achieved:.1f}",
                     f"{mfu:.1f}", f"{r['local_peak']:.0f}",
                     f"{r['peak_mib']:.0f} (+{r['peak_mib'] - r['base_mib']:.0f})", goal])
        results.append(dict(model=m, img=s, batch=b, img_s=b / med, mfu=mfu))
    mem_head = "peak MiB (+step)" + (" cuda alloc" if cuda else " VmHWM")
    print(table(["model", "batch", "step ms", "img/s", "GFLOP/img", "GFLOP/s", f"MFU % ({peak_key} peak)",
                 "GEMM GFLOP/s just before", mem_head, "goal"], rows))
    print(f"MFU = FlopCounterMode FLOPs of one step (fwd+bwd, attention counted as matmuls) / median step time / "
          f"best {peak_key} matmul rate measured in this run ({ref or float('nan'):.1f} GFLOP/s; section 1 and a "
          f"{'4096' if cuda else '2048'}-square GEMM in each config's process just before its steps: a low value "
          f"there means the machine was busy during that config). Decoder 512/8/16, mask 0.5, "
          f"N={args.num_data}, K={args.num_negatives}, {args.iters} measured step(s) after 1 warm-up.")
    if not cuda:
        print(f"GPU goal: >= {GPU_GOAL_PCT:.0f} % bf16 MFU on an H100-class GPU: n/a on this device")
        print("Peak memory: VmHWM (peak RSS) of a fresh subprocess per config; '+step' is the rise over the RSS "
              "after the model and optimiser were built.")
    return results


def _inproc(spec: dict) -> dict:
    try:
        torch.cuda.empty_cache()
        return train_worker(spec)
    except Exception as err:  # noqa: BLE001
        return {"error": f"{type(err).__name__}: {err}"[:200]}


# ------------------------------------------------------------------------------------------ 3. the data loader
def section_loader(args: argparse.Namespace) -> None:
    from torch.utils.data import DataLoader

    from gcmae.data.datasets import ImageFolderDataset
    from gcmae.data.sampler import SeededEpochSampler
    from gcmae.data.transforms import pretrain_transform
    from gcmae.train.optim import build_adamw

    if not PCAM_TRAIN.is_dir():
        print(f"{PCAM_TRAIN} missing: section skipped")
        return
    dev, cuda = args.device, args.device == "cuda"
    batch, img = 64, 96
    dataset = ImageFolderDataset(PCAM_TRAIN, pretrain_transform(img), "header")
    n_batches = 2 if args.quick else 12

    def make_loader(workers: int, epoch: int) -> DataLoader:
        sampler = SeededEpochSampler(len(dataset), batch, seed=0)
        sampler.set_epoch(epoch)
        return DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, pin_memory=cuda,
                          persistent_workers=False, drop_last=True)

    # loader alone: first batch (worker start-up) excluded
    rows, loader_rate = [], {}
    for w in (0, 1, 2):
        it = iter(make_loader(w, epoch=w))
        t0 = time.perf_counter()
        next(it)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(n_batches):
            next(it)
        dt = time.perf_counter() - t0
        loader_rate[w] = n_batches * batch / dt
        rows.append([str(w), f"{first * 1e3:.0f}", f"{dt / n_batches * 1e3:.0f}", f"{loader_rate[w]:.0f}"])
        del it
    print(f"Loader alone ({len(dataset)} PCam JPEGs, 96 px, RandomResizedCrop+flip+normalise, batch {batch}, "
          f"{n_batches} batches after the first):")
    print(table(["workers", "1st batch ms", "ms/batch", "img/s"], rows))

    # the demo model's trainer on synthetic tensors vs with the real loader (2 workers), interleaved
    model = build_model("vit_tiny", img, (128, 2, 4), len(dataset), 2048, dev)
    opt = build_adamw(model, 1e-4, 0.05, (0.9, 0.95))
    st = Stepper(model, opt, batch, img, len(dataset), dev)
    timer = Timer(dev)
    st(cuda)
    steps = 2 if args.quick else 4
    synth, real = [], {}
    for w in (0, 2):
        real[w] = []
    for r in range(1 if args.quick else 3):
        t0 = timer.now()
        for _ in range(steps):
            st(cuda)
        synth.append(steps * batch / (timer.now() - t0))
        for w in (2, 0) if r % 2 else (0, 2):
            it = iter(make_loader(w, epoch=10 + r))
            x, _, idx = next(it)  # worker start-up excluded
            t0 = timer.now()
            for _ in range(steps):
                x, _, idx = next(it)
                st(cuda, imgs=x.to(dev, non_blocking=True), indices=idx.to(dev))
            real[w].append(steps * batch / (timer.now() - t0))
            del it
    trainer = statistics.median(synth)
    rows = [["trainer, synthetic tensors (no loading)", f"{trainer:.0f}"],
            ["end-to-end, real data, 0 workers", f"{statistics.median(real[0]):.0f}"],
            ["end-to-end, real data, 2 workers", f"{statistics.median(real[2]):.0f}"]]
    print(f"Demo model (ViT-Tiny/16 @ 96, decoder 128/2/4, batch {batch}, N={len(dataset)}, K=2048), "
          f"{steps} steps x {len(synth)} interleaved rounds:")
    print(table(["loop", "img/s (median)"], rows))
    e2e2 = statistics.median(real[2])
    bottleneck = loader_rate[2] < trainer
    print(f"Verdict: loader alone at 2 workers {loader_rate[2]:.0f} img/s vs trainer {trainer:.0f} img/s -> the loader "
          f"{'IS' if bottleneck else 'is NOT'} the bottleneck on its own; end-to-end with 2 workers reaches "
          f"{100 * e2e2 / trainer:.0f} % of the synthetic-data trainer "
          f"({'workers compete with the trainer for the same ' + str(os.cpu_count()) + ' cores' if not cuda else 'GPU'}).")


# ------------------------------------------------------------------------------ 4. variants: try what helps
def section_variants(args: argparse.Namespace) -> None:
    from gcmae.train.optim import build_adamw

    dev, cuda = args.device, args.device == "cuda"
    img, b = (96 if args.quick and not cuda else 224), args.variant_batch
    model = build_model("vit_small", img, (512, 8, 16), args.num_data, args.num_negatives, dev)
    base_opt = build_adamw(model, 1e-4, 0.05, (0.9, 0.95))  # the library's optimiser (fused on CPU and CUDA)
    groups = [{k: v for k, v in g.items() if k != "params"} | {"params": g["params"]} for g in base_opt.param_groups]
    opts = {"library": base_opt}
    for kind in ("foreach", "forloop"):  # fused is the library's own choice, so the baseline already
        try:
            kw = {"foreach": kind == "foreach"}
            opts[kind] = torch.optim.AdamW([dict(g) for g in groups], lr=1e-4, betas=(0.9, 0.95), **kw)
        except Exception as err:  # noqa: BLE001
            print(f"  AdamW {kind}: unavailable ({type(err).__name__}: {err})")
    st = Stepper(model, base_opt, b, img, args.num_data, dev)
    timer = Timer(dev)
    threads0 = torch.get_num_threads()
    base_bf16 = cuda
    # (name, bf16, fused_attn, optimiser, threads, compiled)
    variants = [("baseline (library: fused attn, " + ("bf16" if cuda else "fp32") + ", AdamW fused, "
                 f"{threads0} threads)", base_bf16, True, "library", threads0, False),
                ("fused attention OFF", base_bf16, False, "library", threads0, False)]
    if not cuda:
        variants.append(("bf16 autocast", True, True, "library", threads0, False))
    else:
        variants.append(("fp32 (no autocast)", False, True, "library", threads0, False))
    for kind in ("foreach", "forloop"):
        if kind in opts:
            variants.append((f"AdamW {'for-loop (foreach=False)' if kind == 'forloop' else kind + '=True'}",
                             base_bf16, True, kind, threads0, False))
    if not cuda and threads0 > 1:
        variants.append(("1 thread", base_bf16, True, "library", 1, False))
    compiled = None  # (encoder blocks, decoder blocks) compiled; swapped in for the compiled variant only
    if args.compile:
        try:
            enc_blocks, dec_blocks = model.encoder.blocks, model.decoder.blocks
            compiled = (torch.compile(enc_blocks), torch.compile(dec_blocks))
            model.encoder.blocks, model.decoder.blocks = compiled
            t0 = time.perf_counter()
            st(base_bf16)  # compiles
            t_comp = time.perf_counter() - t0
            model.encoder.blocks, model.decoder.blocks = enc_blocks, dec_blocks
            if t_comp > 120:
                print(f"  torch.compile took {t_comp:.0f} s (> 120 s): variant skipped")
                compiled = None
            else:
                print(f"  torch.compile (encoder and decoder blocks): first step {t_comp:.1f} s")
                variants.append(("torch.compile(blocks)", base_bf16, True, "library", threads0, True))
        except Exception as err:  # noqa: BLE001
            model.encoder.blocks, model.decoder.blocks = enc_blocks, dec_blocks
            print(f"  torch.compile failed ({type(err).__name__}: {str(err)[:150]}): variant skipped")
            compiled = None
    else:
        print("  torch.compile: not tried (pass --compile)")

    def run(v) -> float:
        _, bf16, fused, opt_kind, threads, comp = v
        set_fused_attn(model, fused)
        torch.set_num_threads(threads)
        orig = (model.encoder.blocks, model.decoder.blocks)
        if comp:
            model.encoder.blocks, model.decoder.blocks = compiled
        t0 = timer.now()
        st(bf16, opt=opts[opt_kind])
        dt = timer.now() - t0
        model.encoder.blocks, model.decoder.blocks = orig
        torch.set_num_threads(threads0)
        return dt

    rounds = 1 + (1 if args.quick else (2 if not cuda else 20))
    times = {v[0]: [] for v in variants}
    ratios = {v[0]: [] for v in variants}
    n = len(variants)
    for r in range(rounds):
        order = [variants[(r + j) % n] for j in range(n)]
        this = {}
        for v in order:
            this[v[0]] = run(v)
        if r == 0:
            continue  # warm-up round (each variant's first step: optimiser state, bf16 weight casts, ...)
        for v in variants:
            times[v[0]].append(this[v[0]])
            ratios[v[0]].append(this[variants[0][0]] / this[v[0]])
    set_fused_attn(model, True)
    rows = []
    for v in variants:
        med = statistics.median(times[v[0]])
        sp = statistics.median(ratios[v[0]])
        verdict = "" if v is variants[0] else ("helps" if sp > 1.05 else ("hurts" if sp < 0.95 else "no change (±5 %)"))
        rows.append([v[0], f"{med * 1e3:.0f}", f"{b / med:.2f}", f"{sp:.2f}x", verdict])
    print(f"ViT-Small/16 @ {img}, decoder 512/8/16, batch {b}; {rounds - 1} measured round(s) after 1 warm-up, "
          f"variants interleaved with a rotating order; speed-up = median over rounds of baseline time / variant time:")
    print(table(["variant", "step ms", "img/s", "speed-up", "verdict"], rows))


# ---------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._worker:
        spec = json.loads(args._worker)
        print("RESULT " + json.dumps(train_worker(spec)), flush=True)
        return 0
    if benchmark_device("throughput.py", args.device, args.threads) is None:
        return 0
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 peak is true fp32
    t_start = time.perf_counter()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    print(f"throughput.py: torch {torch.__version__}, device {device_name(args.device)}, "
          f"torch threads {torch.get_num_threads()}" + (", bf16 autocast + fused attention" if args.device == "cuda" else "")
          + (", --quick" if args.quick else ""))
    print(load_line("start"), flush=True)
    peak: dict[str, float] = {}
    sections = [
        ("peak", "1. Dense-matmul peak (measured now)", lambda: peak.update(matmul_peak(args))),
        ("train", "2. GCMAE training throughput, MFU and peak memory (synthetic images)", lambda: section_train(args, peak)),
        ("loader", "3. Data loader vs trainer (demo setting)", lambda: section_loader(args)),
        ("variants", "4. Try what helps: step variants side by side", lambda: section_variants(args)),
    ]
    for key, title, fn in sections:
        if key in skip:
            continue
        if key == "train" and "fp32" not in peak and "peak" in skip:
            print("(section 2 needs section 1's peak; running a quick peak)")
            peak.update(matmul_peak(argparse.Namespace(**{**vars(args), "quick": True})))
        print(f"\n=== {title} ===", flush=True)
        t0 = time.perf_counter()
        try:
            fn()
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            print(f"section '{key}' crashed (report continues)")
        print(f"[{key}: {time.perf_counter() - t0:.1f} s]  " + load_line(f"after {key}"), flush=True)
    print(f"\ntotal wall time {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    run_report(main)
