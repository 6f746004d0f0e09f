"""The fast linear probe: standardised features, multinomial logistic regression (scikit-learn, L-BFGS)."""
from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler


def fit_logistic_probe(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, c: float = 1.0,
                       max_iter: int = 1000, seed: int = 0) -> tuple[Pipeline, bool]:
    """(standardise + logistic regression fitted on (features, labels), whether L-BFGS converged)."""
    x, y = np.asarray(features, dtype=np.float64), np.asarray(labels)
    if len(np.unique(y)) < 2:
        raise ValueError("the linear probe needs training images of at least two classes")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(x, y)
    return clf, not any(issubclass(w.category, ConvergenceWarning) for w in caught)


def probe_probabilities(clf: Pipeline, features: np.ndarray | torch.Tensor, num_classes: int) -> np.ndarray:
    """(N, num_classes) probabilities; classes absent from the training labels get 0."""
    probs = clf.predict_proba(np.asarray(features, dtype=np.float64))
    out = np.zeros((probs.shape[0], num_classes))
    out[:, clf.classes_.astype(int)] = probs
    return out
