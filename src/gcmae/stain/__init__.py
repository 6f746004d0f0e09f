"""Stain normalisation for inference (Macenko, Reinhard via torchstain) and its measurements.

Pretraining's stain *augmentation* is ``data.stain_jitter`` (HED jitter on tensor batches,
``gcmae.data.batch_augment``); see ``docs/stain.md``.
"""
from gcmae.stain.normalizer import (CHOICES, DEFAULT_TARGET, METHODS, EncoderInputStain, StainBatch, StainError,
                                    StainNormalizer, make_normalizer, tissue_fraction)

__all__ = ["CHOICES", "DEFAULT_TARGET", "METHODS", "EncoderInputStain", "StainBatch", "StainError",
           "StainNormalizer", "make_normalizer", "tissue_fraction"]
