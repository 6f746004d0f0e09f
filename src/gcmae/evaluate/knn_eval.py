"""`gcmae knn`: weighted kNN (cosine, exp(s / T) votes) and 1-NN of a val folder against a train folder."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from gcmae.data.folders import check_same_classes, open_folder, same_images
from gcmae.encoders.cache import FeatureSet
from gcmae.evaluate.common import excluded_notes, train_val_features, weights_summary
from gcmae.evaluate.options import KNNOptions, settings
from gcmae.scoring.knn import knn_methods, vote_probabilities
from gcmae.scoring.metrics import classification_metrics
from gcmae.scoring.report import console_table, save_evaluation, write_predictions

log = logging.getLogger(__name__)


def leave_one_out_reason(opts: KNNOptions) -> str:
    """Why this kNN run is leave-one-out ('' when it is not): asked for, or --val is --train under another name.

    ValueError when --leave-one-out is given with a --val that is another set of images."""
    if opts.leave_one_out:
        if opts.val and not same_images(opts.train, opts.val):
            raise ValueError(f"--leave-one-out classifies the --train images against each other; --val {opts.val} "
                             f"is another folder (drop --val, or drop --leave-one-out)")
        return "--leave-one-out"
    if same_images(opts.train, opts.val):
        return f"--val {opts.val} holds the same images as --train {opts.train}"
    return ""


def knn_results(
    train: FeatureSet, val: FeatureSet, ks: tuple[int, ...], temperature: float, leave_one_out: bool = False,
    probabilities: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, Any]]:
    """Metrics of weighted kNN for each k, and of 1-NN; class probabilities = normalised votes (also stored in
    `probabilities`, by method, when a dict is given).

    With `leave_one_out` (val is train) each image's own entry is excluded. "k" is the k used: capped at the
    reference size (minus one for leave-one-out); "k_asked" is the k asked for."""
    methods = knn_methods(train.features, train.labels, val.features, len(train.classes), ks, temperature,
                          exclude_self=leave_one_out)
    asked = dict(zip(methods, dict.fromkeys((*ks, 1))))
    results = {}
    for name, (k_used, votes) in methods.items():
        probs = vote_probabilities(votes)
        if probabilities is not None:
            probabilities[name] = np.asarray(probs)
        results[name] = {**classification_metrics(val.labels, probs, train.classes), "k": k_used,
                         "k_asked": asked[name], "temperature": temperature, "leave_one_out": leave_one_out}
    return results


def run_knn(opts: KNNOptions) -> dict[str, Any]:
    """Embed both folders (cached), classify val by kNN against train, write outputs to opts.out.

    When val is train (`--leave-one-out`, or --val the same folder / the same files) it is leave-one-out: an
    image never votes for itself (it would always be its own nearest neighbour)."""
    if any(k < 1 for k in opts.k):
        raise ValueError(f"k must be >= 1, got {opts.k}")
    loo_reason = leave_one_out_reason(opts)
    train_ds = None
    if loo_reason:
        train_ds = open_folder(opts.train)
        if opts.val:  # the --val folder as it is, checked too (e.g. an extra, empty class folder is an error)
            val_ds = open_folder(opts.val)
            check_same_classes(train_ds.classes, train_ds.root, val_ds.classes, val_ds.root)
        opts = dataclasses.replace(opts, val=opts.train, leave_one_out=True)
    encoder, train, val = train_val_features(opts, same=bool(loo_reason), train_ds=train_ds)
    probabilities: dict[str, np.ndarray] = {}
    results = knn_results(train, val, tuple(opts.k), opts.temperature, bool(loo_reason), probabilities)
    extra = weights_summary(encoder, train, val)
    if loo_reason:
        extra["leave_one_out"] = loo_reason
        query = (f"query = the same {len(train.files)} images, **leave-one-out** ({loo_reason}): each image is "
                 f"classified by the others, never by itself")
        log.warning("kNN leave-one-out on %s: %s", opts.train, loo_reason)
    else:
        query = f"query = `{opts.val}` ({len(val.files)} images)"
    capped = [f"{name}: k {m['k']} (asked {m['k_asked']})" for name, m in results.items() if m["k"] != m["k_asked"]]
    notes = [f"Weighted kNN on cosine similarity, votes exp(cos / {opts.temperature}); reference = `{opts.train}` "
             f"({len(train.files)} images), {query}. Weights: "
             f"{encoder.description}; {opts.pool} features.", *excluded_notes(train, val)]
    if capped:
        notes.append(f"k capped at the reference size: {'; '.join(capped)}.")
    save_evaluation(opts.out, "knn", "kNN evaluation", settings(opts), results, extra, notes=notes)
    for name, probs in probabilities.items():
        write_predictions(Path(opts.out) / f"predictions_{name}.csv", val.files, val.labels, probs, train.classes)
    print(console_table(results))
    print(f"outputs in {opts.out} (metrics.json, report.md, confusion_*.csv/png, predictions_*.csv: one row per "
          f"image)")
    return {"results": results, **extra}
