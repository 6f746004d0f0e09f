"""The frozen-feature protocol of the learning study: a logistic-regression probe and weighted kNN, plus the
colour-histogram baseline that any encoder must beat before it can be said to see more than colour.

Probe: features standardised on the training split, scikit-learn `LogisticRegression` (lbfgs, L2, C=1) fit on all
of it; kNN: cosine similarity, k most similar training items vote exp(cos / T) (`gcmae.evaluate.knn`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from gcmae.evaluate.knn import knn_probabilities
from gcmae.evaluate.metrics import classification_metrics

HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "auc")


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in HEADLINE}


def logistic_probe_predictions(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
                               max_iter: int = 2000) -> np.ndarray:
    """Predicted classes of a logistic regression on standardised features (fit on train)."""
    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(max_iter=max_iter).fit(scaler.transform(train_x), train_y)
    return clf.predict(scaler.transform(val_x))


def logistic_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                   classes: list[str], max_iter: int = 2000) -> dict[str, Any]:
    """Headline metrics of a logistic regression on standardised features, fit on train and scored on val."""
    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(max_iter=max_iter).fit(scaler.transform(train_x), train_y)
    probs = clf.predict_proba(scaler.transform(val_x))
    return _headline(classification_metrics(val_y, probs, classes))


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


def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> HSV in [0, 1] (hue as a fraction of the circle)."""
    r, g, b = rgb.unbind(1)
    maxc, _ = rgb.max(1)
    minc, _ = rgb.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(maxc == r, ((g - b) / safe) % 6,
                      torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([hue, sat, maxc], 1)


def colour_histogram_features(images: torch.Tensor, bins: int = 8, chunk: int = 1024) -> np.ndarray:
    """(N, 6 * bins) per-image histograms (fractions of pixels) of R, G, B, H, S and V; `images` uint8 (N, 3, H, W)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    out = []
    for start in range(0, images.shape[0], chunk):
        rgb = images[start : start + chunk].float() / 255
        channels = torch.cat([rgb, _rgb_to_hsv(rgb)], 1)  # (n, 6, H, W) in [0, 1]
        idx = (channels * bins).long().clamp_(max=bins - 1).flatten(2)  # (n, 6, HW)
        hist = torch.zeros(idx.shape[0], 6, bins).scatter_add_(2, idx, torch.ones_like(idx, dtype=torch.float32))
        out.append((hist / idx.shape[2]).flatten(1))
    return torch.cat(out).numpy()
