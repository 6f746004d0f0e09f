"""Two diagnostics of a frozen-feature probe on a train/valid folder pair (the learning study, issue 10).

    python -m gcmae.experiments.probe_diagnostics --out runs/diagnostics ENCODER [ENCODER ...]

For every encoder (anything `pcam_probe` takes, `colour-histogram` included) and pool, the logistic probe of
`gcmae.evaluate.frozen_probe` is scored three ways: on the training split it was fit on, by 5-fold cross-validation
inside the training split (the same slides: in distribution) and on the validation split (other slides). A large
gap between the last two means the features do not transfer across slides; no gap with a low score means the
features are simply not linearly separable. For encoders it also fits the probe on the features concatenated with
the colour histogram: an encoder that learnt something the histogram lacks scores above the histogram alone.
Balanced accuracy throughout; one JSON per encoder in --out, written atomically and skipped when present.
`--stain-norm METHOD` (and `--stain-target`) stain-normalises every image first, the histogram's included; a result
file records the normaliser's id and is refused for another one.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from gcmae.data.in_memory import TensorImageDataset, default_cache_dir
from gcmae.evaluate.frozen_probe import colour_histogram_features
from gcmae.experiments.pcam_probe import COLOUR, _slug, encoder_features
from gcmae.io.atomic import write_text_atomic
from gcmae.stain.normalizer import CHOICES, StainNormalizer, make_normalizer

log = logging.getLogger(__name__)


def _probe() -> object:
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))


def in_and_out_of_distribution(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                               folds: int = 5, seed: int = 0) -> dict[str, float]:
    """Balanced accuracy of the standardised logistic probe (C = 1) on its own training data, by stratified
    `folds`-fold cross-validation inside it, and fit on all of it and scored on the validation split."""
    cv = cross_val_predict(_probe(), train_x, train_y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    fit = _probe().fit(train_x, train_y)
    return {"train_in_sample": float(balanced_accuracy_score(train_y, fit.predict(train_x))),
            "train_cv": float(balanced_accuracy_score(train_y, cv)),
            "valid": float(balanced_accuracy_score(val_y, fit.predict(val_x)))}


def diagnose(specs: list[str], train_dir: str, val_dir: str, out: Path, cache_dir: str | None = None,
             size: int = 96, stain: StainNormalizer | None = None) -> list[Path]:
    """Write one JSON per encoder of `specs` to `out`; returns the files written or found."""
    cache = cache_dir or default_cache_dir()
    train = TensorImageDataset(train_dir, size, cache, validate="none", stain=stain)
    val = TensorImageDataset(val_dir, size, cache, validate="none", stain=stain)
    stain_id = None if stain is None else stain.id
    if train.classes != val.classes:
        raise ValueError(f"{train_dir} has classes {train.classes} but {val_dir} has {val.classes}")
    ytr, yva = train.labels.numpy(), val.labels.numpy()
    hist = (colour_histogram_features(train.images), colour_histogram_features(val.images))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in specs:
        path = out / f"{_slug(spec)}.json"
        if path.exists():
            found = json.loads(path.read_text())
            if (found.get("train"), found.get("val"), found.get("stain")) != (str(train_dir), str(val_dir), stain_id):
                raise ValueError(f"{path} holds results for train {found.get('train')} / val {found.get('val')} "
                                 f"with stain normalisation {found.get('stain')}, not {train_dir} / {val_dir} with "
                                 f"{stain_id}: use another --out")
        else:
            if spec == COLOUR:
                feats = {"hist": hist}
            else:
                tr = encoder_features(spec, train.images, random_img_size=size, stain=stain)
                va = encoder_features(spec, val.images, random_img_size=size, stain=stain)
                feats = {p: (tr[p], va[p]) for p in ("cls", "mean")}
            record: dict = {"encoder": spec, "train": str(train_dir), "val": str(val_dir), "stain": stain_id}
            for pool, (xtr, xva) in feats.items():
                record[pool] = in_and_out_of_distribution(xtr, ytr, xva, yva)
                if spec != COLOUR:
                    record[pool]["valid_with_histogram"] = in_and_out_of_distribution(
                        np.concatenate([hist[0], xtr], 1), ytr, np.concatenate([hist[1], xva], 1), yva)["valid"]
                log.info("%s [%s]: %s", spec, pool, record[pool])
            write_text_atomic(path, json.dumps(record, indent=1) + "\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("encoders", nargs="+", help=f"checkpoint, exported folder, name, random:ENC:PATCH:SEED or {COLOUR}")
    p.add_argument("--train", default="../shared/data/pcam/train")
    p.add_argument("--val", default="../shared/data/pcam/valid")
    p.add_argument("--out", type=Path, default=Path("runs/diagnostics"))
    p.add_argument("--cache-dir", help="decoded-image cache (default ~/.cache/gcmae)")
    p.add_argument("--stain-norm", choices=CHOICES, default="none", help="stain-normalise every image first")
    p.add_argument("--stain-target", help="target image of --stain-norm (default: the shipped target)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    stain = make_normalizer(args.stain_norm, args.stain_target)
    for path in diagnose(args.encoders, args.train, args.val, args.out, args.cache_dir, stain=stain):
        print(path.read_text().strip())


if __name__ == "__main__":
    main()
