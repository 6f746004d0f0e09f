"""`gcmae replicate`: the paper's comparison under one compute budget.

For every seed, pretrains each method (GCMAE, MAE = contrast weight 0, contrast-only, ...: a base pretraining
config plus per-method overrides) on the same data for the same epochs, adds a random-init baseline, probes
every encoder with frozen-feature kNN and the linear probe on each evaluation set (`transfer`), and writes the
table (mean ± std over seeds), every row, and a bar chart. Finished pretraining runs and evaluations are reused,
so an interrupted replica resumes where it stopped.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gcmae.config import ConfigError, apply_overrides, dump_yaml, from_dict, load_pretrain_config, load_yaml
from gcmae.experiments.transfer import EvalConfig, ModelSpec, evaluate_model, write_rows_csv
from gcmae.io.atomic import write_text_atomic
from gcmae.train.pretrain import last_checkpoint, run_pretrain
from gcmae.viz.replica import plot_replica

log = logging.getLogger(__name__)
RANDOM_INIT = "random_init"


@dataclass
class ReplicateConfig:
    out: str = "runs/replicate"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    pretrain_config: str = "configs/pretrain/demo_vit_tiny_cpu.yaml"
    pretrain_overrides: list[str] = field(default_factory=list)  # applied to every method
    pretrain_set: str = "pcam"  # the name of pretrain_config's data.train_dir in the table
    methods: dict[str, list[str]] = field(default_factory=dict)  # method -> its own pretraining overrides
    random_init: bool = True  # add the untrained encoder as a baseline
    eval: EvalConfig = field(default_factory=EvalConfig)
    table_metric: str = "accuracy"
    table_columns: list[str] = field(default_factory=list)  # "eval_set/protocol"; empty: all


def load_replicate_config(path: str | Path, overrides: list[str] | None = None) -> ReplicateConfig:
    data = apply_overrides(load_yaml(path), overrides or [])
    try:
        cfg = from_dict(ReplicateConfig, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    if not cfg.seeds or not (cfg.methods or cfg.random_init):
        raise ConfigError(f"{path}: needs at least one seed and one method")
    if RANDOM_INIT in cfg.methods:
        raise ConfigError(f"{path}: {RANDOM_INIT!r} is the untrained baseline (random_init: true), not a method")
    return cfg


def _pretrain(cfg: ReplicateConfig, method: str, seed: int) -> tuple[Path, float]:
    """Pretrain (or reuse) one method/seed; returns its last checkpoint and the seconds its training took."""
    out_dir = Path(cfg.out) / "pretrain" / f"{method}-seed{seed}"
    overrides = [*cfg.pretrain_overrides, *cfg.methods[method], f"trainer.seed={seed}", f"trainer.out_dir={out_dir}"]
    pcfg = load_pretrain_config(cfg.pretrain_config, overrides)
    done = out_dir / "finished.json"
    if done.is_file():  # reused: report the time it took when it ran
        return last_checkpoint(pcfg), float(json.loads(done.read_text()).get("seconds", 0.0))
    started = time.time()
    run_pretrain(pcfg, resume=True)
    seconds = time.time() - started
    write_text_atomic(done, json.dumps({"method": method, "seed": seed, "seconds": seconds}) + "\n")
    return last_checkpoint(pcfg), seconds


def _random_spec(cfg: ReplicateConfig, seed: int) -> ModelSpec:
    m = load_pretrain_config(cfg.pretrain_config, cfg.pretrain_overrides).model
    return ModelSpec(RANDOM_INIT, "random", "none", seed, m.encoder, m.img_size, m.patch_size)


def summarise(rows: list[dict[str, Any]], metric: str) -> dict[tuple[str, str, str], tuple[float, float, int]]:
    """(method, eval_set, protocol) -> (mean, sample std, number of seeds) of `metric`."""
    groups: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        if r.get(metric) is not None:
            groups.setdefault((r["method"], r["eval_set"], r["protocol"]), []).append(float(r[metric]))
    return {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
            for k, v in groups.items()}


def replica_table(summary: dict[tuple[str, str, str], tuple[float, float, int]], methods: list[str],
                  columns: list[str]) -> str:
    """Markdown: one row per method, one column per eval_set/protocol, cells `mean ± std` (best in bold)."""
    best = {c: max((summary[(m, *c.split("/"))][0] for m in methods if (m, *c.split("/")) in summary),
                   default=None) for c in columns}
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for m in methods:
        cells = []
        for c in columns:
            key = (m, *c.split("/"))
            if key not in summary:
                cells.append("–")
                continue
            mean, std, _ = summary[key]
            text = f"{100 * mean:.1f} ± {100 * std:.1f}"
            cells.append(f"**{text}**" if mean == best[c] else text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_replicate(cfg: ReplicateConfig) -> dict[str, Any]:
    """Pretrain, evaluate and tabulate (see module doc); returns the summary also written to `replica.json`."""
    cfg.eval.check()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.yaml", dump_yaml(cfg))
    started = time.time()
    rows: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    methods = [*cfg.methods, *([RANDOM_INIT] if cfg.random_init else [])]
    for seed in cfg.seeds:
        for method in methods:
            log.info("seed %d, %s", seed, method)
            if method == RANDOM_INIT:
                spec = _random_spec(cfg, seed)
            else:
                ckpt, seconds = _pretrain(cfg, method, seed)
                timings[f"pretrain/{method}-seed{seed}"] = seconds
                spec = ModelSpec(method, str(ckpt), cfg.pretrain_set, seed)
            t0 = time.time()
            rows += evaluate_model(spec, cfg.eval, out)
            timings[f"eval/{method}-seed{seed}"] = time.time() - t0
            write_rows_csv(out / "replica_rows.csv", rows)
    metric = cfg.table_metric
    summary = summarise(rows, metric)
    columns = cfg.table_columns or sorted({f"{s}/{p}" for _, s, p in summary}, key=lambda c: c.split("/"))
    table = replica_table(summary, methods, columns)
    plot_replica(summary, methods, columns, metric, out / "replica_bars.png",
                 {(r["method"], r["eval_set"], r["protocol"], r["seed"]): r[metric] for r in rows})
    wall = time.time() - started
    pretrain_s = sum(v for k, v in timings.items() if k.startswith("pretrain/"))
    sets = "\n".join(f"- **{s.name}**: {s.describe()}" for s in cfg.eval.eval_sets)
    report = (f"# Replica: {', '.join(methods)}\n\n{metric} in %, mean ± sample std over seeds {cfg.seeds}; "
              f"frozen {cfg.eval.pool} features, weighted kNN (T = {cfg.eval.temperature}), 1-NN, and a logistic-"
              f"regression linear probe (logreg). Pretraining: `{cfg.pretrain_config}` with "
              f"{cfg.pretrain_overrides or 'no'} overrides, on `{cfg.pretrain_set}`.\n\n{sets}\n\n{table}\n\n"
              f"![bars](replica_bars.png)\n\nAll rows: `replica_rows.csv`. Pretraining took {pretrain_s:.0f} s in all "
              f"(recorded when each run trained); this invocation's wall time: {wall:.0f} s.\n")
    write_text_atomic(out / "replica.md", report)
    payload = {"metric": metric, "seeds": cfg.seeds, "methods": methods, "columns": columns,
               "summary": {"/".join(k): {"mean": v[0], "std": v[1], "n": v[2]} for k, v in summary.items()},
               "timings_s": timings, "pretrain_s": pretrain_s, "wall_s": wall}
    write_text_atomic(out / "replica.json", json.dumps(payload, indent=2) + "\n")
    print(table)
    print(f"wall time {wall:.0f} s; outputs in {out} (replica.md, replica_rows.csv, replica_bars.png)")
    return payload
