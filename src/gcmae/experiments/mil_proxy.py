"""A stated proxy for slide-level MIL when real labelled slides are too few: bags of real PCam patches.

PCam patches carry a tile label (tumour or not). A *negative bag* holds only negative patches; a *positive bag*
holds mostly negative patches plus a fraction (e.g. 10-30 %) of tumour patches, like a slide with a small
metastasis. Train bags are drawn from one folder (PCam ``train``) and test bags from another (PCam ``valid``, other
slides), so no patch is shared between train and test bags; within one split a patch may appear in several bags.
This measures whether MIL finds a few positive tiles in a bag; it is not a slide-level benchmark.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from gcmae.encoders.cache import FeatureSet, folder_features
from gcmae.encoders.loading import Encoder
from gcmae.io.atomic import atomic_path, write_csv_atomic
from gcmae.slide.bags import write_attrs


@dataclass(frozen=True)
class ProxySpec:
    bags_per_class: int = 50
    bag_size: tuple[int, int] = (20, 50)  # inclusive range of patches per bag
    positive_fraction: tuple[float, float] = (0.1, 0.3)  # range of the tumour share of a positive bag
    negative_class: int = 0
    positive_class: int = 1


def proxy_bags(labels: np.ndarray, spec: ProxySpec, seed: int) -> list[tuple[np.ndarray, int]]:
    """(patch indices, bag label 0/1) for `spec.bags_per_class` negative then positive bags, seeded."""
    rng = np.random.default_rng(seed)
    neg = np.flatnonzero(labels == spec.negative_class)
    pos = np.flatnonzero(labels == spec.positive_class)
    lo, hi = spec.bag_size
    if len(neg) < hi or len(pos) < max(1, int(np.ceil(hi * spec.positive_fraction[1]))):
        raise ValueError(f"too few patches ({len(neg)} negative, {len(pos)} positive) for bags of up to {hi}")
    bags = []
    for label in (0, 1):
        for _ in range(spec.bags_per_class):
            size = int(rng.integers(lo, hi + 1))
            k = max(1, int(round(size * rng.uniform(*spec.positive_fraction)))) if label else 0
            idx = np.concatenate([rng.choice(neg, size - k, replace=False), rng.choice(pos, k, replace=False)])
            bags.append((rng.permutation(idx), label))
    return bags


def write_proxy_bags(fs: FeatureSet, bags: list[tuple[np.ndarray, int]], out_dir: Path, prefix: str,
                     record: dict[str, Any] | None = None) -> Path:
    """One bag file per bag in `out_dir` and `labels.csv` (returned): `<prefix>NNN.pt` ({"features": (n, D)}),
    or `<prefix>NNN.h5` carrying the encoder `record` as attributes when given (so the model records it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = []
    for i, (idx, label) in enumerate(bags):
        sid, feats = f"{prefix}{i:03d}", fs.features[torch.from_numpy(idx)].numpy().astype(np.float32)
        with atomic_path(out_dir / f"{sid}{'.h5' if record else '.pt'}") as tmp:
            if record:
                with h5py.File(tmp, "w") as h5:
                    h5.create_dataset("features", data=feats)
                    write_attrs(h5, {**record, "proxy_source": str(fs.root)})
            else:
                torch.save({"features": torch.from_numpy(feats)}, tmp)
        labels.append([sid, "tumour" if label else "normal"])
    return write_csv_atomic(out_dir / "labels.csv", ["slide_id", "label"], labels)


def run_proxy(encoder: Encoder, pool: str, train_dir: str | Path, test_dir: str | Path, out_dir: str | Path,
              spec: ProxySpec = ProxySpec(), seed: int = 0, mil_overrides: dict[str, Any] | None = None,
              batch_size: int = 128, cache_dir: str | Path | None = None, progress: bool = False,
              record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Embed both folders, build train/test bags, train ABMIL on the train bags, score the test bags.
    Returns the test metrics (classification_metrics) plus the bag counts and the model folder. With the
    encoder's `record` (gcmae.slide.features.encoder_record), the model records its encoder like a model
    trained on `gcmae extract` features."""
    from gcmae.slide.mil import predict_slides
    from gcmae.slide.mil_train import MILTrainOptions, train_mil

    if record is not None and (record["pool"] != pool or record["img_size"] != encoder.img_size):
        raise ValueError(f"the record ({record['pool']}, {record['img_size']} px) does not describe pool {pool} at "
                         f"{encoder.img_size} px")
    out_dir = Path(out_dir)
    train = folder_features(encoder, train_dir, pool, cache_dir, batch_size)
    test = folder_features(encoder, test_dir, pool, cache_dir, batch_size)
    train_labels = write_proxy_bags(train, proxy_bags(train.labels.numpy(), spec, seed), out_dir / "train_bags", "tr",
                                    record)
    test_labels = write_proxy_bags(test, proxy_bags(test.labels.numpy(), spec, seed + 1), out_dir / "test_bags", "te",
                                   record)
    opts = MILTrainOptions(features=str(out_dir / "train_bags"), labels=str(train_labels), out=str(out_dir / "mil"),
                           seed=seed, device="cpu", overwrite=True, **(mil_overrides or {}))
    train_mil(opts, progress=progress)
    predict_slides(out_dir / "mil", out_dir / "test_bags", out_dir / "test", labels=test_labels, draw=False)
    metrics = json.loads((out_dir / "test" / "metrics.json").read_text())["results"]["abmil"]
    return {**metrics, "train_bags": 2 * spec.bags_per_class, "test_bags": 2 * spec.bags_per_class,
            "model": str(out_dir / "mil")}
