"""Export the encoder as a timm-loadable folder (model.safetensors + config.json) and load it back."""
from __future__ import annotations

import json
from pathlib import Path

import timm
import torch.nn as nn
from safetensors.torch import load_file, save_file

from gcmae.io.atomic import atomic_path, write_text_atomic
from gcmae.io.checkpoints import load_pretrain_checkpoint
from gcmae.models.vit import ENCODER_PRESETS, timm_name


def export_encoder(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write `model.safetensors` and a timm `config.json` for the checkpoint's encoder.

    The folder loads with `timm.create_model("local-dir:OUT_DIR", pretrained=True)` (and the same layout on the
    Hugging Face hub), or `gcmae.from_pretrained(OUT_DIR)`.
    """
    model, cfg = load_pretrain_checkpoint(checkpoint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    m = cfg.model
    name = timm_name(m.encoder, m.patch_size, 224)
    architecture = name if timm.is_model(name) else "vit_base_patch16_224"
    model_args = dict(img_size=m.img_size, patch_size=m.patch_size, **ENCODER_PRESETS[m.encoder])
    config = {
        "architecture": architecture,
        "num_classes": 0,
        "num_features": model.encoder.embed_dim,
        "model_args": model_args,
        "pretrained_cfg": {
            "input_size": [3, m.img_size, m.img_size],
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "mean": list(cfg.data.mean),
            "std": list(cfg.data.std),
            "num_classes": 0,
            "tag": "gcmae",
        },
    }
    state = {k: v.contiguous() for k, v in model.encoder.state_dict().items()}
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "source": "gcmae"})
    write_text_atomic(out_dir / "config.json", json.dumps(config, indent=2))
    return out_dir


def from_pretrained(path: str | Path) -> nn.Module:
    """A timm encoder (no head) from an exported folder; `model.pretrained_cfg` holds mean/std and input size."""
    path = Path(path)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path} is not an exported gcmae encoder (needs config.json and model.safetensors)")
    model = timm.create_model(f"local-dir:{path}", pretrained=False)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    return model.eval()
