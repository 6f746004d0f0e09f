"""What the evaluation commands share: device choice, the encoder of the options, labelled train/val features."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gcmae.data.datasets import ImageFolderDataset
from gcmae.data.validation import find_images
from gcmae.evaluate.features import Encoder, FeatureSet, folder_features, load_encoder, open_folder
from gcmae.evaluate.options import BaseOptions, KNNOptions, LinprobeOptions


def resolve_device(name: str) -> torch.device:
    """The torch device for `name`: 'auto' is cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r} ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    return device


def encoder_from_options(opts: BaseOptions) -> Encoder:
    """The encoder of the options, with its stain normaliser when the options ask for one."""
    from gcmae.stain import make_normalizer

    stain = make_normalizer(getattr(opts, "stain_norm", None), getattr(opts, "stain_target", None) or None)
    encoder = load_encoder(opts.checkpoint, opts.encoder, opts.img_size, opts.patch_size, opts.seed)
    encoder.stain = stain
    return encoder


def check_same_classes(train_classes: list[str], train_root: Path, val_classes: list[str], val_root: Path) -> None:
    """ValueError when the two folders do not have the same class sub-folders."""
    if train_classes == val_classes:
        return
    only_train = sorted(set(train_classes) - set(val_classes))
    only_val = sorted(set(val_classes) - set(train_classes))
    raise ValueError(
        f"class sets differ: {train_root} has {len(train_classes)} classes {train_classes}, {val_root} has "
        f"{len(val_classes)} classes {val_classes} (only in train: {only_train or 'none'}; only in val: "
        f"{only_val or 'none'})")


def open_labelled_pair(train: str | Path, val: str | Path) -> tuple[ImageFolderDataset, ImageFolderDataset]:
    """Both folders opened and validated (no transform yet), labelled, with the same classes: checked before
    any model is loaded, so bad folders fail fast."""
    train_ds, val_ds = open_folder(train), open_folder(val)
    check_same_classes(train_ds.classes, train_ds.root, val_ds.classes, val_ds.root)
    return train_ds, val_ds


def same_images(a: str | Path, b: str | Path) -> bool:
    """Whether two folders hold the same images: the same folder (resolved), or the same relative file names
    with the same content (a copy)."""
    if not a or not b:
        return False
    a, b = Path(a), Path(b)
    if not (a.is_dir() and b.is_dir()):
        return False
    if a.resolve() == b.resolve():
        return True
    if sorted(d.name for d in a.iterdir() if d.is_dir()) != sorted(d.name for d in b.iterdir() if d.is_dir()):
        return False  # other class folders (an extra, empty one is an error reported when the folder is opened)
    files_a, files_b = find_images(a), find_images(b)
    names_a = [(str(f.relative_to(a)), f.stat().st_size) for f in files_a]
    if not names_a or names_a != [(str(f.relative_to(b)), f.stat().st_size) for f in files_b]:
        return False
    return all(fa.read_bytes() == fb.read_bytes() for fa, fb in zip(files_a, files_b))


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

    enc = encoder.model.encoder
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
