"""Noise-contrastive estimation loss of NPID (Wu et al. 2018, eq. 6)."""
from __future__ import annotations

import torch

_EPS = 1e-7


def nce_loss(probs: torch.Tensor, num_data: int) -> torch.Tensor:
    """NCE loss for scores P(i|v) (B, 1 + K): column 0 the positive, the rest K noise samples.

    The noise distribution is uniform over the `num_data` bank entries. Returns the mean over the batch of
    -[log h(pos) + sum_k log(1 - h(neg_k))] with h(p) = p / (p + K / num_data).
    """
    k = probs.shape[1] - 1
    noise = k / float(num_data)
    log_pos = torch.log(probs[:, 0] / (probs[:, 0] + noise + _EPS))
    log_neg = torch.log(noise / (probs[:, 1:] + noise + _EPS))
    return -(log_pos.sum() + log_neg.sum()) / probs.shape[0]


def info_nce_loss(similarities: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE (a softmax over the positive and its K negatives, van den Oord et al. 2018) for cosine
    similarities (B, 1 + K), column 0 the positive: mean of -log softmax(s / T)[0]. Needs no normaliser Z."""
    logits = similarities.float() / temperature
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()
