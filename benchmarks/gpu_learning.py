"""One prepared GPU check, time-boxed (default 8 min end to end): step speed + MFU, and a small learning comparison.

Stages: env (date UTC, torch, GPU and CPU names); step (img/s of fwd + bwd + AdamW + bank flush on synthetic 96-px
images, bf16 autocast and fp32, for the model of each RUNS entry, ViT-S/16; bf16 MFU = FlopCounterMode FLOPs of one
fwd+bwd x steps/s / peak); pretrain (`gcmae pretrain` with configs/pretrain/pcam_cpu_hour.yaml + RUNS overrides on
PCam train, ViT-S, batch 256, bf16-mixed, --epochs, a timeout per run); probe (`python -m gcmae.experiments.pcam_probe`
of each final checkpoint and a random init: logreg + kNN balanced accuracy, cls and mean pools); extract (`gcmae tile`
of data/samples/slides, then `gcmae extract` with the first run's checkpoint: tiles/s end to end, and net of process
start + model load, timed by a second run that finds every slide done). A failing stage is recorded (stage + error)
and the script goes on; results.json and results.md in --out are replaced atomically after every stage.

    .venv/bin/python benchmarks/gpu_learning.py --out $OUT                                      # CUDA, <= 8 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gpu_learning.py --smoke --out /tmp/gpu_smoke  # CPU code path
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

CONFIG = ROOT / "configs" / "pretrain" / "pcam_cpu_hour.yaml"
# (name, `gcmae pretrain` overrides): the runs compared; the first one's checkpoint is also used by `extract`
RUNS: list[tuple[str, list[str]]] = [
    ("mae", ["loss.contrast_weight=0"]),
    ("gcmae_infonce", ["loss.contrast_weight=1.0", "loss.objective=infonce"]),
]
# dense bf16 tensor-core peak, TFLOP/s (NVIDIA data sheets), by a regex on torch.cuda.get_device_name()
PEAK_TFLOPS: list[tuple[str, float]] = [(r"H200", 989.0), (r"H100(?!.*(PCIe|NVL))", 989.0), (r"A100", 312.0),
                                        (r"\bL4\b", 121.0)]


class TimeBoxExceeded(Exception):  # noqa: N818
    """The script's own time box (or a stage's share of it) ran out."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "runs" / "gpu_learning"))
    pcam = [d / "shared/data/pcam" for d in (ROOT.parent, ROOT) if (d / "shared/data/pcam").is_dir()]
    p.add_argument("--pcam", type=Path, help="folder with train/ and valid/ class folders (default: the full PCam "
                   "in ../shared/data/pcam, else data/samples/pcam)", default=(pcam or [ROOT / "data/samples/pcam"])[0])
    p.add_argument("--smoke", action="store_true", help="CPU code-path check: ViT-Tiny, a few dozen images, 1 epoch")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--time-box", type=float, default=480.0, help="seconds for everything (hard)")
    p.add_argument("--run-timeout", type=float, default=120.0, help="seconds per pretraining run")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU, for MFU")
    a = p.parse_args()
    a.device, a.peak_source = "cpu" if a.smoke else "cuda", "--peak-tflops" if a.peak_tflops else None
    if a.smoke:
        a.epochs, a.run_timeout, a.encoder, a.batch, a.warmup, a.iters = 1, min(a.run_timeout, 60), "vit_tiny", 8, 1, 2
    else:
        a.encoder, a.batch, a.warmup, a.iters = "vit_small", 256, 5, 20
        if not torch.cuda.is_available():
            p.error("CUDA is not available (use --smoke for the CPU code-path check)")
        name = torch.cuda.get_device_name()
        if a.peak_tflops is None:
            a.peak_tflops, a.peak_source = next(((v, f"PEAK_TFLOPS /{pat}/") for pat, v in PEAK_TFLOPS
                                                 if re.search(pat, name)), (None, None))
            if a.peak_tflops is None:
                p.error(f"no known bf16 peak for {name!r}: pass --peak-tflops")
    return a


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a, self.out = a, a.out.resolve()
        self.deadline = time.monotonic() + a.time_box
        self.results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(a).items()}, "stages": {}, "errors": []}
        path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, "PYTHONPATH": path}  # subprocesses import this checkout's gcmae
        (self.out / "logs").mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        for name, text in (("results.json", json.dumps(self.results, indent=1, default=str) + "\n"),
                           ("results.md", markdown(self.results))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.out / name)

    def stage(self, name: str, fn: Callable[[dict[str, Any]], None]) -> None:
        rec: dict[str, Any] = {"status": "running"}
        self.results["stages"][name] = rec
        t0 = time.monotonic()
        print(f"== {name} ({self.left():.0f} s left)", flush=True)
        try:
            if self.left() < 5:
                raise TimeBoxExceeded("no time left in the time box")
            fn(rec)
            rec["status"] = "ok"
        except Exception as err:  # noqa: BLE001 - a stage's failure is a result
            traceback.print_exc()
            rec["status"] = "timeout" if isinstance(err, TimeBoxExceeded) else "failed"
            rec["error"] = f"{type(err).__name__}: {err}"
            self.results["errors"].append({"stage": name, "error": rec["error"]})
        rec["seconds"] = round(time.monotonic() - t0, 1)
        self.save()

    def run(self, cmd: list[str], log: str, timeout: float, reserve: float = 0.0) -> tuple[int | None, float]:
        """Run `cmd` (own process group, output to logs/<log>.log) for at most `timeout` s and never past the time
        box minus `reserve`; (exit code or None on timeout, seconds)."""
        timeout = min(timeout, self.left() - reserve)
        if timeout < 5:
            raise TimeBoxExceeded(f"{log}: too little time left to start")
        print("$ " + " ".join(cmd), flush=True)
        t0 = time.monotonic()
        with open(self.out / "logs" / f"{log}.log", "w") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env,
                                    start_new_session=True)
            try:
                rc: int | None = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                rc = None
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        return rc, time.monotonic() - t0

    def check(self, rc: int | None, log: str) -> None:
        if rc != 0:
            tail = (self.out / "logs" / f"{log}.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{log}: {'timed out' if rc is None else f'exit {rc}'}: {' | '.join(tail)}")


def env_stage(b: Bench, rec: dict[str, Any]) -> None:
    from gcmae.train.precision import cpu_name

    rec.update(date_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"), torch=torch.__version__,
               device=torch.cuda.get_device_name() if b.a.device == "cuda" else "cpu", cpu=cpu_name(),
               cpu_threads=torch.get_num_threads(), pcam=str(b.a.pcam), peak_tflops=b.a.peak_tflops,
               peak_source=b.a.peak_source)
    print(rec, flush=True)


def step_stage(b: Bench, rec: dict[str, Any]) -> None:
    num_data = max(b.a.batch, count_images(b.a.pcam / "train"))
    rec.update(batch=b.a.batch, num_data=num_data, rows=[])
    for name, overrides in RUNS:
        measure_step(b.a, name, overrides, num_data, rec["rows"])
    if b.a.device == "cuda":
        torch.cuda.empty_cache()  # give the memory back before the pretraining subprocesses


def measure_step(a: argparse.Namespace, name: str, overrides: list[str], num_data: int, rows: list[dict]) -> None:
    """img/s of fwd + bwd + AdamW + bank flush (as PretrainModule does it) in bf16 autocast and fp32."""
    from timm.models.vision_transformer import Attention
    from torch.utils.flop_counter import FlopCounterMode

    from gcmae import create_model
    from gcmae.config import load_pretrain_config
    from gcmae.train.optim import build_adamw

    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    cfg = load_pretrain_config(CONFIG, [*overrides, f"model.encoder={a.encoder}"])
    loss_kw = {k: v for k, v in asdict(cfg.loss).items() if k != "contrast_warmup_epochs"}
    torch.manual_seed(0)
    model = create_model(num_data=num_data, **asdict(cfg.model), **loss_kw).to(dev).train()
    opt = build_adamw(model, 1e-4, 0.05, (0.9, 0.95))
    imgs = torch.randn(a.batch, 3, cfg.model.img_size, cfg.model.img_size, device=dev)

    def step(bf16: bool, seed: int, update: bool = True) -> None:
        opt.zero_grad(set_to_none=True)
        idx = torch.randperm(num_data)[: a.batch].to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model.training_losses(imgs, idx, seed)["loss"]
        loss.backward()
        if update:
            opt.step()
        model.bank.flush()

    attn = [(m, m.fused_attn) for m in model.modules() if isinstance(m, Attention)]
    for m, _ in attn:  # explicit matmuls while counting, whatever sdpa kernels the counter knows
        m.fused_attn = False
    with FlopCounterMode(display=False) as fc:  # one fwd + bwd, counted once
        step(True, 0, update=False)
    for m, fused in attn:
        m.fused_attn = fused
    flops = float(fc.get_total_flops())
    for bf16 in (True, False):
        for i in range(a.warmup + a.iters):
            if i == a.warmup:
                sync()
                t0 = time.perf_counter()
            step(bf16, i + 1)
        sync()
        dt = (time.perf_counter() - t0) / a.iters
        row = {"run": name, "precision": "bf16" if bf16 else "fp32", "img_s": round(a.batch / dt, 1),
               "step_ms": round(dt * 1e3, 2), "gflop_fwd_bwd": round(flops / 1e9, 1)}
        if bf16 and a.peak_tflops:
            row["mfu_pct"] = round(100 * flops / dt / (a.peak_tflops * 1e12), 2)
        print(row, flush=True)
        rows.append(row)


def count_images(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def smoke_subset(src: Path, dst: Path, per_class: dict[str, int]) -> Path:
    """A copy of the first few images per class of each split (the smoke run's dataset)."""
    shutil.rmtree(dst, ignore_errors=True)
    for split, n in per_class.items():
        for cls_dir in sorted(p for p in (src / split).iterdir() if p.is_dir()):
            (dst / split / cls_dir.name).mkdir(parents=True)
            for f in sorted(cls_dir.iterdir())[:n]:
                shutil.copy2(f, dst / split / cls_dir.name / f.name)
    return dst


def checkpoint(b: Bench, name: str) -> Path:
    return b.out / "pretrain" / name / "checkpoints" / "last.ckpt"


def pretrain_stage(b: Bench, rec: dict[str, Any]) -> None:
    a, n = b.a, count_images(b.a.pcam / "train")
    seen = n // a.batch * a.batch  # images per epoch (drop_last)
    rec.update(train_images=n, epochs=a.epochs, batch=a.batch, runs={})
    for name, overrides in RUNS:
        ckpt, log = checkpoint(b, name), f"pretrain_{name}"
        cmd = [sys.executable, "-m", "gcmae", "pretrain", "--config", str(CONFIG), "--no-resume", *overrides,
               f"model.encoder={a.encoder}", f"trainer.accelerator={'gpu' if a.device == 'cuda' else 'cpu'}",
               f"trainer.precision={'bf16-mixed' if a.device == 'cuda' else 'auto'}", f"data.batch_size={a.batch}",
               f"data.train_dir={a.pcam / 'train'}", f"data.cache_dir={b.out / 'cache'}",
               f"trainer.out_dir={ckpt.parents[1]}", f"optim.epochs={a.epochs}"]
        shutil.rmtree(ckpt.parents[1], ignore_errors=True)  # a fresh run, and a fresh metrics.csv
        rc, secs = b.run(cmd, log, a.run_timeout, reserve=90.0 if a.device == "cuda" else 30.0)
        now = datetime.now()
        metrics = ckpt.parents[1] / "logs" / "metrics.csv"
        ends = [r for r in csv.DictReader(metrics.open()) if r.get("train/loss_epoch")] if metrics.exists() else []
        # fit time: from the log line written once the data are loaded and the precision chosen, to the exit
        t = re.search(r"^(\d\d):(\d\d):(\d\d) INFO \S+: precision", (b.out / "logs" / f"{log}.log").read_text(), re.M)
        fit_s = ((now.hour * 3600 + now.minute * 60 + now.second - int(t[1]) * 3600 - int(t[2]) * 60 - int(t[3]))
                 % 86400) if t else 0
        r = {"status": "ok" if rc == 0 else ("timeout" if rc is None else f"exit {rc}"), "epochs_done": len(ends),
             "final_loss": round(float(ends[-1]["train/loss_epoch"]), 4) if ends else None,
             "seconds": round(secs, 1), "img_s_total": round(seen * len(ends) / secs, 1),
             "img_s_fit": round(seen * len(ends) / max(1, fit_s), 1) if fit_s else None,
             "checkpoint": str(ckpt) if ckpt.exists() else None}
        rec["runs"][name] = r
        print(name, r, flush=True)
        b.save()
    bad = {k: v["status"] for k, v in rec["runs"].items() if v["status"] != "ok"}
    if bad:
        raise RuntimeError(f"pretraining runs not ok: {bad} (see logs/pretrain_*.log)")


def probe_stage(b: Bench, rec: dict[str, Any]) -> None:
    a, probe_dir = b.a, b.out / "probe"
    shutil.rmtree(probe_dir, ignore_errors=True)
    specs = [(name, str(checkpoint(b, name))) for name, _ in RUNS if checkpoint(b, name).exists()]
    specs.append(("random_init", f"random:{a.encoder}:16:0"))
    errors, cuda = [], a.device == "cuda"
    for label, spec in specs:
        cmd = [sys.executable, "-m", "gcmae.experiments.pcam_probe", "--train", str(a.pcam / "train"), "--val",
               str(a.pcam / "valid"), "--out", str(probe_dir), "--label", label, "--cache-dir", str(b.out / "cache"),
               "--device", a.device, spec]
        rc, _ = b.run(cmd, f"probe_{label}", 90.0 if cuda else 45.0, reserve=40.0 if cuda else 10.0)
        try:
            b.check(rc, f"probe_{label}")
        except RuntimeError as err:
            errors.append(str(err))
    rec["rows"] = []
    for f in sorted(probe_dir.glob("*.json")):
        r = json.loads(f.read_text())
        rec["rows"].append({"encoder": r["label"], "pool": r["pool"], "n_train": r["num_train"],
                            "n_val": r["num_val"],
                            **{m: round(r[m]["balanced_accuracy"], 4) for m in ("logreg", "knn20", "knn200")}})
    if errors:
        raise RuntimeError("; ".join(errors))


def extract_stage(b: Bench, rec: dict[str, Any]) -> None:
    a, job = b.a, b.out / "tiles"
    cuda = a.device == "cuda"
    shutil.rmtree(job, ignore_errors=True)
    overlap = 160 if cuda else 0  # more (overlapping) tiles on a GPU, so the timing is not all start-up
    rc, secs = b.run([sys.executable, "-m", "gcmae", "tile", str(ROOT / "data/samples/slides"), "--out", str(job),
                      "--overlap", str(overlap)], "tile", 60.0)
    b.check(rc, "tile")
    ckpt = checkpoint(b, RUNS[0][0])
    enc = (["--checkpoint", str(ckpt)] if ckpt.exists()
           else ["--checkpoint", "random", "--encoder", a.encoder, "--img-size", "96", "--patch-size", "16"])
    cmd = [sys.executable, "-m", "gcmae", "extract", str(job), *enc, "--device", a.device,
           "--precision", "bf16" if cuda else "fp32", "--batch-size", str(a.batch if cuda else 32),
           "--num-workers", "8" if cuda else "0"]
    rec.update(tile_overlap=overlap, tile_seconds=round(secs, 1), encoder=" ".join(enc[:4]), device=a.device)
    rc, secs = b.run(cmd, "extract", 120.0 if cuda else 60.0)
    b.check(rc, "extract")
    m = re.search(r"embedded \((\d+) tiles\)", (b.out / "logs" / "extract.log").read_text())
    tiles = int(m.group(1)) if m else 0
    rec.update(tiles=tiles, seconds_total=round(secs, 1), tiles_s=round(tiles / secs, 1))
    b.save()
    rc, startup = b.run(cmd, "extract_again", 60.0)  # every slide is complete: start + model load only
    b.check(rc, "extract_again")
    rec.update(seconds_startup=round(startup, 1),
               tiles_s_net=round(tiles / (secs - startup), 1) if secs > startup + 1 else None)


def markdown(r: dict[str, Any]) -> str:
    st = r["stages"]
    out = ["# GPU learning check", ""]
    if "env" in st:
        e = st["env"]
        out += [f"- {k}: {e.get(k)}" for k in ("date_utc", "torch", "device", "cpu", "cpu_threads", "pcam",
                                                "peak_tflops", "peak_source")] + [""]

    def tbl(title: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            keys = list(dict.fromkeys(k for row in rows for k in row))
            out.extend([f"## {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)])
            out.extend("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in rows)
            out.append("")

    tbl("Training step (synthetic 96-px input)", st.get("step", {}).get("rows", []))
    tbl("Pretraining (gcmae pretrain)", [{"run": k, **v} for k, v in st.get("pretrain", {}).get("runs", {}).items()])
    tbl("Frozen probe (balanced accuracy)", st.get("probe", {}).get("rows", []))
    ex = st.get("extract", {})
    tbl("gcmae extract (tiles/s: end to end incl. process start; net: minus a run that only starts and skips)",
        [{k: ex[k] for k in ("device", "encoder", "tile_overlap", "tiles", "seconds_total", "seconds_startup",
                             "tiles_s", "tiles_s_net") if k in ex}] if "tiles" in ex else [])
    out += ["## Stages", "", "| stage | status | seconds | error |", "|---|---|---|---|"]
    out += [f"| {k} | {v.get('status')} | {v.get('seconds', '')} | {v.get('error', '')} |" for k, v in st.items()]
    return "\n".join(out) + "\n"


def main() -> None:
    a = parse_args()
    b = Bench(a)
    if a.smoke:
        a.pcam = smoke_subset(a.pcam, b.out / "smoke_pcam", {"train": 24, "valid": 16})

    def alarm(signum: int, frame: object) -> None:
        raise TimeBoxExceeded(f"time box of {a.time_box:.0f} s exceeded")

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(max(1, int(a.time_box)))
    for name, fn in (("env", env_stage), ("step", step_stage), ("pretrain", pretrain_stage), ("probe", probe_stage),
                     ("extract", extract_stage)):
        b.stage(name, lambda rec, fn=fn: fn(b, rec))
    signal.alarm(0)
    print(markdown(b.results))
    print(f"results: {b.out / 'results.md'}, {b.out / 'results.json'}")


if __name__ == "__main__":
    main()
