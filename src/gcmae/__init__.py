"""gcmae: Global Contrast-Masked Autoencoders for H&E pathology."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["create_model", "load_checkpoint", "load_weights", "from_pretrained", "__version__"]


def create_model(num_data: int, **kwargs):
    """A GCMAE model (timm ViT encoder + MAE decoder + memory bank of `num_data` entries)."""
    from gcmae.models.gcmae import GCMAE

    return GCMAE(num_data=num_data, **kwargs)


def load_checkpoint(path):
    """(GCMAE model, PretrainConfig) from a `gcmae pretrain` checkpoint, loaded with weights_only=True."""
    from gcmae.io.checkpoints import load_pretrain_checkpoint

    return load_pretrain_checkpoint(path)


def from_pretrained(name_or_path):
    """The timm encoder (eval mode, fp32) of a shipped encoder's name, e.g. "gcmae-vit-tiny-pcam" (see
    `gcmae.pretrained.available()`), or of a folder written by `gcmae export`. Works offline."""
    from gcmae.io.export import from_pretrained as _from_pretrained

    return _from_pretrained(name_or_path)


def load_weights(path):
    """Weights of an official GCMAE/MAE checkpoint, a timm state dict or a gcmae checkpoint, in our naming
    (see `gcmae.io.convert.build_gcmae_from_weights` to rebuild a model from them)."""
    from gcmae.io.convert import load_weights as _load_weights

    return _load_weights(path)
