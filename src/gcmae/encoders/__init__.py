"""Frozen encoders: weights of any supported kind loaded as a timm ViT, batch embedding, the feature cache."""
