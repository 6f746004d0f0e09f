from gcmae.losses.memory_bank import MemoryBank
from gcmae.losses.nce import info_nce_loss, nce_loss
from gcmae.losses.reconstruction import masked_reconstruction_loss, patchify, unpatchify

__all__ = ["MemoryBank", "info_nce_loss", "nce_loss", "masked_reconstruction_loss", "patchify", "unpatchify"]
