"""Reading gcmae pretraining checkpoints safely (no pickled code is ever executed)."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from gcmae.config import PretrainConfig, from_dict
from gcmae.models.gcmae import GCMAE


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or not a gcmae checkpoint."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load with weights_only=True; every failure names the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: truncated, corrupt or not a torch file ({err})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    return ckpt


def load_pretrain_checkpoint(path: str | Path) -> tuple[GCMAE, PretrainConfig]:
    """The GCMAE model (encoder, decoder, memory bank) and its config from a `gcmae pretrain` checkpoint."""
    ckpt = read_checkpoint(path)
    hparams = ckpt.get("hyper_parameters", {})
    if "config" not in hparams or "num_data" not in hparams or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a gcmae pretraining checkpoint (no config / state_dict)")
    cfg = from_dict(PretrainConfig, hparams["config"])
    model = GCMAE.from_config(cfg, hparams["num_data"])
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the model in its config; missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    model.eval()
    return model, cfg
