"""`trainer.precision=auto`: bf16-mixed where this device trains faster with it, 32-true elsewhere.

CPUs differ too much to decide from flags: bf16 autocast measured 1.79x fp32 for a ViT-S step on one CPU with AMX,
1.1-1.6x for ViT-Tiny on an AVX-512-BF16 CPU without AMX, and far slower than fp32 on AVX2-only CPUs. So on a CPU
the choice times a few forward + backward passes of the model itself in both precisions and keeps bf16 only when it
is clearly faster. On CUDA, bf16-mixed where the GPU supports it. The memory bank stays fp32 either way.
"""
from __future__ import annotations

import logging
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from gcmae.models.gcmae import GCMAE

log = logging.getLogger(__name__)

MIN_SPEEDUP = 1.1  # bf16 must beat fp32 by this much to be chosen on a CPU (timing noise is a few percent)


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # a Lightning precision string
    reason: str


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _step_seconds(model: GCMAE, imgs: torch.Tensor, noise: torch.Tensor, bf16: bool) -> float:
    """Wall time of one forward + backward of `model`, in bf16 autocast or fp32."""
    start = time.perf_counter()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(imgs, noise)
        loss = out.embedding.float().sum() + (out.pred.float().square().mean() if out.pred is not None else 0)
    loss.backward()
    return time.perf_counter() - start


def interleaved_speedup(step_seconds: Callable[[bool], float], repeats: int) -> float:
    """Median over `repeats` pairs of fp32 time / bf16 time of `step_seconds(bf16)`, after one untimed warm-up pass
    of each. The two steps of a pair run back to back (in alternating order), so a load that comes or goes while
    measuring (a second run starting beside this one) spoils at most one pair's ratio, which the median drops."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    step_seconds(False)
    step_seconds(True)
    ratios = []
    for i in range(repeats):
        if i % 2:
            bf16 = step_seconds(True)
            fp32 = step_seconds(False)
        else:
            fp32 = step_seconds(False)
            bf16 = step_seconds(True)
        ratios.append(fp32 / bf16)
    return statistics.median(ratios)


def measure_cpu_bf16_speedup(model: GCMAE, img_size: int, batch_size: int = 32, repeats: int = 5) -> float:
    """fp32 time / bf16-autocast time of a forward + backward of `model` on a random batch (`interleaved_speedup`;
    no optimiser step, no memory-bank update, gradients cleared; the global RNG, which drop-path draws from, is
    restored, so a run with `auto` trains on the same random stream as one with its choice spelt out)."""
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randn(batch_size, 3, img_size, img_size, generator=gen)
    noise = torch.rand(batch_size, model.encoder.patch_embed.num_patches, generator=gen)
    was_training = model.training
    model.train()
    try:
        with torch.random.fork_rng(devices=[]):
            return interleaved_speedup(lambda bf16: _step_seconds(model, imgs, noise, bf16), repeats)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def resolve_precision(precision: str, accelerator: str, model: GCMAE, img_size: int) -> PrecisionChoice:
    """The Lightning precision to train with: `precision` itself unless it is "auto"."""
    if precision != "auto":
        return PrecisionChoice(precision, "as configured")
    use_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if use_cuda:
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16-mixed", f"{torch.cuda.get_device_name()} supports bf16")
        return PrecisionChoice("32-true", "this GPU has no bf16 support")
    speedup = measure_cpu_bf16_speedup(model, img_size)
    chosen = "bf16-mixed" if speedup >= MIN_SPEEDUP else "32-true"
    return PrecisionChoice(chosen, f"{cpu_name()}, {torch.get_num_threads()} thread(s): a bf16 step measured "
                                   f"{speedup:.2f}x fp32 (bf16 needs >= {MIN_SPEEDUP}x)")
