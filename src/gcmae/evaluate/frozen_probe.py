"""The frozen-feature protocol of the learning study: a logistic-regression probe and weighted kNN, plus the
colour-histogram baseline that any encoder must beat before it can be said to see more than colour.

Probe: features standardised on the training split, scikit-learn `LogisticRegression` (lbfgs, L2, C=1) fit on all
of it; kNN: cosine similarity, k most similar training items vote exp(cos / T) (`gcmae.scoring.knn`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from skimage.color import rgb2hsv

from gcmae.scoring.knn import knn_probabilities
from gcmae.scoring.metrics import classification_metrics
from gcmae.scoring.probe import fit_logistic_probe, probe_probabilities

HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "auc")


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in HEADLINE}


def logistic_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                   classes: list[str], max_iter: int = 2000) -> dict[str, Any]:
    """Headline metrics of a logistic regression on standardised features, fit on train and scored on val."""
    clf, _ = fit_logistic_probe(train_x, train_y, max_iter=max_iter)
    return _headline(classification_metrics(val_y, probe_probabilities(clf, val_x, len(classes)), classes))


def knn_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, classes: list[str],
              k: int, temperature: float = 0.07) -> dict[str, Any]:
    """Headline metrics of weighted kNN (cosine, exp(cos / T) votes)."""
    probs = knn_probabilities(torch.as_tensor(train_x).float(), torch.as_tensor(train_y).long(),
                              torch.as_tensor(val_x).float(), len(classes), k, temperature)
    return _headline(classification_metrics(val_y, probs, classes))


def frozen_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, classes: list[str],
                 ks: tuple[int, ...] = (20, 200), temperature: float = 0.07) -> dict[str, dict[str, Any]]:
    """{"logreg": ..., "knn20": ..., "knn200": ...}: each the headline metrics on the validation split."""
    out = {"logreg": logistic_probe(train_x, train_y, val_x, val_y, classes)}
    for k in ks:
        out[f"knn{k}"] = knn_probe(train_x, train_y, val_x, val_y, classes, k, temperature)
    return out


def colour_histogram_features(images: torch.Tensor, bins: int = 8, chunk: int = 1024) -> np.ndarray:
    """(N, 6 * bins) per-image histograms (fractions of pixels) of R, G, B, H, S and V; `images` uint8 (N, 3, H, W)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    out = []
    for start in range(0, images.shape[0], chunk):
        rgb = images[start : start + chunk].float() / 255
        hsv = torch.from_numpy(rgb2hsv(rgb.numpy(), channel_axis=1)).float()
        channels = torch.cat([rgb, hsv], 1)  # (n, 6, H, W) in [0, 1]
        idx = (channels * bins).long().clamp_(max=bins - 1).flatten(2)  # (n, 6, HW)
        hist = torch.zeros(idx.shape[0], 6, bins).scatter_add_(2, idx, torch.ones_like(idx, dtype=torch.float32))
        out.append((hist / idx.shape[2]).flatten(1))
    return torch.cat(out).numpy()
