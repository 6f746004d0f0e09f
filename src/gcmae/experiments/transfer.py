"""`gcmae transfer`: encoders pretrained on dataset A, probed on datasets B, C, ... with frozen features.

Writes one row per (pretrain set, method, eval set, protocol) to `transfer.csv`, a Markdown table and each
model's full metrics (`models/<tag>/metrics.json`). A model whose metrics exist for the same weights and settings
is not evaluated again, so an interrupted run resumes.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from gcmae.config import PRETRAINED_STAIN, STAIN_OPTION_CHOICES, ConfigError, dump_yaml, from_dict, load_yaml
from gcmae.data.folders import open_folder
from gcmae.device import resolve_device
from gcmae.encoders.loading import RANDOM, Encoder, file_digest, load_encoder
from gcmae.evaluate.common import open_labelled_pair
from gcmae.stain import StainNormalizer, make_normalizer
from gcmae.evaluate.protocols import (
    SUMMARY_METRICS,
    EvalSet,
    ProtocolSettings,
    check_fold_sizes,
    evaluate_encoder,
    result_rows,
)
from gcmae.io.atomic import write_csv_atomic, write_text_atomic
from gcmae.io.paths import safe_name
from gcmae.pretrained import is_pretrained_name
from gcmae.pretrained import resolve as resolve_pretrained
from gcmae.scoring.report import dumps_json

log = logging.getLogger(__name__)
ROW_KEYS = ("pretrain_set", "method", "seed")


@dataclass
class ModelSpec:
    """One encoder to probe: `checkpoint` is a file / export folder, or "random" (then `encoder` is needed)."""

    method: str
    checkpoint: str
    pretrain_set: str = "none"
    seed: int = 0
    encoder: str | None = None
    img_size: int | None = None
    patch_size: int | None = None

    @property
    def tag(self) -> str:
        return safe_name(f"{self.method}-{self.pretrain_set}-seed{self.seed}")


@dataclass
class EvalConfig:
    """The evaluation sets and protocol settings shared by `transfer` and `replicate`."""

    eval_sets: list[EvalSet] = field(default_factory=list)
    # ProtocolSettings without its seed (each model brings its own), kept flat so the YAML keys stay flat
    pool: str = ProtocolSettings.pool
    knn_k: tuple[int, ...] = ProtocolSettings.knn_k
    temperature: float = ProtocolSettings.temperature
    logreg_c: float = ProtocolSettings.logreg_c
    max_iter: int = ProtocolSettings.max_iter
    batch_size: int = 128
    num_workers: int = 0
    device: str = "auto"
    cache_dir: str | None = None  # default: <out>/feature-cache of the run; "" disables the cache
    stain_norm: str = "none"  # none, macenko or reinhard: applied to every image before the frozen encoder
    stain_target: str = ""  # reference image; "" = the shipped default target

    def protocol_settings(self, seed: int) -> ProtocolSettings:
        shared = {f.name: getattr(self, f.name) for f in fields(ProtocolSettings) if f.name != "seed"}
        return ProtocolSettings(**{**shared, "knn_k": tuple(self.knn_k)}, seed=seed)

    def check(self) -> None:
        if not self.eval_sets:
            raise ConfigError("no evaluation sets: give at least one (eval_sets / --eval NAME=TRAIN[,VAL])")
        names = [s.name for s in self.eval_sets]
        if len(set(names)) != len(names):
            raise ConfigError(f"evaluation set names must be unique, got {names}")
        if self.pool not in ("cls", "mean"):
            raise ConfigError(f"pool must be cls or mean, got {self.pool!r}")
        if self.stain_norm not in STAIN_OPTION_CHOICES:
            raise ConfigError(f"stain_norm must be one of {', '.join(STAIN_OPTION_CHOICES)} ({PRETRAINED_STAIN}: each "
                              f"model's own), got {self.stain_norm!r}")
        if self.stain_norm == PRETRAINED_STAIN and self.stain_target:
            raise ConfigError(f"stain_target {self.stain_target} with stain_norm {PRETRAINED_STAIN}: each model's own "
                              "normaliser is used; drop one of them")
        for s in self.eval_sets:
            for folder in (s.train, s.val):
                if folder and not Path(folder).is_dir():
                    raise FileNotFoundError(f"evaluation set {s.name}: no such folder {folder}")

    def check_folders(self) -> None:
        """Open every evaluation folder (validated, labelled, same classes) and check the classes against the
        cross-validation folds: all before any model is loaded or image embedded."""
        for es in self.eval_sets:
            if es.val:
                open_labelled_pair(es.train, es.val)
            else:
                ds = open_folder(es.train)
                counts = [ds.labels.count(i) for i in range(len(ds.classes))]
                check_fold_sizes(counts, ds.classes, es.cv_folds, f"evaluation set {es.name} ({es.train})")


@dataclass
class TransferConfig:
    out: str = "runs/transfer"
    models: list[ModelSpec] = field(default_factory=list)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_transfer_config(path: str | Path) -> TransferConfig:
    try:
        return from_dict(TransferConfig, load_yaml(path))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _weights_identity(spec: ModelSpec) -> dict[str, Any]:
    if spec.checkpoint == RANDOM:
        return {"random": True}
    source = resolve_pretrained(spec.checkpoint) if is_pretrained_name(spec.checkpoint) else spec.checkpoint
    return {"sha256": file_digest(source)}


def _identity(spec: ModelSpec, cfg: EvalConfig, stain: StainNormalizer | None = None,
              weights: dict[str, Any] | None = None) -> dict[str, Any]:
    weights = weights or _weights_identity(spec)
    evaluation = asdict(cfg)
    if stain is None:  # without stain normalisation the identity is what it was before the option existed
        evaluation.pop("stain_norm"), evaluation.pop("stain_target")
        return {"model": asdict(spec), "weights": weights, "eval": evaluation}
    return {"model": asdict(spec), "weights": weights, "eval": evaluation, "stain": stain.id}


def evaluate_model(spec: ModelSpec, cfg: EvalConfig, out_dir: Path) -> list[dict[str, Any]]:
    """Rows of one model, from `out_dir/models/<tag>/metrics.json` when it holds this exact evaluation."""
    path = out_dir / "models" / spec.tag / "metrics.json"
    weights = _weights_identity(spec)

    def load() -> Encoder:
        return load_encoder(spec.checkpoint, spec.encoder, spec.img_size, spec.patch_size, spec.seed,
                            sha256=weights.get("sha256"))

    encoder = None
    if cfg.stain_norm == PRETRAINED_STAIN:  # each model's own: known once it is loaded
        encoder = load()
        stain = encoder.pretraining_normalizer()
    else:
        stain = make_normalizer(cfg.stain_norm, cfg.stain_target or None)
    identity = _identity(spec, cfg, stain, weights)
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("identity") == json.loads(json.dumps(identity)):
            log.info("%s: already evaluated (%s)", spec.tag, path)
            return saved["rows"]
    encoder = encoder or load()
    encoder.use_stain(stain)
    cache_dir = out_dir / "feature-cache" if cfg.cache_dir is None else cfg.cache_dir or None
    results = evaluate_encoder(encoder, cfg.eval_sets, cfg.protocol_settings(spec.seed), cache_dir,
                               cfg.batch_size, cfg.num_workers, resolve_device(cfg.device))
    rows = result_rows(results, pretrain_set=spec.pretrain_set, method=spec.method, seed=spec.seed)
    payload = {"identity": identity, "weights": encoder.description, "results": results, "rows": rows}
    write_text_atomic(path, dumps_json(payload))
    return rows


def write_rows_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """The result rows as CSV (one column per row key, eval set, protocol and summary metric), atomically."""
    columns = [*ROW_KEYS, "eval_set", "protocol", *SUMMARY_METRICS]
    return write_csv_atomic(path, columns, ([r.get(c) for c in columns] for r in rows))


def rows_markdown(rows: list[dict[str, Any]]) -> str:
    head = "| pretrain set | method | seed | eval set | protocol | " + " | ".join(SUMMARY_METRICS) + " |"
    lines = [head, "|" + "---|" * (5 + len(SUMMARY_METRICS))]
    for r in rows:
        cells = [r["pretrain_set"], r["method"], str(r["seed"]), r["eval_set"], r["protocol"]]
        cells += ["–" if r[m] is None else f"{r[m]:.4f}" for m in SUMMARY_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_transfer(cfg: TransferConfig) -> list[dict[str, Any]]:
    """Probe every model on every evaluation set; writes transfer.csv, transfer.md and config.yaml."""
    if not cfg.models:
        raise ConfigError("no models to evaluate: give --checkpoint or a `models:` list")
    cfg.eval.check()
    cfg.eval.check_folders()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.yaml", dump_yaml(cfg))
    rows: list[dict[str, Any]] = []
    for i, spec in enumerate(cfg.models, 1):
        log.info("model %d/%d: %s (%s)", i, len(cfg.models), spec.tag, spec.checkpoint)
        rows += evaluate_model(spec, cfg.eval, out)
    write_rows_csv(out / "transfer.csv", rows)
    sets = "; ".join(f"**{s.name}**: {s.describe()}" for s in cfg.eval.eval_sets)
    write_text_atomic(out / "transfer.md", f"# Transfer evaluation\n\nFrozen {cfg.eval.pool} features. {sets}.\n\n"
                      f"{rows_markdown(rows)}\n")
    return rows
