"""Does ABMIL find a few tumour tiles in a bag? A stated proxy experiment on real PCam patches.

Real labelled slides are too few here (2 shipped), so bags are built from real PCam patches (see
gcmae.experiments.mil_proxy): negative bags hold only negative patches, positive bags mostly negative patches plus 10-30 %
tumour patches; bags of 20-50 patches; train bags from data/samples/pcam/train, test bags from
data/samples/pcam/valid (other patients; no patch shared between train and test bags). Features: a frozen encoder
(default: random-init ViT-Tiny/16 at 96 px, mean of the patch tokens; `--checkpoint` for a trained one).

Prints, per seed (bag draw, split, init), the test-bag AUC and balanced accuracy of ABMIL and of a baseline
without attention (mean of the bag's features -> standardised logistic regression), and their mean.

This is a report, not a test: the exit code is 0 whatever happens.

    .venv/bin/python benchmarks/mil_proxy.py           # 3 seeds, 50 + 50 bags per split, about 1-2 min on 2 cores
    .venv/bin/python benchmarks/mil_proxy.py --quick   # 1 seed, 25 + 25 bags
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


from _machine import ROOT, benchmark_device, device_name, run_report  # first: it puts src/ on sys.path

import numpy as np
import torch


PCAM = ROOT / "data" / "samples" / "pcam"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="random", help="encoder weights, or 'random' (default)")
    p.add_argument("--encoder", default="vit_tiny", help="preset for 'random'")
    p.add_argument("--img-size", type=int, default=96)
    p.add_argument("--pool", default="mean", choices=["cls", "mean"])
    p.add_argument("--bags-per-class", type=int, default=None, help="per split (default 50; --quick 25)")
    p.add_argument("--bag-size", type=int, nargs=2, default=(20, 50))
    p.add_argument("--positive-fraction", type=float, nargs=2, default=(0.1, 0.3))
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (--quick: 0)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--cache-dir", default="runs/feature-cache", help="feature cache ('' disables)")
    p.add_argument("--out", default=None, help="keep bags and models here (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    a.bags_per_class = a.bags_per_class or (25 if a.quick else 50)
    a.seeds = a.seeds or ([0] if a.quick else [0, 1, 2])
    return a


def mean_pool_baseline(bag_dir: Path, test_dir: Path, seed: int) -> tuple[float, float]:
    """(AUC, balanced accuracy) of logistic regression on each bag's mean feature."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from gcmae.scoring.probe import fit_logistic_probe
    from gcmae.slide.bags import find_bags, load_bag, read_labels_csv

    def xy(folder: Path) -> tuple[np.ndarray, np.ndarray]:
        labels = read_labels_csv(folder / "labels.csv")
        bags = find_bags(folder)
        x = np.stack([load_bag(bags[s]).features.mean(0) for s in sorted(labels)])
        return x, np.array([labels[s] == "tumour" for s in sorted(labels)], dtype=int)

    (xtr, ytr), (xte, yte) = xy(bag_dir), xy(test_dir)
    clf, _ = fit_logistic_probe(xtr, ytr, seed=seed)
    p = clf.predict_proba(xte.astype(np.float64))[:, 1]
    return float(roc_auc_score(yte, p)), float(balanced_accuracy_score(yte, p > 0.5))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    benchmark_device("mil_proxy.py", "cpu", args.threads)  # CPU only: never None
    from gcmae.encoders.loading import load_encoder
    from gcmae.experiments.mil_proxy import ProxySpec, run_proxy

    t0 = time.perf_counter()
    encoder = load_encoder(args.checkpoint, args.encoder if args.checkpoint == "random" else None, args.img_size)
    spec = ProxySpec(args.bags_per_class, tuple(args.bag_size), tuple(args.positive_fraction))
    print(f"mil_proxy.py: torch {torch.__version__}, {device_name('cpu')}, torch threads {torch.get_num_threads()}"
          f"; encoder {encoder.description}, pool {args.pool}; {2 * spec.bags_per_class} train bags (pcam/train) and "
          f"{2 * spec.bags_per_class} test bags (pcam/valid) of {spec.bag_size[0]}-{spec.bag_size[1]} patches, "
          f"positives with {spec.positive_fraction[0]:.0%}-{spec.positive_fraction[1]:.0%} tumour patches")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        for seed in args.seeds:
            run = out / f"seed{seed}"
            m = run_proxy(encoder, args.pool, PCAM / "train", PCAM / "valid", run, spec, seed=seed,
                          mil_overrides={"epochs": args.epochs}, cache_dir=args.cache_dir or None)
            base_auc, base_bacc = mean_pool_baseline(run / "train_bags", run / "test_bags", seed)
            rows.append((seed, m["auc"], m["balanced_accuracy"], base_auc, base_bacc))
            print(f"  seed {seed}: ABMIL AUC {m['auc']:.3f} (balanced acc. {m['balanced_accuracy']:.3f}); mean-pool "
                  f"+ logistic regression AUC {base_auc:.3f} ({base_bacc:.3f})", flush=True)
    print(f"\n{'':<36}{'AUC':>8}{'bal. acc.':>11}")
    for i, name in ((1, "ABMIL (gated attention)"), (3, "mean-pool + logistic regression")):
        aucs, baccs = [r[i] for r in rows], [r[i + 1] for r in rows]
        sd = f" ± {statistics.stdev(aucs):.3f}" if len(aucs) > 1 else ""
        print(f"{name:<36}{statistics.mean(aucs):>8.3f}{statistics.mean(baccs):>11.3f}   "
              f"(mean of {len(rows)} seed(s){sd})")
    print(f"total wall time {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    run_report(main)
