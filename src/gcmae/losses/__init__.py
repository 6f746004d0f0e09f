"""The pure loss equations: masked reconstruction (MAE) and the contrast terms (NPID NCE, InfoNCE). The stateful
memory bank they score against lives in `gcmae.models.memory_bank`."""
from gcmae.losses.nce import info_nce_loss, nce_loss
from gcmae.losses.reconstruction import masked_reconstruction_loss, patchify, unpatchify

__all__ = ["info_nce_loss", "nce_loss", "masked_reconstruction_loss", "patchify", "unpatchify"]
