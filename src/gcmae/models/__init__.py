from gcmae.models.gcmae import GCMAE, GCMAEOutput
from gcmae.models.vit import ENCODER_PRESETS, create_encoder

__all__ = ["GCMAE", "GCMAEOutput", "ENCODER_PRESETS", "create_encoder"]
