"""Export an encoder as a timm-loadable folder (model.safetensors, config.json, README.md model card); load it back.

Any input `gcmae.io.convert.load_weights` reads can be exported: our checkpoints, official GCMAE / MAE checkpoints,
timm state dicts.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import timm
import torch.nn as nn
import yaml
from safetensors.torch import load_file, save_file

from gcmae.io.atomic import atomic_path, write_text_atomic
from gcmae.io.convert import (IMAGENET_MEAN, IMAGENET_STD, ConversionError, ImportedWeights, load_weights,
                              pretrain_normalizer_record,
                              pretrain_stain)
from gcmae.models.vit import ENCODER_PRESETS, create_encoder, timm_name
from gcmae.pretrained import available as available_pretrained
from gcmae.pretrained import resolve as resolve_pretrained

log = logging.getLogger(__name__)

CARD_TAGS = ("pathology", "self-supervised", "gcmae", "image-feature-extraction")
_LICENSES = {"gcmae": "apache-2.0", "mae_official": "cc-by-nc-4.0"}  # others: "other" (check the source's terms)
_ORIGIN = {
    "gcmae": "pretrained with gcmae (GCMAE: masked autoencoding plus global contrast against an NPID memory bank; "
             "Quan et al., *Pattern Recognition* 2024)",
    "gcmae_official": "converted from an official GCMAE pretraining checkpoint "
                      "(Quan et al., *Pattern Recognition* 2024)",
    "mae_official": "converted from an official MAE pretraining checkpoint (He et al., CVPR 2022)",
    "timm": "converted from a timm VisionTransformer state dict",
}
_NOT_FOLDERS = {".ckpt", ".pth", ".pt", ".bin", ".safetensors"}
_NOT_RECORDED = "not recorded"


def export_encoder(checkpoint: str | Path, out_dir: str | Path, license: str | None = None, fp16: bool = False) -> Path:
    """Write `model.safetensors`, a timm `config.json` and a `README.md` model card for the input's encoder.

    The folder loads with `timm.create_model("local-dir:OUT_DIR", pretrained=True)` (and the same layout on the
    Hugging Face hub), or `gcmae.from_pretrained(OUT_DIR)`. `license` defaults by source (apache-2.0 for our runs).
    `fp16` stores the floating-point weights in half precision (half the file; loaders cast back to fp32).
    """
    weights = load_weights(checkpoint)
    out_dir = Path(out_dir)
    if out_dir.suffix in _NOT_FOLDERS:
        raise ValueError(f"{out_dir}: the export is a folder (model.safetensors, config.json, README.md), "
                         f"not a {out_dir.suffix} file")
    encoder = create_encoder(weights.encoder, weights.img_size, weights.patch_size)
    try:
        encoder.load_state_dict(weights.encoder_state)
    except RuntimeError as err:
        raise ConversionError(f"{weights.source}: the encoder weights do not fit a {weights.encoder} ViT: "
                              f"{err}") from None
    mean, std, assumed = _normalisation(weights)
    name = timm_name(weights.encoder, weights.patch_size, 224)
    config = {
        "architecture": name if timm.is_model(name) else "vit_base_patch16_224",
        "num_classes": 0,
        "num_features": weights.embed_dim,
        "model_args": dict(img_size=weights.img_size, patch_size=weights.patch_size,
                           **ENCODER_PRESETS[weights.encoder]),
        "pretrained_cfg": {
            "input_size": [3, weights.img_size, weights.img_size],
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "mean": mean,
            "std": std,
            "num_classes": 0,
            "tag": "gcmae",
        },
    }
    stain = pretrain_stain(weights)
    if stain is not None:  # not timm's: timm ignores other top-level keys; gcmae's loader reads it back
        config["gcmae"] = {"stain_norm": stain[0], "stain_target": stain[1], **_fitted_stain(weights, stain)}
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if fp16 and v.is_floating_point() else v).contiguous()
             for k, v in encoder.state_dict().items()}
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "source": "gcmae", "imported_from": weights.kind})
    write_text_atomic(out_dir / "config.json", json.dumps(config, indent=2))
    card = model_card(weights, mean, std, license or _LICENSES.get(weights.kind, "other"), find_metrics(weights.source),
                      assumed, stain_stored="stain" in config.get("gcmae", {}))
    write_text_atomic(out_dir / "README.md", card)
    return out_dir


def _fitted_stain(weights: ImportedWeights, stain: tuple[str, str]) -> dict[str, Any]:
    """{"stain": the fitted normaliser} so the export needs no target image (`--stain-norm pretrained`); {} with a
    warning when the recorded target cannot be read here."""
    from gcmae.stain import StainError
    from gcmae.stain.normalizer import pretraining_normalizer

    record = pretrain_normalizer_record(weights)  # stored by the checkpoint, or by an export exported again
    if record is not None:
        return {"stain": record}
    try:
        return {"stain": pretraining_normalizer(stain[0], stain[1], None).to_dict()}
    except StainError as err:
        log.warning("%s: the %s normaliser of its pretraining is not stored in the export (%s); users will need its "
                    "target image", weights.source, stain[0], err)
        return {}


def from_pretrained(path: str | Path) -> nn.Module:
    """A timm encoder (no head) from an exported folder or a shipped encoder's name (`gcmae.pretrained.available()`);
    `model.pretrained_cfg` holds mean/std and input size. Weights stored in fp16 are loaded as fp32."""
    path = resolve_pretrained(path)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        shipped = ", ".join(available_pretrained()) or "none"
        raise FileNotFoundError(f"{path} is not an exported gcmae encoder (needs config.json and model.safetensors) "
                                f"nor the name of a shipped one ({shipped})")
    model = timm.create_model(f"local-dir:{path}", pretrained=False)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    return model.eval()


def _normalisation(weights: ImportedWeights) -> tuple[list[float], list[float], bool]:
    """(mean, std, assumed): the run's constants, else ImageNet's (flagged as assumed)."""
    data = weights.config.get("data", {})
    if "mean" in data and "std" in data:
        return [float(v) for v in data["mean"]], [float(v) for v in data["std"]], False
    return list(IMAGENET_MEAN), list(IMAGENET_STD), True


def find_metrics(source: Path) -> Path | None:
    """metrics.json of the checkpoint's run: in the run folder or next to it (`gcmae demo` layout)."""
    if source.is_dir():
        return None
    run = source.parent.parent if source.parent.name == "checkpoints" else None
    folders = [run, run.parent] if run is not None else [source.parent]
    return next((f / "metrics.json" for f in folders if (f / "metrics.json").is_file()), None)


def _get(weights: ImportedWeights, section: str, key: str) -> Any:
    value = weights.config.get(section, {}).get(key)
    return _NOT_RECORDED if value in (None, "") else value


def _metrics_section(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    knn = metrics.get("knn") if isinstance(metrics, dict) else None
    head = f"\n## Metrics\n\nFrom `{path.name}` of the training run"
    if isinstance(knn, list) and all(isinstance(r, dict) for r in knn):
        head += " (frozen features: weighted kNN and 1-NN accuracy).\n\n"
        rows = ["| model | task | pool | k | kNN accuracy | 1-NN accuracy |", "|---|---|---|---|---|---|"]
        for r in knn:
            cells = [r.get(k, "") for k in ("model", "task", "pool", "k", "accuracy", "accuracy_1nn")]
            rows.append("| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |")
        return head + "\n".join(rows) + "\n"
    return head + ".\n\n```json\n" + json.dumps(metrics, indent=2)[:4000] + "\n```\n"


def _objective(weights: ImportedWeights) -> str:
    """The bank term's loss: the paper's NCE, or the InfoNCE variant (named as such, never as the paper's)."""
    names = {"nce": "nce (official: NPID's NCE)", "infonce": "infonce (a variant: softmax over 1 + K)"}
    if weights.kind == "mae_official":
        return "none (MAE)"
    if weights.kind == "gcmae_official":
        return names["nce"]
    objective = weights.config.get("loss", {}).get("objective")
    return _NOT_RECORDED if objective is None else names.get(objective, str(objective))


def _augmentation(weights: ImportedWeights) -> str:
    data = weights.config.get("data", {})
    if "crop_scale" not in data:
        return _NOT_RECORDED
    low, high = data["crop_scale"]
    flips = {(True, True): "all 8 flips and 90-degree rotations", (True, False): "horizontal flips",
             (False, True): "vertical flips and 90-degree rotations", (False, False): None}
    parts = [f"random resized crop {low}-{high}", flips[(bool(data.get("hflip", True)), bool(data.get("rotate90")))]]
    for key, name in (("stain_jitter", "HED stain jitter"), ("colour_jitter", "colour jitter"),
                      ("grayscale", "greyscale p")):
        if data.get(key):
            parts.append(f"{name} {data[key]}")
    return ", ".join(p for p in parts if p)


def model_card(weights: ImportedWeights, mean: list[float], std: list[float], license: str,
               metrics: Path | None = None, assumed_normalisation: bool = False, stain_stored: bool = True) -> str:
    """A Hugging Face style README.md: YAML front matter, then description, data, recipe, normalisation, usage.
    `stain_stored`: whether config.json holds the fitted stain normaliser of its pretraining (if it had one)."""
    w = weights
    front = yaml.safe_dump({"library_name": "timm", "license": license, "tags": list(CARD_TAGS),
                            "pipeline_tag": "image-feature-extraction"}, sort_keys=False)
    title = f"ViT-{w.encoder.removeprefix('vit_').title()}/{w.patch_size}"
    contrast = "0 (MAE, no contrast)" if w.kind == "mae_official" else _get(w, "loss", "contrast_weight")
    recipe = [
        ("encoder", f"{w.encoder} ({w.embed_dim} wide, {w.depth} blocks, {w.num_heads} heads)"),
        ("image size / patch size", f"{w.img_size} px / {w.patch_size} px"),
        ("mask ratio", _get(w, "model", "mask_ratio")),
        ("contrast weight (total = MAE + w x contrast)", contrast),
        ("contrast objective", _objective(w)),
        ("negatives K", _get(w, "loss", "num_negatives")),
        ("temperature T", _get(w, "loss", "temperature")),
        ("epochs", _get(w, "optim", "epochs")),
        ("batch size (per device)", _get(w, "data", "batch_size")),
        ("base lr (lr = base lr x effective batch / 256)", _get(w, "optim", "base_lr")),
        ("augmentation", _augmentation(w)),
        ("seed", _get(w, "trainer", "seed")),
    ]
    recipe_rows = "\n".join(f"| {k} | {v} |" for k, v in recipe)
    images = w.num_data if w.num_data else _NOT_RECORDED
    norm_note = (" These are ImageNet's constants, **assumed**: the source file does not record its own."
                 if assumed_normalisation else "")
    stain = pretrain_stain(w)
    if stain is not None:
        target = stain[1] or "gcmae's shipped default target"
        how = ("`gcmae extract ... --stain-norm pretrained` applies the normaliser stored in `config.json`"
               if stain_stored else
               f"`gcmae extract ... --stain-norm {stain[0]} --stain-target <a copy of {target}>`: the fitted "
               "normaliser is not stored with this export, so that image is needed")
        norm_note += (f"\n\nEvery training image was first **{stain[0]}-stain-normalised** (to "
                      f"{target}): give it images normalised the same way ({how}); gcmae warns when it is given "
                      "raw images.")
    return f"""---
{front}---

# GCMAE encoder: {title} at {w.img_size} px

## Model description

A {w.encoder} image encoder ({w.embed_dim} wide, {w.depth} blocks, {w.num_heads} heads, patch {w.patch_size}),
{_ORIGIN.get(w.kind, w.kind)}. Source: `{w.source.name}` (format `{w.kind}`).
The encoder is a plain timm `VisionTransformer` without a classification head: its output is the class token
after the final norm ({w.embed_dim} features), meant for frozen-feature use (kNN, linear probes, MIL) or
fine-tuning on H&E pathology images.

## Training data

- image folder: {_get(w, "data", "train_dir")}
- number of training images: {images}

## Training recipe

| setting | value |
|---|---|
{recipe_rows}

## Normalisation

Inputs are RGB images scaled to [0, 1], resized to {w.img_size} x {w.img_size}, then normalised with
mean = {[round(v, 4) for v in mean]}, std = {[round(v, 4) for v in std]} (also in `config.json`).{norm_note}

## How to load

With timm (offline, from this folder; on the Hugging Face hub use `hf-hub:USER/REPO`):

```python
import timm
model = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config({{}}, model=model))
features = model(transform(image).unsqueeze(0))  # (1, {w.embed_dim})
```

With gcmae:

```python
import gcmae
encoder = gcmae.from_pretrained("PATH/TO/THIS/FOLDER")  # the same timm model; safetensors only
```
{_metrics_section(metrics)}"""
