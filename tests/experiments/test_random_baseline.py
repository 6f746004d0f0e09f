import json
import shutil

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from gcmae.experiments.random_baseline import (RandomInitComparison, balanced_accuracy_rows,
                                               compare_with_random_init, paired_margin)
from gcmae.pretrained import resolve


def _predictions(rng: np.random.Generator, labels: np.ndarray, accuracy: float) -> np.ndarray:
    """Predicted labels that are right with probability `accuracy`, independently per image."""
    right = rng.random(labels.size) < accuracy
    return np.where(right, labels, 1 - labels)


def test_balanced_accuracy_under_a_draw_equals_sklearn_on_the_drawn_images():
    rng = np.random.default_rng(0)
    labels = (rng.random(300) < 0.3).astype(int)
    preds = np.stack([_predictions(rng, labels, a) for a in (0.6, 0.8, 0.9)])
    draws = [rng.integers(0, labels.size, labels.size) for _ in range(5)]
    counts = np.stack([np.bincount(d, minlength=labels.size) for d in draws])
    got = balanced_accuracy_rows(preds == labels, labels, counts)
    want = [[balanced_accuracy_score(labels[d], p[d]) for p in preds] for d in draws]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_a_draw_without_one_class_scores_the_other_class_only():
    labels = np.array([0, 0, 0, 1, 1])
    preds = np.array([[0, 1, 0, 1, 0]])
    counts = np.array([[1, 2, 0, 0, 0], [1, 1, 1, 1, 1]])
    got = balanced_accuracy_rows(preds == labels, labels, counts)
    np.testing.assert_allclose(got[:, 0], [1 / 3, (2 / 3 + 1 / 2) / 2])  # draw 1: class 0 only, right once in 3


def test_seeds_must_differ_and_the_bootstrap_needs_draws(tmp_path):
    with pytest.raises(ValueError, match="two different seeds"):
        compare_with_random_init("random", tmp_path, tmp_path, seeds=(0, 0))
    with pytest.raises(ValueError, match="bootstrap=1"):
        compare_with_random_init("random", tmp_path, tmp_path, seeds=(0, 1), bootstrap=1)


def test_margin_and_its_error_match_a_hand_bootstrap():
    rng = np.random.default_rng(1)
    labels = (rng.random(800) < 0.5).astype(int)
    encoder = _predictions(rng, labels, 0.8)
    randoms = np.stack([_predictions(rng, labels, a) for a in (0.74, 0.76, 0.75)])
    score, margin, se, per_seed = paired_margin(labels, encoder, randoms, bootstrap=2000, seed=0)
    sk = [balanced_accuracy_score(labels, p) for p in randoms]
    assert score == pytest.approx(balanced_accuracy_score(labels, encoder), abs=1e-12)
    np.testing.assert_allclose(per_seed, sk, atol=1e-12)
    assert margin == pytest.approx(score - np.mean(sk), abs=1e-12)
    # an independent bootstrap: index resampling and sklearn, plus the seeds' spread
    hand = []
    for _ in range(3000):
        i = rng.integers(0, labels.size, labels.size)
        hand.append(balanced_accuracy_score(labels[i], encoder[i])
                    - np.mean([balanced_accuracy_score(labels[i], p[i]) for p in randoms]))
    want = np.sqrt(np.var(hand, ddof=1) + np.var(sk, ddof=1) / 3)
    assert se == pytest.approx(want, rel=0.1)


def test_an_encoder_no_better_than_random_init_is_not_significant():
    rng = np.random.default_rng(2)
    labels = (rng.random(1000) < 0.5).astype(int)
    randoms = np.stack([_predictions(rng, labels, 0.75) for _ in range(5)])
    same = paired_margin(labels, _predictions(rng, labels, 0.75), randoms)
    better = paired_margin(labels, _predictions(rng, labels, 0.85), randoms)
    z_same = RandomInitComparison("cls", same[0], tuple(same[3]), (0, 1, 2, 3, 4), same[1], same[2]).z
    z_better = RandomInitComparison("cls", better[0], tuple(better[3]), (0, 1, 2, 3, 4), better[1], better[2]).z
    assert abs(z_same) < 1.96 < z_better


def test_a_recorded_stain_target_that_is_not_here_is_named(tmp_path):
    folder = tmp_path / "encoder"
    shutil.copytree(resolve("gcmae-vit-tiny-pcam"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["gcmae"]["stain_target"] = "/elsewhere/lab_target.png"
    stored = config["gcmae"].pop("stain")  # an export made before the fitted normaliser was stored
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="/elsewhere/lab_target.png.*stain_target"):
        compare_with_random_init(folder, tmp_path, tmp_path, seeds=(0, 1))
    # with the fit stored, the target's image is not needed: it goes on to read the (empty) image folders
    config["gcmae"]["stain"] = stored
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="image folder not found: .*none") as err:
        compare_with_random_init(folder, tmp_path / "none", tmp_path / "none", seeds=(0, 1))
    assert "lab_target" not in str(err.value)
