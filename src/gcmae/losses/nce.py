"""The global-contrast losses.

NCE of NPID (Wu et al. 2018, eqs. 4-6), which GCMAE uses unchanged (Quan et al. 2024, Sec. 3.3, eqs. 5-7):
P(i|v) = exp(v_i . v / T) / Z over the memory bank, h(i, v) = P(i|v) / (P(i|v) + K P_n(i)) with uniform noise
P_n = 1/N, and the loss -E[log h(pos)] - K E[log(1 - h(neg))]. InfoNCE (van den Oord et al. 2018) is offered as a
variant (`loss.objective=infonce`); it needs no normaliser Z. NT-Xent (SimCLR, Chen et al. 2020, eq. 1) serves the
two-view variant (`loss.contrast=two_view`), where each image's other view is its positive.
"""
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


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent for two views (B, D) of the same B images, L2-normalised: each of the 2B embeddings is
    scored against the other 2B - 1, its positive being the other view of its image; mean of -log softmax."""
    z = torch.cat([z1, z2]).float()
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float("-inf"))
    b = z1.shape[0]
    partner = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return torch.nn.functional.cross_entropy(logits, partner)
