"""Shared fixtures: the real sample data shipped in data/samples, small labelled copies of it, small checkpoints."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from gcmae.models.vit import create_encoder
from tests.train.helpers import tiny_config

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
CLASSES = ("0_negative", "1_metastatic")


@pytest.fixture(scope="session")
def samples() -> Path:
    assert SAMPLES.is_dir(), f"sample data missing: {SAMPLES}"
    return SAMPLES


@pytest.fixture()
def small_pcam(tmp_path: Path, samples: Path) -> Path:
    """A 32-image labelled copy of real PCam train patches (16 per class)."""
    root = tmp_path / "pcam_small"
    for cls in ("0_negative", "1_metastatic"):
        (root / cls).mkdir(parents=True)
        for f in sorted((samples / "pcam" / "train" / cls).glob("*.jpg"))[:16]:
            shutil.copy(f, root / cls / f.name)
    return root


def copy_subset(src: Path, dst: Path, per_class: int, classes=CLASSES) -> Path:
    """The first `per_class` real patches of each class of `src` copied to `dst`."""
    return pcam_subset(dst, src, dict.fromkeys(classes, per_class))


def pcam_subset(dst: Path, split: str | Path, per_class: dict[str, int]) -> Path:
    """A labelled copy of the first real patches of a PCam split (`train`, `valid`, or a folder): {class: count}."""
    src = Path(split) if Path(split).is_absolute() else SAMPLES / "pcam" / str(split)
    for cls, n in per_class.items():
        (dst / cls).mkdir(parents=True, exist_ok=True)
        for f in sorted((src / cls).glob("*.jpg"))[:n]:
            shutil.copy(f, dst / cls / f.name)
    return dst


@pytest.fixture()
def one_thread():
    """One torch thread for tiny models: on the shared 2-core machine thread-pool spinning makes a ViT-Tiny batch up
    to 20x slower with 2 threads; results are the same."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def pcam_pair(tmp_path_factory, samples: Path) -> tuple[Path, Path]:
    """(train, val): 12 + 12 real PCam train patches, 8 + 8 real PCam valid patches (other slides)."""
    root = tmp_path_factory.mktemp("pcam_pair")
    return (copy_subset(samples / "pcam" / "train", root / "train", 12),
            copy_subset(samples / "pcam" / "valid", root / "val", 8))


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, pcam_pair) -> Path:
    """A real `gcmae pretrain` checkpoint: tiny config (ViT-Tiny/8 at 32 px), 1 epoch on 24 PCam patches."""
    from gcmae.train.pretrain import run_pretrain

    out = tmp_path_factory.mktemp("pretrain")
    cfg = tiny_config(pcam_pair[0], out, "optim.epochs=1", "optim.warmup_epochs=0")
    cfg.trainer.progress_bar = False
    run_pretrain(cfg)
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def timm_state() -> dict[str, torch.Tensor]:
    """A seeded plain timm ViT-Tiny/8 at 32 px state dict (what `load_weights` calls kind 'timm')."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return create_encoder("vit_tiny", 32, 8).state_dict()


def save_state(path: Path, state: dict[str, torch.Tensor], variant: int = 0) -> Path:
    """Write `state`; `variant` > 0 writes other weights of the same architecture (file of the same size)."""
    if variant:
        g = torch.Generator().manual_seed(variant)
        state = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.ndim > 1 else v for k, v in state.items()}
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def timm_checkpoint(tmp_path_factory, timm_state) -> Path:
    return save_state(tmp_path_factory.mktemp("timm") / "vit_tiny_p8_32.pth", timm_state)


@pytest.fixture(scope="session")
def timm_encoder(timm_checkpoint):
    """The encoder of `timm_checkpoint`, loaded once (tests must not change its weights)."""
    from gcmae.encoders.loading import load_encoder

    return load_encoder(timm_checkpoint)
