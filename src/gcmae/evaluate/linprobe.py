"""`gcmae linprobe`: a linear classifier on frozen features.

`fast` (default): L2-regularised multinomial logistic regression (scikit-learn, L-BFGS) on standardised cached
features; standardising with the training set's statistics is what BatchNorm without affine does in MAE's probe.
`paper`: MAE/GCMAE's protocol, see `linprobe_paper`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gcmae.data.folders import same_images
from gcmae.device import resolve_device
from gcmae.evaluate.common import excluded_notes, train_val_features, weights_summary
from gcmae.evaluate.options import LinprobeOptions, settings
from gcmae.scoring.metrics import classification_metrics
from gcmae.scoring.probe import fit_logistic_probe, probe_probabilities
from gcmae.scoring.report import console_table, save_evaluation, write_predictions


def run_fast(opts: LinprobeOptions) -> tuple[dict[str, dict[str, Any]], dict[str, Any], list[str]]:
    encoder, train, val = train_val_features(opts)
    clf, converged = fit_logistic_probe(train.features, train.labels, opts.logreg_c, opts.max_iter, opts.seed)
    probs = probe_probabilities(clf, val.features, len(train.classes))
    write_predictions(Path(opts.out) / "predictions.csv", val.files, val.labels, probs, train.classes)
    train_acc = float((clf.predict(np.asarray(train.features, dtype=np.float64)) == train.labels.numpy()).mean())
    metrics = {**classification_metrics(val.labels, probs, train.classes), "train_accuracy": train_acc,
               "converged": converged}
    notes = [f"Fast protocol: standardised {opts.pool} features of the frozen encoder ({encoder.description}), "
             f"multinomial logistic regression (C = {opts.logreg_c}, L-BFGS, {opts.max_iter} iterations max"
             f"{'' if converged else ', did NOT converge'}); train accuracy {train_acc:.4f}.",
             *excluded_notes(train, val)]
    return {"logreg": metrics}, weights_summary(encoder, train, val), notes


def run_linprobe(opts: LinprobeOptions) -> dict[str, Any]:
    """Train the probe on opts.train, evaluate on opts.val, write outputs to opts.out."""
    if same_images(opts.train, opts.val):
        raise ValueError(f"--val {opts.val} holds the same images as --train {opts.train}: the probe would be scored "
                         f"on its own training images. Give a held-out --val, or use `gcmae transfer --eval "
                         f"NAME={opts.train}` (stratified cross-validation)")
    if opts.protocol == "paper":
        from gcmae.evaluate.linprobe_paper import run_paper

        results, extra, notes = run_paper(opts, resolve_device(opts.device))
        title = "Linear probe (paper protocol)"
    else:
        results, extra, notes = run_fast(opts)
        title = "Linear probe (fast protocol)"
    save_evaluation(opts.out, "linprobe", title, settings(opts), results, extra, notes=notes)
    print(console_table(results))
    per_image = ", predictions.csv: one row per image" if opts.protocol != "paper" else ""
    print(f"outputs in {opts.out} (metrics.json, report.md, confusion_*.csv/png{per_image})")
    return {"results": results, **extra}
