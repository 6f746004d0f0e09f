"""What the evaluation commands share: the encoder of the options, labelled train/val features, their summary."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gcmae.data.datasets import ImageFolderDataset
from gcmae.data.folders import check_same_classes, first_image_side, open_folder
from gcmae.device import resolve_device
from gcmae.encoders.cache import FeatureSet, folder_features
from gcmae.encoders.loading import (RANDOM, Encoder, apply_stain_option, checked_normalizer, load_encoder,
                                    random_input_size)
from gcmae.evaluate.options import BaseOptions, KNNOptions, LinprobeOptions

log = logging.getLogger(__name__)


def img_size_of(opts: BaseOptions) -> int | None:
    """`--img-size`; for `--checkpoint random` without it, the size of the data (the first image of `--train`, or
    of `--data` for visualize), rounded to a multiple of the patch size. None: the checkpoint's."""
    folder = getattr(opts, "train", "") or getattr(opts, "data", "")
    if opts.img_size is not None or opts.checkpoint != RANDOM or not folder:
        return opts.img_size
    side, image = first_image_side(folder)
    return random_input_size(side, opts.patch_size, f"the first image of {folder} ({image.name})")


def encoder_from_options(opts: BaseOptions) -> Encoder:
    """The encoder of the options, with its stain normaliser when the options ask for one (a warning when that is
    not how it was pretrained)."""
    method = getattr(opts, "stain_norm", None)
    stain = checked_normalizer(method, getattr(opts, "stain_target", None))
    encoder = load_encoder(opts.checkpoint, opts.encoder, img_size_of(opts), opts.patch_size, opts.seed)
    apply_stain_option(encoder, method, stain)
    return encoder


def open_labelled_pair(train: str | Path, val: str | Path) -> tuple[ImageFolderDataset, ImageFolderDataset]:
    """Both folders opened and validated (no transform yet), labelled, with the same classes: checked before
    any model is loaded, so bad folders fail fast."""
    train_ds, val_ds = open_folder(train), open_folder(val)
    check_same_classes(train_ds.classes, train_ds.root, val_ds.classes, val_ds.root)
    return train_ds, val_ds


def train_val_features(opts: KNNOptions | LinprobeOptions, same: bool = False,
                       train_ds: ImageFolderDataset | None = None) -> tuple[Encoder, FeatureSet, FeatureSet]:
    """The encoder of the options and the (cached) features of the labelled train and val folders; with `same`
    (leave-one-out) the train folder only (`train_ds` when already opened), returned as both."""
    if same:
        train_ds = val_ds = train_ds or open_folder(opts.train)
    else:
        train_ds, val_ds = open_labelled_pair(opts.train, opts.val)
    encoder = encoder_from_options(opts)
    kwargs: dict[str, Any] = dict(pool=opts.pool, cache_dir=opts.cache_dir or None, batch_size=opts.batch_size,
                                  num_workers=opts.num_workers, device=resolve_device(opts.device))
    train = folder_features(encoder, train_ds, **kwargs)
    return encoder, train, train if same else folder_features(encoder, val_ds, **kwargs)


def encoder_used(encoder: Encoder) -> dict[str, Any]:
    """The architecture actually embedded with (preset name, input and patch size): what `--encoder`,
    `--img-size` and `--patch-size` left to the checkpoint resolved to."""
    from gcmae.models.vit import ENCODER_PRESETS

    enc = encoder.model
    dim, depth = int(enc.embed_dim), len(enc.blocks)
    preset = next((n for n, p in ENCODER_PRESETS.items() if p["embed_dim"] == dim and p["depth"] == depth),
                  f"custom ({dim} wide, {depth} blocks)")
    return {"encoder": preset, "img_size": int(encoder.img_size), "patch_size": int(encoder.identity["patch_size"])}


def weights_summary(encoder: Encoder, train: FeatureSet, val: FeatureSet) -> dict[str, Any]:
    """What was embedded, for metrics.json."""
    return {"weights": encoder.description, "encoder_used": encoder_used(encoder),
            "mean": list(encoder.mean), "std": list(encoder.std),
            "feature_dim": int(train.features.shape[1]), "num_train": len(train.files), "num_val": len(val.files),
            "classes": train.classes,
            "excluded_images": {"train": [{"file": f, "reason": r} for f, r in train.excluded],
                                "val": [{"file": f, "reason": r} for f, r in val.excluded]},
            "feature_cache": {"train": str(train.cache_path) if train.cache_path else None,
                              "val": str(val.cache_path) if val.cache_path else None},
            "stain": None if encoder.stain is None else {
                **encoder.stain.to_dict(), "passed_through": {"train": train.stain_failed, "val": val.stain_failed}}}


def excluded_notes(train: FeatureSet, val: FeatureSet) -> list[str]:
    """Report lines naming the images that could not be read and were left out (never replaced)."""
    notes = []
    for name, fs in (("train", train), ("val", val)):
        if fs.excluded:
            listing = "; ".join(f"`{f}` ({r})" for f, r in fs.excluded)
            notes.append(f"**{len(fs.excluded)} unreadable {name} image(s) excluded** (not replaced, not scored): "
                         f"{listing}.")
    return notes
