"""`gcmae mil train`: fit gated-attention MIL on per-slide feature bags with slide labels from a CSV.

Stratified, seeded train/validation split of the slides; class-weighted cross-entropy; AdamW; one bag per step
(bags differ in size); early stopping on the validation loss (or AUC); the best weights are saved atomically
whenever they improve, and ``config.json`` is written last with everything `gcmae mil predict` and
`gcmae diagnose` need: classes, architecture, and the encoder + tile geometry that made the features.
"""
from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from gcmae.device import resolve_device
from gcmae.io.atomic import write_csv_atomic, write_text_atomic
from gcmae.scoring.metrics import classification_metrics
from gcmae.scoring.report import dumps_json, metrics_table
from gcmae.seeding import derive_seed
from gcmae.slide.bag_store import BagFeatures, BagInfo
from gcmae.slide.bags import MATCH_KEYS, find_bags, load_bag, read_labels_csv, sorted_classes
from gcmae.slide.options import MILTrainOptions
from gcmae.slide.mil import CONFIG_FILE, FORMAT, MODEL_FILE, ABMILConfig, GatedABMIL, MILModel, load_mil_model, \
    save_weights
from gcmae.slide.tile_classifier import check_features_match, load_tile_classifier
from gcmae.stain.normalizer import recorded_stain_id

log = logging.getLogger(__name__)

ENCODER_KEYS = ("weights_id", "checkpoint", "checkpoint_sha256", "encoder", "patch_size", "img_size", "pool",
                "feature_dim", "mean", "std", "seed", "encoder_description", "tag", "stain", "stain_id")
TILE_KEYS = ("tile_size", "tile_mpp", "level", "read_size", "step", "extent")
CLASSIFIER_DIR = "tile_classifier"


def _load_labelled_bags(opts: MILTrainOptions, device: torch.device,
                        progress: bool = True) -> tuple[BagFeatures, list[str]]:
    """Every labelled bag read (and checked) once; its features kept while `opts.max_preload_gb` allows."""
    labels = read_labels_csv(opts.labels)
    paths = find_bags(opts.features, opts.tag)
    missing = sorted(set(labels) - set(paths))
    if missing and not opts.skip_missing:
        raise FileNotFoundError(f"{opts.labels}: {len(missing)} slide(s) have no bag in {opts.features}: "
                                f"{', '.join(missing[:10])}{' …' if len(missing) > 10 else ''} "
                                f"(--skip-missing to train without them)")
    if missing:
        log.warning("skipping %d labelled slide(s) without a bag: %s", len(missing), ", ".join(missing[:10]))
    unlabelled = sorted(set(paths) - set(labels))
    if unlabelled:
        log.info("%d bag(s) have no label and are not used", len(unlabelled))
    ids = sorted(set(paths) & set(labels))
    if not ids:
        raise ValueError(f"no labelled bags: no slide id of {opts.labels} has a bag in {opts.features}")
    used = sorted({labels[sid] for sid in ids})
    if len(used) < 2:
        raise ValueError(f"{opts.labels}: all {len(ids)} slide(s) with a bag have the label {used[0]!r}; a slide "
                         f"classifier needs slides of at least two classes (AUC and balanced accuracy are undefined "
                         f"otherwise)")
    bags = BagFeatures(int(opts.max_preload_gb * 1e9), device)
    for sid in tqdm(ids, desc="loading bags", unit="bag", leave=False, disable=not progress):
        bag = load_bag(paths[sid], slide_id=sid)
        bags.add(BagInfo(bag.slide_id, bag.path, bag.attrs, bag.dim), bag.features)
    if len(bags.held) < len(bags):
        log.info("%d of %d bags held in memory (%.2f GB, --max-preload-gb %g); the others are read from disk at "
                 "each use", len(bags.held), len(bags), bags.held_bytes / 1e9, opts.max_preload_gb)
    return bags, [labels[b.slide_id] for b in bags.infos]


def _common_record(bags: list[BagInfo], opts: MILTrainOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """(encoder record, tile geometry) shared by every bag; an error naming the first bag that differs."""
    dims = {b.dim for b in bags}
    if len(dims) > 1:
        odd = next(b for b in bags if b.dim != bags[0].dim)
        raise ValueError(f"bags differ in feature size: {bags[0].path} has {bags[0].dim}, {odd.path} has {odd.dim}")
    ref = next((b for b in bags if "weights_id" in b.attrs), None)
    if ref is None:
        log.warning("the bags record no encoder: gcmae diagnose cannot use this model (mil predict can)")
        record: dict[str, Any] = {}
    else:
        record = {k: ref.attrs[k] for k in ENCODER_KEYS if k in ref.attrs}
        ref_stain = recorded_stain_id(ref.attrs)
        for b in bags:
            diff = [k for k in MATCH_KEYS if k != "stain_id" and b.attrs.get(k) != ref.attrs.get(k)]
            if recorded_stain_id(b.attrs) != ref_stain:
                diff.append("stain_id")
            if diff:
                raise ValueError(f"{b.path} and {ref.path} come from different encoders or settings "
                                 f"({', '.join(f'{k}: {b.attrs.get(k)!r} vs {ref.attrs.get(k)!r}' for k in diff)})")
    tiles = {k: ref.attrs.get(k) for k in TILE_KEYS} if ref is not None else {}
    for key, value in (("tile_mpp", opts.tile_mpp), ("tile_size", opts.tile_size)):
        if value is not None:
            if tiles.get(key) is not None and tiles[key] != value:
                raise ValueError(f"--{key.replace('_', '-')} {value} contradicts the features' {key} {tiles[key]}")
            tiles[key] = value
    return record, tiles


def _split(ids: list[str], y: np.ndarray, classes: list[str], frac: float, seed: int) -> tuple[list[int], list[int]]:
    idx = list(range(len(ids)))
    if frac <= 0:
        return idx, []
    counts = np.bincount(y, minlength=len(classes))
    if (counts < 2).any():
        few = [f"{c} ({n})" for c, n in zip(classes, counts) if n < 2]
        raise ValueError(f"a stratified validation split needs >= 2 slides per class; too few: {', '.join(few)} "
                         f"(use --val-fraction 0 to train without validation)")
    n_val = max(len(classes), int(round(frac * len(ids))))
    if len(ids) - n_val < len(classes):
        raise ValueError(f"{len(ids)} slides are too few for a validation fraction of {frac}")
    train, val = train_test_split(idx, test_size=n_val, stratify=y, random_state=seed)
    return sorted(train), sorted(val)


@torch.no_grad()
def _evaluate(model: GatedABMIL, xs: Iterable[torch.Tensor], y: np.ndarray, weight: torch.Tensor,
              classes: list[str]) -> tuple[float, dict[str, Any]]:
    model.eval()
    logits = torch.stack([model(x)[0] for x in xs])  # one bag at a time: a streamed bag is freed after its use
    target = torch.as_tensor(y, device=logits.device)
    loss = float(F.cross_entropy(logits, target, weight=weight))
    return loss, classification_metrics(y, torch.softmax(logits, 1).cpu().numpy(), classes)


def _settings(opts: MILTrainOptions) -> dict[str, Any]:
    s = asdict(opts)
    for key in ("overwrite", "device", "cpu_threads", "max_preload_gb"):  # they do not change the model
        s.pop(key)
    return s


def _already_trained(out: Path, settings: dict[str, Any]) -> bool:
    cfg = out / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        old = json.loads(cfg.read_text()).get("settings")
    except ValueError:
        return False
    if old != settings:
        raise FileExistsError(f"{out} holds a MIL model trained with other settings; use --overwrite or another "
                              f"--out")
    return True


def train_mil(opts: MILTrainOptions, progress: bool = True) -> MILModel:
    """Train, save to opts.out, return the best model; an existing finished folder with the same settings is
    returned as it is (re-runs do not retrain)."""
    out, settings = Path(opts.out), _settings(opts)
    if opts.monitor not in ("loss", "auc"):
        raise ValueError(f"--monitor must be loss or auc, got {opts.monitor!r}")
    if not opts.overwrite and _already_trained(out, settings):
        log.info("%s already holds this model; not retraining", out)
        return load_mil_model(out)
    device = resolve_device(opts.device)
    xs, labels = _load_labelled_bags(opts, device, progress)
    bags = xs.infos
    record, tiles = _common_record(bags, opts)
    classes = sorted_classes(labels)
    y = np.array([classes.index(label) for label in labels])
    ids = [b.slide_id for b in bags]
    tr, va = _split(ids, y, classes, opts.val_fraction, opts.seed)
    clf = load_tile_classifier(opts.tile_classifier) if opts.tile_classifier else None
    if clf is not None and record:  # diagnose draws its heatmap from the bags' encoder: refuse a mismatch now
        if clf.meta["features"].get("weights_id") != record.get("weights_id"):
            raise ValueError(f"{opts.tile_classifier} was fitted on features of "
                             f"{clf.meta['features'].get('checkpoint')}, the bags come from {record.get('checkpoint')}")
        check_features_match(clf.meta["features"], record, f"--tile-classifier {opts.tile_classifier} vs the bags")
    arch = ABMILConfig(bags[0].dim, len(classes), opts.hidden_dim, opts.attn_dim, opts.dropout)
    counts = np.bincount(y[tr], minlength=len(classes))
    if (counts == 0).any():
        raise ValueError(f"the training slides lack a class: counts {dict(zip(classes, counts.tolist()))}")
    weight = torch.tensor(len(tr) / (len(classes) * counts), dtype=torch.float32, device=device)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).unlink(missing_ok=True)  # an unfinished folder never looks finished
    history: list[dict[str, Any]] = []
    with torch.random.fork_rng(devices=[]), _threads(opts.cpu_threads if device.type == "cpu" else None):
        torch.manual_seed(opts.seed)
        model = GatedABMIL(arch).to(device)
        optim = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay, fused=True)
        best, best_epoch, waited = None, -1, 0
        for epoch in tqdm(range(opts.epochs), desc="mil epochs", unit="epoch", disable=not progress):
            rng = np.random.default_rng(derive_seed(opts.seed, epoch))
            model.train()
            losses = []
            for i in rng.permutation(tr):
                x = xs[i]
                if opts.max_tiles and len(x) > opts.max_tiles:
                    x = x[torch.from_numpy(rng.choice(len(x), opts.max_tiles, replace=False)).to(device)]
                logits, _ = model(x)
                loss = F.cross_entropy(logits[None], torch.tensor([y[i]], device=device), weight=weight)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                losses.append(loss.item())
            row: dict[str, Any] = {"epoch": epoch, "train_loss": float(np.mean(losses))}
            if va:
                val_loss, m = _evaluate(model, (xs[i] for i in va), y[va], weight, classes)
                row.update(val_loss=val_loss, val_auc=m["auc"], val_balanced_accuracy=m["balanced_accuracy"])
                score = -val_loss if opts.monitor == "loss" else (m["auc"] or 0.0, -val_loss)
            else:
                score = epoch  # no validation: keep the last epoch
            history.append(row)
            _write_history(out / "history.csv", history)
            if best is None or score > best:
                best, best_epoch, waited = score, epoch, 0
                save_weights(model, out / MODEL_FILE)
            else:
                waited += 1
                if va and waited >= opts.patience:
                    log.info("early stop at epoch %d: no better validation %s for %d epochs", epoch, opts.monitor,
                             opts.patience)
                    break
    return _finish(opts, out, settings, arch, classes, ids, y, tr, va, xs, weight, best_epoch, history, record,
                   tiles, clf is not None)


def _finish(opts: MILTrainOptions, out: Path, settings: dict[str, Any], arch: ABMILConfig, classes: list[str],
            ids: list[str], y: np.ndarray, tr: list[int], va: list[int], xs: BagFeatures,
            weight: torch.Tensor, best_epoch: int, history: list[dict[str, Any]], record: dict[str, Any],
            tiles: dict[str, Any], has_clf: bool) -> MILModel:
    """Metrics of the best weights, the tile classifier copy, config.json (last) and report.md."""
    model = GatedABMIL(arch)
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(out / MODEL_FILE)))
    model.to(xs.device)
    results = {"train": _evaluate(model, (xs[i] for i in tr), y[tr], weight, classes)[1]}
    if va:
        results["validation"] = _evaluate(model, (xs[i] for i in va), y[va], weight, classes)[1]
    if has_clf:
        dst = out / CLASSIFIER_DIR
        dst.mkdir(exist_ok=True)
        for f in ("classifier.npz", "classifier.json"):
            shutil.copyfile(Path(opts.tile_classifier) / f, dst / f)
    config = {
        "format": FORMAT, "version": 1, "model": asdict(arch), "classes": classes, "features": record,
        "tiles": tiles, "settings": settings, "best_epoch": best_epoch, "epochs_run": len(history),
        "split": {"train": [ids[i] for i in tr], "validation": [ids[i] for i in va]},
        "metrics": results, "num_bags": len(xs), "tile_classifier": CLASSIFIER_DIR if has_clf else None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    text = dumps_json(config)  # NaN/Inf as null: valid JSON
    write_text_atomic(out / CONFIG_FILE, text)
    lines = [f"# ABMIL slide classifier ({', '.join(classes)})", "",
             f"- features: {record.get('encoder_description', 'no encoder recorded')} (pool {record.get('pool')})",
             f"- slides: {len(tr)} train, {len(va)} validation; best epoch {best_epoch} of {len(history)}",
             f"- tiles: {tiles.get('tile_size')} px at {tiles.get('tile_mpp')} µm/px", "",
             metrics_table(results), "", "Settings:", "", "```json", json.dumps(settings, indent=2), "```", ""]
    write_text_atomic(out / "report.md", "\n".join(lines))
    log.info("MIL model in %s: %s", out, {k: v.get("auc") for k, v in results.items()})
    return MILModel(model.cpu().eval(), json.loads(text), out)  # what load_mil_model(out) would read back


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `n` inside the block (unchanged for None), restored after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    keys = list(rows[0])
    write_csv_atomic(path, keys, ([r[k] for k in keys] for r in rows))
