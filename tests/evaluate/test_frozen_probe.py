"""The learning study's protocol: colour-histogram features against a per-pixel computation, and the probes."""
from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from gcmae.evaluate.frozen_probe import colour_histogram_features, frozen_probe, logistic_probe


def _reference_histograms(image: np.ndarray, bins: int) -> np.ndarray:
    """RGB + HSV histograms of one (3, H, W) uint8 image, pixel by pixel with the standard library."""
    rgb = image.reshape(3, -1).T / 255.0
    hsv = np.array([colorsys.rgb_to_hsv(*px) for px in rgb])
    channels = np.concatenate([rgb, hsv], axis=1)  # (HW, 6)
    out = []
    for c in range(6):
        idx = np.minimum((channels[:, c] * bins).astype(int), bins - 1)
        out.append(np.bincount(idx, minlength=bins) / len(idx))
    return np.concatenate(out)


def test_colour_histograms_match_a_per_pixel_computation():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 12, 10), generator=gen, dtype=torch.uint8)
    images[0, :, :4] = 255  # white (hue and saturation 0) and grey pixels
    images[1, :, :3] = 128
    ours = colour_histogram_features(images, bins=8, chunk=2)
    assert ours.shape == (3, 48)
    for i in range(3):
        ref = _reference_histograms(images[i].numpy(), 8)
        # a pixel exactly on a bin edge may fall either side in float32 vs float64: allow one pixel
        np.testing.assert_allclose(ours[i], ref, atol=1.01 / 120)
        np.testing.assert_allclose(ours[i].reshape(6, 8).sum(1), 1.0, atol=1e-6)


def test_colour_histograms_reject_float_input():
    with pytest.raises(ValueError, match="uint8"):
        colour_histogram_features(torch.zeros(1, 3, 4, 4))


def test_probes_score_separable_and_random_features():
    rng = np.random.default_rng(0)
    y_train, y_val = rng.integers(0, 2, 400), rng.integers(0, 2, 200)
    signal = lambda y: np.c_[y * 3.0 + rng.normal(size=len(y)), rng.normal(size=(len(y), 7))]  # noqa: E731
    result = frozen_probe(signal(y_train), y_train, signal(y_val), y_val, ["a", "b"])
    assert set(result) == {"logreg", "knn20", "knn200"}
    assert result["logreg"]["balanced_accuracy"] > 0.9
    assert result["knn20"]["balanced_accuracy"] > 0.8
    noise = logistic_probe(rng.normal(size=(400, 8)), y_train, rng.normal(size=(200, 8)), y_val, ["a", "b"])
    assert 0.35 < noise["balanced_accuracy"] < 0.65
