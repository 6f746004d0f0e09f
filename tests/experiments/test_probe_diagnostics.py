"""Probe diagnostics: in- vs out-of-distribution scores and the encoder + histogram probe."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gcmae.data.in_memory import TensorImageDataset
from gcmae.evaluate.frozen_probe import colour_histogram_features, frozen_probe
from gcmae.experiments.probe_diagnostics import diagnose, in_and_out_of_distribution
from gcmae.stain.normalizer import StainNormalizer
from tests.conftest import copy_subset


def test_a_relation_that_flips_on_other_slides_scores_one_inside_and_zero_outside():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    x = np.stack([y + 0.05 * rng.standard_normal(100), rng.standard_normal(100)], 1)
    flipped = np.stack([(1 - y) + 0.05 * rng.standard_normal(100), rng.standard_normal(100)], 1)
    scores = in_and_out_of_distribution(x, y, flipped, y)
    assert scores == {"train_in_sample": 1.0, "train_cv": 1.0, "valid": 0.0}


def test_diagnose_matches_the_study_probe_and_resumes(samples, tmp_path, monkeypatch):
    train = copy_subset(samples / "pcam" / "train", tmp_path / "train", 12)
    val = copy_subset(samples / "pcam" / "valid", tmp_path / "val", 6)
    out = tmp_path / "diag"
    files = diagnose(["colour-histogram", "random:vit_tiny:16:0"], str(train), str(val), out,
                     cache_dir=str(tmp_path / "cache"))
    hist, rand = (json.loads(f.read_text()) for f in files)
    assert set(hist) >= {"hist"} and "valid_with_histogram" not in hist["hist"]
    assert set(rand["cls"]) == {"train_in_sample", "train_cv", "valid", "valid_with_histogram"}
    tr = TensorImageDataset(str(train), 96, str(tmp_path / "cache"), validate="none")
    va = TensorImageDataset(str(val), 96, str(tmp_path / "cache"), validate="none")
    study = frozen_probe(colour_histogram_features(tr.images), tr.labels.numpy(),
                         colour_histogram_features(va.images), va.labels.numpy(), tr.classes)
    assert abs(hist["hist"]["valid"] - study["logreg"]["balanced_accuracy"]) < 1e-9
    texts = [f.read_text() for f in files]

    def no_second_extraction(*args, **kwargs):
        raise AssertionError("a finished encoder was computed again")

    monkeypatch.setattr("gcmae.experiments.probe_diagnostics.encoder_features", no_second_extraction)
    again = diagnose(["colour-histogram", "random:vit_tiny:16:0"], str(train), str(val), out,
                     cache_dir=str(tmp_path / "cache"))
    assert [f.read_text() for f in again] == texts
    with pytest.raises(ValueError, match="use another --out"):  # the same --out, other folders: never stale results
        diagnose(["colour-histogram"], str(val), str(train), out, cache_dir=str(tmp_path / "cache"))


def test_stain_normalised_diagnostics_score_normalised_images_and_keep_their_own_folder(samples, tmp_path):
    train = copy_subset(samples / "pcam" / "train", tmp_path / "train", 10)
    val = copy_subset(samples / "pcam" / "valid", tmp_path / "val", 6)
    norm, cache = StainNormalizer.fit(None, "macenko"), str(tmp_path / "cache")
    [plain] = diagnose(["colour-histogram"], str(train), str(val), tmp_path / "plain", cache_dir=cache)
    with pytest.raises(ValueError, match="with stain normalisation None, .* with macenko-"):
        diagnose(["colour-histogram"], str(train), str(val), tmp_path / "plain", cache, stain=norm)
    [normed] = diagnose(["colour-histogram"], str(train), str(val), tmp_path / "normed", cache, stain=norm)
    record = json.loads(normed.read_text())
    assert record["stain"] == norm.id and json.loads(plain.read_text())["stain"] is None
    tr = TensorImageDataset(str(train), 96, validate="none", progress=False)
    va = TensorImageDataset(str(val), 96, validate="none", progress=False)
    by_hand = in_and_out_of_distribution(colour_histogram_features(norm.normalize(tr.images).images), tr.labels.numpy(),
                                         colour_histogram_features(norm.normalize(va.images).images), va.labels.numpy())
    assert record["hist"] == by_hand
