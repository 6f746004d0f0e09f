from gcmae.losses.memory_bank import MemoryBank
from gcmae.losses.nce import nce_loss
from gcmae.losses.reconstruction import masked_reconstruction_loss, patchify, unpatchify

__all__ = ["MemoryBank", "nce_loss", "masked_reconstruction_loss", "patchify", "unpatchify"]
