"""The shipped encoder: loads offline by name, and beats its own random initialisation on real PCam patches."""
from __future__ import annotations

import json
from math import comb
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import gcmae
from gcmae.data.in_memory import TensorImageDataset
from gcmae.evaluate.frozen_probe import logistic_probe_predictions
from gcmae.experiments.pcam_probe import encoder_features
from gcmae.pretrained import WEIGHTS_DIR, available, resolve

NAME = "gcmae-vit-tiny-pcam"


def test_the_encoder_is_shipped_small_and_documented():
    assert NAME in available()
    folder = WEIGHTS_DIR / NAME
    size = (folder / "model.safetensors").stat().st_size
    assert size <= 12 * 2**20, f"{size / 2**20:.1f} MB"
    card = (folder / "README.md").read_text()
    for words in ("PCam", "seed", "balanced accuracy", "Intended use", "Limitations"):
        assert words in card, words


def test_loads_by_name_in_gcmae_and_in_timm_with_the_same_features():
    model = gcmae.from_pretrained(NAME)
    same = timm.create_model(f"local-dir:{resolve(NAME)}", pretrained=True).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), same.forward_features(x))
    assert model.pretrained_cfg["input_size"] == [3, 96, 96]
    assert next(model.parameters()).dtype == torch.float32


def test_a_path_is_never_mistaken_for_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve(NAME) == WEIGHTS_DIR / NAME
    Path(NAME).mkdir()
    assert resolve(NAME) == Path(NAME)
    with pytest.raises(FileNotFoundError, match="nor the name of a shipped one"):
        gcmae.from_pretrained("no-such-encoder")


def _mcnemar_p(a_right: np.ndarray, b_right: np.ndarray) -> float:
    """One-sided exact McNemar p-value that A is not better than B (binomial test on the discordant pairs)."""
    only_a, only_b = int((a_right & ~b_right).sum()), int((~a_right & b_right).sum())
    n = only_a + only_b
    return sum(comb(n, k) for k in range(only_a, n + 1)) / 2**n


def test_beats_random_init_on_the_shipped_pcam_sample(samples, tmp_path):
    """Logistic probe fit on the 3,000 shipped PCam train patches, scored on the 1,000 valid patches (other slides)."""
    train = TensorImageDataset(samples / "pcam" / "train", 96, tmp_path, validate="none", progress=False)
    val = TensorImageDataset(samples / "pcam" / "valid", 96, tmp_path, validate="none", progress=False)
    card = json.loads((WEIGHTS_DIR / NAME / "gcmae.json").read_text())
    right = {}
    for spec in (NAME, f"random:vit_tiny:16:{card['seed']}"):
        tr, va = encoder_features(spec, train.images)["mean"], encoder_features(spec, val.images)["mean"]
        pred = logistic_probe_predictions(tr, train.labels.numpy(), va)
        right[spec] = pred == val.labels.numpy()
    trained, random_init = right[NAME], right[f"random:vit_tiny:16:{card['seed']}"]
    assert trained.mean() - random_init.mean() >= 0.03, (trained.mean(), random_init.mean())
    assert _mcnemar_p(trained, random_init) < 1e-3
