"""Metrics against hand-computed values and an independent pair-counting AUC."""
import csv
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from gcmae.scoring.metrics import HEADLINE_METRICS, classification_metrics, confusion_csv
from gcmae.viz.confusion import plot_confusion_matrix

CLASSES = ["a", "b", "c"]
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1]
# by hand: rows = true, columns = predicted
CONFUSION = [[2, 1, 1], [1, 2, 0], [0, 1, 2]]


def one_hot_probs(pred, num_classes=3):
    probs = np.full((len(pred), num_classes), 0.1)
    probs[np.arange(len(pred)), pred] = 1.0 - 0.1 * (num_classes - 1)
    return probs


def pair_counting_auc(positive, scores):
    """P(score of a positive > score of a negative), ties counted 1/2: the definition of ROC AUC."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    wins = sum(Fraction(1) if a > b else Fraction(1, 2) if a == b else Fraction(0) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_three_class_confusion_by_hand():
    m = classification_metrics(torch.tensor(Y_TRUE), one_hot_probs(Y_PRED), CLASSES)
    assert m["confusion_matrix"] == CONFUSION
    assert m["accuracy"] == pytest.approx(6 / 10)
    # recalls 2/4, 2/3, 2/3
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3 + 2 / 3) / 3)
    # precisions 2/3, 2/4, 2/3 -> F1 4/7, 4/7, 2/3
    assert m["macro_f1"] == pytest.approx((4 / 7 + 4 / 7 + 2 / 3) / 3)
    assert m["per_class"]["a"] == pytest.approx({"precision": 2 / 3, "recall": 1 / 2, "f1": 4 / 7, "support": 4})
    assert m["per_class"]["b"]["precision"] == pytest.approx(1 / 2)
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert m["num_samples"] == 10 and m["classes"] == CLASSES


def test_binary_auc_counts_concordant_pairs():
    labels = [0, 0, 1, 1, 0, 1, 0, 1]
    scores = [0.1, 0.4, 0.35, 0.8, 0.35, 0.9, 0.2, 0.3]
    # positives 0.35, 0.8, 0.9, 0.3 against negatives 0.1, 0.4, 0.35, 0.2: 2.5 + 4 + 4 + 2 = 12.5 of 16 pairs
    assert pair_counting_auc([y == 1 for y in labels], scores) == Fraction(25, 32)
    probs = np.stack([1 - np.array(scores), np.array(scores)], axis=1)
    m = classification_metrics(np.array(labels), probs, ["neg", "pos"])
    assert m["auc"] == pytest.approx(25 / 32) and m["auc_kind"] == "binary"


def test_multiclass_auc_is_macro_one_vs_rest():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 2] * 5)
    probs = rng.random((15, 3)) + np.eye(3)[labels] * 0.5
    probs /= probs.sum(1, keepdims=True)
    expected = sum(pair_counting_auc(labels == c, probs[:, c].tolist()) for c in range(3)) / 3
    m = classification_metrics(labels, probs, CLASSES)
    assert m["auc"] == pytest.approx(float(expected)) and m["auc_kind"] == "one-vs-rest macro"


def test_auc_undefined_when_a_class_has_no_samples():
    m = classification_metrics(np.array([0, 0, 1, 1]), one_hot_probs([0, 2, 1, 1]), CLASSES)
    assert m["auc"] is None and "undefined" in m["auc_kind"]
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="do not match"):
        classification_metrics(np.array([0, 1]), np.ones((2, 3)) / 3, ["x", "y"])


def test_confusion_csv_and_png(tmp_path):
    rows = list(csv.reader(confusion_csv(CONFUSION, CLASSES).splitlines()))
    assert rows[0] == ["true \\ predicted", *CLASSES]
    assert [[int(v) for v in r[1:]] for r in rows[1:]] == CONFUSION and [r[0] for r in rows[1:]] == CLASSES
    png = plot_confusion_matrix(CONFUSION, CLASSES, tmp_path / "cm.png", "test")
    with Image.open(png) as img:
        assert img.format == "PNG" and min(img.size) > 200


def test_every_headline_metric_is_computed_and_can_pick_the_best_finetune_epoch():
    from gcmae.evaluate.options import METRICS

    m = classification_metrics(np.array([0, 1, 1, 0]), np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]),
                               ["a", "b"])
    assert set(HEADLINE_METRICS) <= set(m) and all(isinstance(m[k], float) for k in HEADLINE_METRICS)
    assert set(METRICS) == set(HEADLINE_METRICS)
