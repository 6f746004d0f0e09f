"""Frozen-feature protocols: train/val and cross-validated metrics against brute-force references."""
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.model_selection import StratifiedKFold

from gcmae.encoders.cache import FeatureSet
from gcmae.evaluate.protocols import EvalSet, ProtocolSettings, evaluate_features, result_rows


def feature_set(x: np.ndarray, y: np.ndarray, classes=("a", "b", "c")) -> FeatureSet:
    return FeatureSet(torch.tensor(x, dtype=torch.float32), torch.tensor(y), list(classes),
                      [f"{i}.png" for i in range(len(y))], Path("set"))


def brute_force_knn(train_x, train_y, query_x, k, t, n_cls):
    """Reference: cosine similarity to every training item, the k largest vote exp(s / t) for their class."""
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    pred = []
    for q in query_x:
        s = a @ (q / np.linalg.norm(q))
        votes = np.zeros(n_cls)
        for j in np.argsort(-s)[:k]:
            votes[train_y[j]] += np.exp(s[j] / t)
        pred.append(votes.argmax())
    return np.array(pred)


def noisy_clusters(n_per_class=8, dim=6, noise=1.2, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim)) * 2
    y = np.repeat(np.arange(3), n_per_class)
    return centres[y] + noise * rng.normal(size=(len(y), dim)), y


def test_cross_validation_matches_a_hand_written_out_of_fold_knn():
    x, y = noisy_clusters()
    s = ProtocolSettings(knn_k=(5,), temperature=0.1, seed=3)
    results = evaluate_features(feature_set(x, y), None, s, cv_folds=4)
    pred = np.zeros(len(y), dtype=int)
    for fit, test in StratifiedKFold(4, shuffle=True, random_state=3).split(x, y):
        pred[test] = brute_force_knn(x[fit], y[fit], x[test], 5, 0.1, 3)
    expected = (pred == y).mean()
    assert 0.3 < expected < 1.0  # noisy enough that a wrong fold assignment would show
    assert results["knn_k5"]["accuracy"] == pytest.approx(expected)
    assert set(results) == {"knn_k5", "nn1", "logreg"}


def test_train_val_split_uses_val_only_as_queries():
    x, y = noisy_clusters(seed=1)
    xv, yv = noisy_clusters(n_per_class=5, seed=2)
    s = ProtocolSettings(knn_k=(3,), temperature=0.07)
    results = evaluate_features(feature_set(x, y), feature_set(xv, yv), s)
    pred = brute_force_knn(x, y, xv, 3, 0.07, 3)
    assert results["knn_k3"]["accuracy"] == pytest.approx((pred == yv).mean())
    assert results["logreg"]["num_samples"] == len(yv)


def test_separable_features_are_classified_perfectly_by_every_protocol():
    x, y = noisy_clusters(noise=0.01)
    results = evaluate_features(feature_set(x, y), None, ProtocolSettings(knn_k=(3,)), cv_folds=4)
    assert all(m["accuracy"] == 1.0 for m in results.values())


def test_too_few_images_per_class_for_the_folds_is_a_clear_error():
    x, y = noisy_clusters(n_per_class=3)
    with pytest.raises(ValueError, match="4-fold cross-validation needs >= 4 images per class"):
        evaluate_features(feature_set(x, y), None, ProtocolSettings(), cv_folds=4)


def test_rows_flatten_sets_and_protocols():
    results = {"crc": {"nn1": {"accuracy": 0.5, "balanced_accuracy": 0.4, "macro_f1": 0.3, "auc": None}}}
    assert result_rows(results, method="mae", seed=1) == [
        {"method": "mae", "seed": 1, "eval_set": "crc", "protocol": "nn1", "accuracy": 0.5,
         "balanced_accuracy": 0.4, "macro_f1": 0.3, "auc": None}]


@pytest.mark.parametrize("spec, expected", [
    ("crc=data/crc", EvalSet("crc", "data/crc", None)),
    ("pcam=a/train,a/valid", EvalSet("pcam", "a/train", "a/valid")),
])
def test_eval_set_specs_parse(spec, expected):
    assert EvalSet.parse(spec) == expected


@pytest.mark.parametrize("spec", ["crc", "=a", "x=", "x=a,b,c"])
def test_bad_eval_set_specs_are_named(spec):
    with pytest.raises(ValueError, match="NAME=TRAIN_DIR"):
        EvalSet.parse(spec)
