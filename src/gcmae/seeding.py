"""Deterministic random streams derived from (seed, step, stream) instead of global RNG state."""
from __future__ import annotations

import numpy as np
import torch


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from a tuple of non-negative integers."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def step_generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator for random stream `stream` (0 = masking noise, 1 = negatives, 2 = batch augmentation) of the step seeded `seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, stream))
