from gcmae.models.gcmae import GCMAE, GCMAEOutput
from gcmae.models.memory_bank import MemoryBank
from gcmae.models.vit import ENCODER_PRESETS, create_encoder

__all__ = ["GCMAE", "GCMAEOutput", "MemoryBank", "ENCODER_PRESETS", "create_encoder"]
