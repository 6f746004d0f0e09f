"""NPID memory bank (Wu et al. 2018, Sec. 3.2) as used by GCMAE (Quan et al. 2024, Sec. 3.3): one L2-normalised
entry per training image, scored against the masked view's embedding and then moved towards it
(v_i <- normalise(m v_i + (1 - m) f_i), m = 0.5). The loss equations are in `gcmae.losses.nce`."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from gcmae.distributed import all_gather_cat, all_reduce_mean

_DENSE_SCORES_MAX = 2**26  # B x N scores above which per-sample negatives are gathered instead (256 MB fp32)


class MemoryBank(nn.Module):
    """Non-parametric softmax memory with NCE scores.

    scores(v, i) = exp(w_j . v / T) / Z for the positive j = i and K negatives drawn uniformly from all entries.
    Z is estimated once, from the first batch, as mean(exp(w . v / T)) * N (averaged over all ranks): the official
    semantics. With `z_estimate="running"` the same batch estimate is folded into Z at every step
    (Z <- m Z + (1 - m) estimate), so Z follows the real partition function as the embedding trains.
    After each step the positives are updated as normalise(m * w_i + (1 - m) * v_i) with the features of the
    *global* batch, so every DDP rank holds the same bank.
    """

    def __init__(
        self, size: int, dim: int, num_negatives: int = 8192, temperature: float = 0.07, momentum: float = 0.5,
        negatives: str = "per_sample", z_estimate: str = "first_batch", z_momentum: float = 0.99,
    ) -> None:
        super().__init__()
        if z_estimate not in ("first_batch", "running"):
            raise ValueError(f"z_estimate must be 'first_batch' or 'running', got {z_estimate!r}")
        if size < 2:
            raise ValueError(f"the memory bank needs at least 2 training images, got {size}")
        if negatives not in ("per_sample", "shared"):
            raise ValueError(f"negatives must be 'per_sample' or 'shared', got {negatives!r}")
        self.size, self.dim = size, dim
        self.num_negatives = min(num_negatives, size)
        self.temperature, self.momentum, self.negatives = temperature, momentum, negatives
        self.z_estimate, self.z_momentum = z_estimate, z_momentum
        stdv = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory", torch.rand(size, dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z", torch.tensor(-1.0))  # < 0: not estimated yet
        self._z_known = False
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._pending = None
        super()._load_from_state_dict(*args, **kwargs)
        self._z_known = False  # re-read z from the loaded buffer at the next step

    def sample_negatives(self, batch_size: int, generator: torch.Generator, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """Negative indices: (batch_size, K) for per-sample sampling, (K,) for shared.

        Drawn for the global batch (batch_size * world_size rows) so each rank's slice equals a 1-process run.
        """
        k = self.num_negatives
        if self.negatives == "shared":
            idx = torch.randint(0, self.size, (k,), generator=generator)
        else:
            idx = torch.randint(0, self.size, (batch_size * world_size, k), generator=generator)
            idx = idx[rank * batch_size : (rank + 1) * batch_size]
        return idx.to(self.memory.device)

    def similarities(self, features: torch.Tensor, indices: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Cosine similarities w . v to the positive entry (column 0) and the negatives: (B, 1 + K), float32.

        Features must be L2-normalised. The bank is read as it was before this step's update (see `update`).
        """
        self.flush()
        memory = self.memory.detach()
        v = features.float()
        # fp32 even under autocast: exp(s / 0.07) turns a bf16 rounding of s into a ~5% error in the score
        with torch.autocast(device_type=v.device.type, enabled=False):
            pos = (memory[indices] * v).sum(dim=1, keepdim=True)
            if negatives.dim() == 1:
                neg = v @ memory[negatives].T
            elif v.shape[0] * self.size <= _DENSE_SCORES_MAX:
                # against the whole bank, then pick: a matrix product instead of gathering and keeping a
                # (B, K, D) block for backward (3.2 GB at B=128, K=8192, D=768); ~10x faster on CPU at N=100k
                neg = (v @ memory.T).gather(1, negatives)
            else:
                neg = torch.bmm(memory[negatives], v.unsqueeze(2)).squeeze(2)
            return torch.cat([pos, neg], dim=1)

    def probabilities(self, similarities: torch.Tensor) -> torch.Tensor:
        """P(i | v) = exp(s / T) / Z for similarities s (B, 1 + K); estimates Z as configured."""
        with torch.autocast(device_type=similarities.device.type, enabled=False):
            out = torch.exp(similarities.float() / self.temperature)
        if self.z_estimate == "running":
            estimate = float(all_reduce_mean(out.detach().mean())) * self.size
            z = self.z.item()
            self.z.fill_(estimate if z < 0 else self.z_momentum * z + (1 - self.z_momentum) * estimate)
        elif not self._z_known:  # a Python flag, so the GPU is not synchronised at every step
            if self.z.item() < 0:
                self.z.fill_(float(all_reduce_mean(out.detach().mean())) * self.size)
            self._z_known = True
        return out / self.z

    def scores(self, features: torch.Tensor, indices: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """P(i | v) for the positive (column 0) and the negatives: (B, 1 + K). Features must be L2-normalised."""
        return self.probabilities(self.similarities(features, indices, negatives))

    @torch.no_grad()
    def update(self, features: torch.Tensor, indices: torch.Tensor) -> None:
        """Momentum update of the entries of the global batch (features gathered from all ranks).

        The new rows are computed now but written at the next `flush()` (called by the next `scores()`, by
        `state_dict()`, and by the trainer after each batch): the bank is still needed, unmodified, by this
        step's backward pass, as in the official code, which updates it inside backward.
        """
        v = all_gather_cat(features.detach().float())
        idx = all_gather_cat(indices)
        self.flush()
        mixed = self.memory[idx] * self.momentum + v * (1 - self.momentum)
        self._pending = (idx, mixed / mixed.norm(dim=1, keepdim=True))

    @torch.no_grad()
    def flush(self) -> None:
        """Write the pending update into the bank (after the backward pass of the step that made it)."""
        if self._pending is not None:
            idx, rows = self._pending
            self._pending = None
            self.memory.index_copy_(0, idx, rows)

    def _save_to_state_dict(self, *args, **kwargs) -> None:
        self.flush()
        super()._save_to_state_dict(*args, **kwargs)
