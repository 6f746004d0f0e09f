"""The frozen-feature protocols that `transfer` and `replicate` report: weighted kNN, 1-NN and the fast linear
probe, on a labelled train/val pair or, for sets too small to split (the 32 CRC tiles), by stratified
cross-validation with out-of-fold predictions."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from gcmae.data.folders import open_folder
from gcmae.encoders.cache import FeatureSet, folder_features
from gcmae.encoders.loading import Encoder
from gcmae.evaluate.common import open_labelled_pair
from gcmae.scoring.knn import knn_methods, vote_probabilities
from gcmae.scoring.metrics import HEADLINE_METRICS, classification_metrics
from gcmae.scoring.probe import fit_logistic_probe, probe_probabilities

SUMMARY_METRICS = tuple(HEADLINE_METRICS)


@dataclass(frozen=True)
class EvalSet:
    """A labelled evaluation task: train on `train`, test on `val`; without `val`, `cv_folds`-fold
    stratified cross-validation within `train`."""

    name: str
    train: str
    val: str | None = None
    cv_folds: int = 4

    @classmethod
    def parse(cls, spec: str) -> EvalSet:
        """`name=TRAIN_DIR[,VAL_DIR]` (no VAL_DIR: cross-validation)."""
        name, sep, dirs = spec.partition("=")
        parts = [p for p in dirs.split(",") if p]
        if not sep or not name or not 1 <= len(parts) <= 2:
            raise ValueError(f"evaluation set {spec!r}: expected NAME=TRAIN_DIR[,VAL_DIR]")
        return cls(name, parts[0], parts[1] if len(parts) == 2 else None)

    def describe(self) -> str:
        return f"train `{self.train}`, test `{self.val}`" if self.val else \
            f"`{self.train}`, {self.cv_folds}-fold stratified cross-validation"


@dataclass(frozen=True)
class ProtocolSettings:
    """kNN and linear-probe settings (the defaults are the paper's kNN and our fast probe)."""

    pool: str = "cls"
    knn_k: tuple[int, ...] = (20, 200)
    temperature: float = 0.07
    logreg_c: float = 1.0
    max_iter: int = 1000
    seed: int = 0


def _all_probs(train_x: torch.Tensor, train_y: torch.Tensor, query_x: torch.Tensor, num_classes: int,
               s: ProtocolSettings) -> dict[str, np.ndarray]:
    """Class probabilities of every protocol for the queries, from one training split."""
    out = {name: vote_probabilities(votes).numpy()
           for name, (_, votes) in knn_methods(train_x, train_y, query_x, num_classes, s.knn_k, s.temperature).items()}
    clf, _ = fit_logistic_probe(train_x, train_y, s.logreg_c, s.max_iter, s.seed)
    out["logreg"] = probe_probabilities(clf, query_x, num_classes)
    return out


def evaluate_features(train: FeatureSet, val: FeatureSet | None, s: ProtocolSettings,
                      cv_folds: int = 4) -> dict[str, dict[str, Any]]:
    """Metrics of every protocol: on `val`, or out-of-fold over `train` when `val` is None."""
    classes, n_cls = train.classes, len(train.classes)
    if val is not None:
        probs = _all_probs(train.features, train.labels, val.features, n_cls, s)
        results = {name: classification_metrics(val.labels, p, classes) for name, p in probs.items()}
        return _with_k(results, s, [len(train.labels)])
    y = train.labels.numpy()
    check_fold_sizes(np.bincount(y, minlength=n_cls), classes, cv_folds, str(train.root))
    folds = StratifiedKFold(n_splits=cv_folds, shuffle=True, random_state=s.seed)
    oof: dict[str, np.ndarray] = {}
    fit_sizes = []
    for fit_idx, test_idx in folds.split(np.zeros(len(y)), y):
        fit_i, test_i = torch.from_numpy(fit_idx), torch.from_numpy(test_idx)
        fit_sizes.append(len(fit_idx))
        probs = _all_probs(train.features[fit_i], train.labels[fit_i], train.features[test_i], n_cls, s)
        for name, p in probs.items():
            oof.setdefault(name, np.zeros((len(y), n_cls)))[test_idx] = p
    return _with_k({name: classification_metrics(y, p, classes) for name, p in oof.items()}, s, fit_sizes)


def _with_k(results: dict[str, dict[str, Any]], s: ProtocolSettings,
            fit_sizes: list[int]) -> dict[str, dict[str, Any]]:
    """Record the k each kNN protocol used: k capped at the reference size (the smallest fold's for CV)."""
    for k in (*s.knn_k, 1):
        name = "nn1" if k == 1 else f"knn_k{k}"
        if name in results:
            results[name].update(k=min(k, min(fit_sizes)), k_asked=k)
    return results


def check_fold_sizes(counts: np.ndarray | list[int], classes: list[str], cv_folds: int, where: str) -> None:
    """ValueError naming the classes too small for `cv_folds`-fold stratified cross-validation."""
    if cv_folds < 2:
        raise ValueError(f"{where}: cross-validation needs --cv-folds >= 2, got {cv_folds}")
    small = [f"{c} ({int(n)})" for c, n in zip(classes, counts) if n < cv_folds]
    if small:
        raise ValueError(f"{where}: {cv_folds}-fold cross-validation needs >= {cv_folds} images per class; too few: "
                         f"{', '.join(small)} (use --cv-folds {max(2, int(min(counts)))} or add images)")


def evaluate_encoder(encoder: Encoder, sets: list[EvalSet], s: ProtocolSettings, cache_dir: str | Path | None,
                     batch_size: int = 128, num_workers: int = 0,
                     device: str | torch.device = "cpu") -> dict[str, dict[str, dict[str, Any]]]:
    """{eval set name: {protocol: metrics}} for one frozen encoder (features cached in `cache_dir`)."""
    results = {}
    for es in sets:
        if es.val:
            train_ds, val_ds = open_labelled_pair(es.train, es.val)
        else:
            train_ds, val_ds = open_folder(es.train), None
        kwargs: dict[str, Any] = dict(pool=s.pool, cache_dir=cache_dir, batch_size=batch_size,
                                      num_workers=num_workers, device=device)
        train = folder_features(encoder, train_ds, **kwargs)
        val = folder_features(encoder, val_ds, **kwargs) if val_ds is not None else None
        results[es.name] = evaluate_features(train, val, s, es.cv_folds)
    return results


def result_rows(results: dict[str, dict[str, dict[str, Any]]], **keys: Any) -> list[dict[str, Any]]:
    """Flat rows (one per eval set and protocol) with the summary metrics, prefixed by `keys`."""
    return [{**keys, "eval_set": set_name, "protocol": protocol, **{m: metrics.get(m) for m in SUMMARY_METRICS}}
            for set_name, by_protocol in results.items() for protocol, metrics in by_protocol.items()]
