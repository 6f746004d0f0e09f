"""`gcmae knn`: weighted kNN (cosine, exp(s / T) votes) and 1-NN of a val folder against a train folder."""
from __future__ import annotations

from typing import Any

from gcmae.evaluate.common import excluded_notes, train_val_features, weights_summary
from gcmae.evaluate.features import FeatureSet
from gcmae.evaluate.knn import knn_probabilities
from gcmae.evaluate.metrics import classification_metrics
from gcmae.evaluate.options import KNNOptions, settings
from gcmae.evaluate.report import console_table, save_evaluation


def knn_results(
    train: FeatureSet, val: FeatureSet, ks: tuple[int, ...], temperature: float
) -> dict[str, dict[str, Any]]:
    """Metrics of weighted kNN for each k, and of 1-NN; class probabilities = normalised votes."""
    num_classes = len(train.classes)
    results = {}
    for k in (*ks, 1):
        k_eff = min(k, len(train.files))
        probs = knn_probabilities(train.features, train.labels, val.features, num_classes, k_eff, temperature)
        name = "nn1" if k == 1 else f"knn_k{k}"
        results[name] = {**classification_metrics(val.labels, probs, train.classes), "k": k_eff,
                         "temperature": temperature}
    return results


def run_knn(opts: KNNOptions) -> dict[str, Any]:
    """Embed both folders (cached), classify val by kNN against train, write outputs to opts.out."""
    if any(k < 1 for k in opts.k):
        raise ValueError(f"k must be >= 1, got {opts.k}")
    encoder, train, val = train_val_features(opts)
    results = knn_results(train, val, tuple(opts.k), opts.temperature)
    extra = weights_summary(encoder, train, val)
    notes = [f"Weighted kNN on cosine similarity, votes exp(cos / {opts.temperature}); reference = `{opts.train}` "
             f"({len(train.files)} images), query = `{opts.val}` ({len(val.files)} images). Weights: "
             f"{encoder.description}; {opts.pool} features.", *excluded_notes(train, val)]
    save_evaluation(opts.out, "knn", "kNN evaluation", settings(opts), results, extra, notes=notes)
    print(console_table(results))
    print(f"outputs in {opts.out} (metrics.json, report.md, confusion_*.csv/png)")
    return {"results": results, **extra}
