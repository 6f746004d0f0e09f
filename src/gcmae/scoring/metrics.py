"""Classification metrics as a JSON-serialisable dict (scikit-learn), and the confusion matrix as CSV."""
from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from gcmae.io.atomic import write_text_atomic

ArrayLike = np.ndarray | torch.Tensor

# The summary every evaluation reports, with the label tables use (the full dict has more).
HEADLINE_METRICS = {"accuracy": "accuracy", "balanced_accuracy": "balanced acc.", "macro_f1": "macro-F1",
                    "auc": "AUC"}


def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def auc_score(labels: np.ndarray, probs: np.ndarray) -> tuple[float | None, str]:
    """(ROC AUC, kind): binary AUC of the positive class (index 1), or one-vs-rest macro AUC for more classes.

    None when it is undefined: a class with no query sample (nothing to rank it against).
    """
    num_classes = probs.shape[1]
    if num_classes == 2:
        if len(np.unique(labels)) < 2:
            return None, "binary (undefined: one class only)"
        return float(roc_auc_score(labels, probs[:, 1])), "binary"
    missing = sorted(set(range(num_classes)) - set(labels.tolist()))
    if missing:
        return None, f"one-vs-rest macro (undefined: no samples of class indices {missing})"
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=list(range(num_classes)))), \
        "one-vs-rest macro"


def classification_metrics(labels: ArrayLike, probs: ArrayLike, classes: list[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1, AUC, confusion matrix and a per-class report.

    `labels` (N,) are class indices, `probs` (N, C) class probabilities (rows summing to 1; any scores that
    rank the same way give the same AUC); predictions are `probs.argmax(1)`. Rows of the confusion matrix are
    the true class, columns the predicted class.
    """
    y = _numpy(labels).astype(np.int64)
    p = _numpy(probs).astype(np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[1] != len(classes):
        raise ValueError(f"probs {p.shape} do not match {y.shape[0]} labels and {len(classes)} classes")
    pred = p.argmax(axis=1)
    ids = list(range(len(classes)))
    auc, auc_kind = auc_score(y, p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")  # balanced accuracy
        precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=ids, zero_division=0)
        balanced = balanced_accuracy_score(y, pred)
        macro_f1 = f1_score(y, pred, labels=ids, average="macro", zero_division=0)
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(support[i])}
        for i, name in enumerate(classes)
    }
    return {
        "num_samples": int(y.shape[0]),
        "num_classes": len(classes),
        "classes": list(classes),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(macro_f1),
        "auc": auc,
        "auc_kind": auc_kind,
        "confusion_matrix": confusion_matrix(y, pred, labels=ids).tolist(),
        "per_class": per_class,
    }


def confusion_csv(matrix: list[list[int]], classes: list[str]) -> str:
    """The confusion matrix as CSV: header `true \\ predicted, <classes>`, one row per true class."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["true \\ predicted", *classes])
    for name, row in zip(classes, matrix):
        writer.writerow([name, *row])
    return buf.getvalue()


def write_confusion_csv(path: str | Path, matrix: list[list[int]], classes: list[str]) -> Path:
    return write_text_atomic(path, confusion_csv(matrix, classes))
