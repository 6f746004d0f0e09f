"""A pretrained encoder against its own architecture untrained, on a labelled train/valid folder pair.

The encoder's logistic probe (the learning study's protocol: standardised frozen features, scikit-learn logistic
regression fit on the train folder, balanced accuracy on the valid folder) is compared with the probes of random
inits of several seeds, all on images normalised the way the encoder's pretraining normalised them. The margin is
judged against both of its noise sources: which valid images were drawn (a paired bootstrap over them) and which
seed the random init had (the spread over seeds). `python -m gcmae.experiments.random_baseline ENCODER` prints it.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gcmae.data.in_memory import TensorImageDataset, default_cache_dir
from gcmae.experiments.pcam_probe import encoder_features
from gcmae.io.atomic import write_text_atomic
from gcmae.io.convert import load_weights, pretrain_normalizer_record, pretrain_stain
from gcmae.scoring.probe import fit_logistic_probe
from gcmae.stain.normalizer import pretraining_normalizer

log = logging.getLogger(__name__)

POOLS = ("cls", "mean")


@dataclass(frozen=True)
class RandomInitComparison:
    """One pool's result: balanced accuracies and the margin over the random inits' mean, with its standard error."""

    pool: str
    encoder: float
    random_init: tuple[float, ...]  # one per seed, in the order of `seeds`
    seeds: tuple[int, ...]
    margin: float  # encoder minus the mean over seeds
    margin_se: float  # sqrt(bootstrap variance over valid images + variance over seeds / number of seeds)

    @property
    def z(self) -> float:
        """The margin in standard errors (one-sided levels: 1.96 for 2.5 %, 2.33 for 1 %)."""
        if self.margin_se > 0:
            return self.margin / self.margin_se
        return 0.0 if self.margin == 0 else math.copysign(math.inf, self.margin)


def balanced_accuracy_rows(correct: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Balanced accuracy of each model (rows of `correct`, (M, N) booleans) under each bootstrap draw (rows of
    `weights`, (B, N) counts of how often each image is drawn): (B, M). Classes absent from a draw are skipped."""
    out = np.zeros((weights.shape[0], correct.shape[0]))
    present = np.zeros((weights.shape[0], 1))
    for cls in np.unique(labels):
        w = weights[:, labels == cls].astype(np.float64)
        n = w.sum(1, keepdims=True)
        hit = w @ correct[:, labels == cls].T.astype(np.float64)
        out += np.divide(hit, n, out=np.zeros_like(hit), where=n > 0)
        present += n > 0
    return out / present


def paired_margin(labels: np.ndarray, encoder_pred: np.ndarray, random_preds: np.ndarray, bootstrap: int = 2000,
                  seed: int = 0) -> tuple[float, float, float, np.ndarray]:
    """(encoder's balanced accuracy, margin over the random inits' mean, its standard error, the random inits'
    balanced accuracies) from predicted labels: `encoder_pred` (N,), `random_preds` (S, N), one row per seed."""
    labels = np.asarray(labels)
    correct = np.vstack([encoder_pred == labels, random_preds == labels])
    full = balanced_accuracy_rows(correct, labels, np.ones((1, labels.size)))[0]
    draws = np.random.default_rng(seed).multinomial(labels.size, np.full(labels.size, 1 / labels.size), bootstrap)
    boot = balanced_accuracy_rows(correct, labels, draws)
    margins = boot[:, 0] - boot[:, 1:].mean(1)
    seeds = random_preds.shape[0]
    seed_var = full[1:].var(ddof=1) / seeds if seeds > 1 else 0.0
    return float(full[0]), float(full[0] - full[1:].mean()), float(np.sqrt(margins.var(ddof=1) + seed_var)), full[1:]


def compare_with_random_init(encoder: str | Path, train_dir: str | Path, val_dir: str | Path,
                             seeds: tuple[int, ...] = (0, 1, 2, 3, 4), size: int | None = None,
                             cache_dir: str | Path | None = None, bootstrap: int = 2000,
                             stain_target: str | Path | None = None) -> list[RandomInitComparison]:
    """Compare `encoder` (a checkpoint, export folder or shipped name) with random inits of the same architecture
    at `seeds`, per pool. Images are normalised as the encoder's pretraining normalised them (none, or its
    recorded `data.stain_norm`), for the random inits too, so that only the weights differ. The recorded target is
    a path on the training machine: `stain_target` gives it here when it is somewhere else."""
    if len(set(seeds)) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"random-init seeds {seeds}: give at least two different seeds (their spread is a noise)")
    if bootstrap < 2:
        raise ValueError(f"bootstrap={bootstrap}: at least 2 draws are needed for a standard error")
    weights = load_weights(encoder)
    method, recorded = pretrain_stain(weights) or ("none", "")
    stored = pretrain_normalizer_record(weights)  # an export's fitted normaliser: no target image needed
    target = str(stain_target or recorded)  # "": the shipped default target
    if stain_target:
        stored = None  # the given target replaces the recorded one
    if stored is None and recorded and not Path(target).is_file():
        raise FileNotFoundError(f"{encoder} was pretrained on images {method}-normalised to {recorded}, but "
                                f"{target} is not here: pass stain_target= (--stain-target) with that image")
    stain = pretraining_normalizer(method, target, stored)
    side = size or weights.img_size
    cache = cache_dir or default_cache_dir()
    train = TensorImageDataset(train_dir, side, cache, validate="none", stain=stain)
    val = TensorImageDataset(val_dir, side, cache, validate="none", stain=stain)
    if train.classes != val.classes:
        raise ValueError(f"{train_dir} has classes {train.classes} but {val_dir} has {val.classes}")
    specs = [str(encoder)] + [f"random:{weights.encoder}:{weights.patch_size}:{s}" for s in seeds]
    preds: dict[str, list[np.ndarray]] = {pool: [] for pool in POOLS}
    for spec in specs:
        tr = encoder_features(spec, train.images, random_img_size=weights.img_size, stain=stain)
        va = encoder_features(spec, val.images, random_img_size=weights.img_size, stain=stain)
        for pool in POOLS:
            clf, converged = fit_logistic_probe(tr[pool], train.labels.numpy())
            if not converged:
                log.warning("%s (%s): the logistic probe did not converge; its score may be a little low", spec, pool)
            preds[pool].append(clf.predict(va[pool].astype(np.float64)))
    results = []
    for pool in POOLS:
        score, margin, se, randoms = paired_margin(val.labels.numpy(), preds[pool][0], np.stack(preds[pool][1:]),
                                                   bootstrap)
        results.append(RandomInitComparison(pool, score, tuple(map(float, randoms)), tuple(seeds), margin, se))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("encoder", help="checkpoint, export folder or shipped encoder name")
    parser.add_argument("--train", default="data/samples/pcam/train")
    parser.add_argument("--val", default="data/samples/pcam/valid")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--stain-target", help="the encoder's stain target image, when its recorded path is not here")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    results = compare_with_random_init(args.encoder, args.train, args.val, tuple(args.seeds),
                                       stain_target=args.stain_target)
    print("| pool | encoder | random init (per seed) | margin | SE | z |\n|---|---:|---|---:|---:|---:|")
    for r in results:
        randoms = ", ".join(f"{v:.3f}" for v in r.random_init)
        print(f"| {r.pool} | {r.encoder:.3f} | {randoms} | {r.margin:+.3f} | {r.margin_se:.3f} | {r.z:.1f} |")
    if args.json:
        write_text_atomic(args.json, json.dumps([asdict(r) | {"z": r.z} for r in results], indent=1) + "\n")


if __name__ == "__main__":
    main()
