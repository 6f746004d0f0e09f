"""Stain statistics of RGB tiles, computed independently of torchstain (NumPy + scikit-image): optical-density
stain vectors (Macenko's estimate) and CIELAB moments; used to measure how far tiles are from a target."""
from __future__ import annotations

import numpy as np
from skimage.color import rgb2lab

from gcmae.stain.normalizer import ALPHA, BETA, IO


def od_stain_vectors(rgb: np.ndarray, io: float = IO, beta: float = BETA, alpha: float = ALPHA) -> np.ndarray | None:
    """(2, 3) unit optical-density vectors (haematoxylin, eosin) of an (H, W, 3) uint8 tile by Macenko's method
    (plane of the two main directions of the stained pixels' OD, extreme angles at the alpha percentiles); None
    when fewer than 100 pixels are stained."""
    od = -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1.0) / io)
    od = od[(od >= beta).all(axis=1)]
    if len(od) < 100:
        return None
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, [1, 2]]
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, alpha), np.percentile(phi, 100 - alpha)
    v1, v2 = (plane @ np.array([np.cos(a), np.sin(a)]) for a in (lo, hi))
    v1, v2 = (v if v.sum() >= 0 else -v for v in (v1, v2))
    he = np.stack([v1, v2] if v1[0] > v2[0] else [v2, v1])  # haematoxylin absorbs red most
    return he / np.linalg.norm(he, axis=1, keepdims=True)


def angle_deg(u: np.ndarray, v: np.ndarray) -> float:
    """Angle in degrees between two vectors."""
    c = float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def lab_moments(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel CIELAB (D65) means and standard deviations (3,) of an (H, W, 3) uint8 tile (scikit-image)."""
    lab = rgb2lab(rgb.astype(np.float64) / 255.0).reshape(-1, 3)
    return lab.mean(axis=0), lab.std(axis=0)
