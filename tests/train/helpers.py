"""A tiny but real pretraining config for tests (real PCam patches, ViT-Tiny at 32 px)."""
from __future__ import annotations

from pathlib import Path

import torch

from gcmae.config import PretrainConfig, load_pretrain_config


def tiny_config(train_dir: Path, out_dir: Path, *extra: str) -> PretrainConfig:
    return load_pretrain_config(None, [
        "model.encoder=vit_tiny", "model.img_size=32", "model.patch_size=8", "model.decoder_dim=32",
        "model.decoder_depth=1", "model.decoder_heads=2", "loss.num_negatives=16", f"data.train_dir={train_dir}",
        "data.batch_size=8", "data.num_workers=0", "optim.epochs=3", "optim.warmup_epochs=1",
        f"trainer.out_dir={out_dir}", "trainer.accelerator=cpu", "trainer.progress_bar=false",
        "trainer.log_every_n_steps=1", *extra,
    ])


def checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_states_close(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if atol == 0.0:
            assert torch.equal(a[key], b[key]), f"{key} differs"
        else:
            assert torch.allclose(a[key], b[key], atol=atol, rtol=0), f"{key} differs by {(a[key] - b[key]).abs().max()}"
