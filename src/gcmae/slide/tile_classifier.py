"""A tile classifier for heatmaps: the fast linear probe (standardise + logistic regression) on frozen features
of a labelled image folder, saved without pickle.

`gcmae tile-classifier train` writes ``CLF_DIR/classifier.npz`` (``coef`` (C', D), ``intercept`` (C',),
``scaler_mean`` / ``scaler_scale`` (D,), C' = 1 for two classes as scikit-learn stores it) and
``CLF_DIR/classifier.json`` (classes, the positive class, the encoder record: weights digest, checkpoint, pool,
image size; the training folder and its accuracy). Applying it is plain NumPy, so nothing executable is loaded.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from gcmae.encoders.cache import folder_features
from gcmae.encoders.loading import Encoder
from gcmae.io.arrays import load_array_file
from gcmae.io.atomic import write_bytes_atomic, write_text_atomic
from gcmae.scoring.metrics import classification_metrics
from gcmae.scoring.probe import fit_logistic_probe
from gcmae.slide.bags import MATCH_KEYS
from gcmae.stain.normalizer import recorded_stain_id

NPZ_FILE, JSON_FILE = "classifier.npz", "classifier.json"
FORMAT = "gcmae-tile-classifier"


@dataclass
class TileClassifier:
    """Standardise with (mean, scale), then a linear layer; softmax (or sigmoid for two classes)."""

    coef: np.ndarray  # (C', D)
    intercept: np.ndarray  # (C',)
    scaler_mean: np.ndarray  # (D,)
    scaler_scale: np.ndarray  # (D,)
    classes: list[str]
    positive: int  # index of the class a heatmap shows
    meta: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.scaler_mean.shape[0])

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(N, C) class probabilities of (N, D) features."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features of shape {x.shape} do not fit a classifier of {self.dim}-d features")
        logits = ((x - self.scaler_mean) / self.scaler_scale) @ self.coef.T + self.intercept
        if self.coef.shape[0] == 1:  # binary: scikit-learn keeps the logit of the second class only
            p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            return np.stack([1.0 - p1, p1], axis=1)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)


def train_tile_classifier(encoder: Encoder, record: dict[str, Any], train_dir: str | Path, out_dir: str | Path,
                          positive: str | None = None, val_dir: str | Path | None = None, c: float = 1.0,
                          cache_dir: str | Path | None = None, batch_size: int = 128, num_workers: int = 0,
                          device: str = "cpu", seed: int = 0) -> TileClassifier:
    """Fit the probe on the features of `train_dir` (class sub-folders), save it in `out_dir`, return it."""
    train = folder_features(encoder, train_dir, record["pool"], cache_dir, batch_size, num_workers, device)
    pipe, converged = fit_logistic_probe(train.features, train.labels, c=c, seed=seed)
    scaler, lr = pipe.steps[0][1], pipe.steps[1][1]
    if len(lr.classes_) != len(train.classes):
        raise ValueError(f"{train_dir}: some classes have no usable image")
    if positive is None:
        positive = train.classes[-1]
    if positive not in train.classes:
        raise ValueError(f"--positive {positive!r} is not a class of {train_dir} ({', '.join(train.classes)})")
    meta: dict[str, Any] = {
        "format": FORMAT, "version": 1, "classes": train.classes, "positive": positive,
        "features": {k: record[k] for k in record}, "train_dir": str(Path(train_dir).resolve()),
        "num_train": len(train.files), "logreg_c": c, "converged": converged,
        "stain_failed": {"train": train.stain_failed} if train.stain_failed is not None else None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    clf = TileClassifier(lr.coef_.copy(), lr.intercept_.copy(), scaler.mean_.copy(), scaler.scale_.copy(),
                         train.classes, train.classes.index(positive), meta)
    meta["train_accuracy"] = float((clf.predict_proba(train.features.numpy()).argmax(1) == train.labels.numpy()).mean())
    if val_dir:
        val = folder_features(encoder, val_dir, record["pool"], cache_dir, batch_size, num_workers, device)
        if val.classes != train.classes:
            raise ValueError(f"{val_dir} has classes {val.classes}, {train_dir} has {train.classes}")
        meta["val"] = classification_metrics(val.labels, clf.predict_proba(val.features.numpy()), val.classes)
        meta["val_dir"] = str(Path(val_dir).resolve())
        if val.stain_failed is not None:
            meta["stain_failed"]["val"] = val.stain_failed
    save_tile_classifier(clf, out_dir)
    return clf


def save_tile_classifier(clf: TileClassifier, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    buf = io.BytesIO()
    np.savez(buf, coef=clf.coef, intercept=clf.intercept, scaler_mean=clf.scaler_mean, scaler_scale=clf.scaler_scale)
    write_bytes_atomic(out_dir / NPZ_FILE, buf.getvalue())
    write_text_atomic(out_dir / JSON_FILE, json.dumps(clf.meta, indent=2) + "\n")  # last: marks it finished
    return out_dir


def load_tile_classifier(clf_dir: str | Path) -> TileClassifier:
    """The classifier saved in `clf_dir`; clear errors for a missing folder or inconsistent files."""
    clf_dir = Path(clf_dir)
    js, npz = clf_dir / JSON_FILE, clf_dir / NPZ_FILE
    if not js.is_file() or not npz.is_file():
        raise FileNotFoundError(f"{clf_dir}: not a tile classifier folder (needs {JSON_FILE} and {NPZ_FILE}; "
                                f"make one with gcmae tile-classifier train)")
    try:
        meta = json.loads(js.read_text())
        classes, positive = list(meta["classes"]), str(meta["positive"])
        meta["features"]["weights_id"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{js}: not a tile classifier description ({type(err).__name__}: {err})") from None
    a = load_array_file(npz, {"coef": (2, "f"), "intercept": (1, "f"), "scaler_mean": (1, "f"),
                              "scaler_scale": (1, "f")})
    d = a["scaler_mean"].shape[0]
    rows = 1 if len(classes) == 2 else len(classes)
    if a["coef"].shape != (rows, d) or a["intercept"].shape != (rows,) or a["scaler_scale"].shape != (d,):
        raise ValueError(f"{npz}: array shapes {({k: v.shape for k, v in a.items()})} do not fit {len(classes)} "
                         f"classes")
    if positive not in classes:
        raise ValueError(f"{js}: positive class {positive!r} is not among {classes}")
    meta["source"] = str(clf_dir.resolve())
    return TileClassifier(a["coef"], a["intercept"], a["scaler_mean"], a["scaler_scale"], classes,
                          classes.index(positive), meta)


def check_features_match(clf_meta: dict[str, Any], attrs: dict[str, Any], where: str) -> None:
    """ValueError naming `where` when feature attributes disagree with what a model was trained on: another
    encoder, pool or image size, or another stain normalisation (none counts as one)."""
    want = clf_meta
    if "weights_id" in attrs or "stain_id" in attrs:  # gcmae features: no stain_id means not normalised
        have, need = recorded_stain_id(attrs) or "none", recorded_stain_id(want) or "none"
        if have != need:
            raise ValueError(f"{where}: these features were made with stain normalisation {have!r}, the model "
                             f"was trained on features made with {need!r}{_stain_hint(want)}; refused "
                             f"(re-extract with the model's normalisation)")
    diffs = [f"{k}: features {attrs.get(k)!r} vs model {want.get(k)!r}" for k in MATCH_KEYS
             if k != "stain_id" and k in attrs and want.get(k) is not None and attrs.get(k) != want.get(k)]
    if diffs:
        raise ValueError(f"{where}: these features were not made by the encoder the model expects "
                         f"(checkpoint {want.get('checkpoint')}, pool {want.get('pool')}): {'; '.join(diffs)}")


def _stain_hint(record: dict[str, Any]) -> str:
    stored = record.get("stain")
    if not stored:
        return " (--stain-norm none)"
    d = json.loads(stored) if isinstance(stored, str) else stored
    return (f" (--stain-norm {d.get('method')} --stain-target <the image with sha256 "
            f"{str(d.get('target_sha256'))[:16]}…, {d.get('target_name')}>)")
