"""Weighted k-nearest-neighbour classification on cosine similarity (Wu et al. 2018)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def knn_predict(
    train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor, num_classes: int,
    k: int = 200, temperature: float = 0.07, exclude_self: bool = False, chunk: int = 1024,
) -> torch.Tensor:
    """Class scores (Q, C): each of the k most similar training items votes exp(cos / T) for its class.

    With `exclude_self` (leave-one-out, query set == training set) an item never votes for itself.
    k = 1 gives the plain nearest neighbour.
    """
    train = F.normalize(train_features.float(), dim=1)
    query = F.normalize(query_features.float(), dim=1)
    k = min(k, train.shape[0] - int(exclude_self))
    scores = []
    for start in range(0, query.shape[0], chunk):
        sim = query[start : start + chunk] @ train.T
        if exclude_self:
            rows = torch.arange(sim.shape[0])
            sim[rows, rows + start] = -float("inf")
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_probabilities(
    train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor, num_classes: int,
    k: int = 200, temperature: float = 0.07, exclude_self: bool = False,
) -> torch.Tensor:
    """Class probabilities (Q, C): each query's kNN votes divided by their sum (k capped at the training size;
    at the training size - 1 with `exclude_self`, leave-one-out)."""
    votes = knn_predict(train_features, train_labels, query_features, num_classes, k, temperature, exclude_self)
    return votes / votes.sum(dim=1, keepdim=True)


def knn_accuracy(
    train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
    query_labels: torch.Tensor, num_classes: int, k: int = 200, temperature: float = 0.07, exclude_self: bool = False,
) -> float:
    scores = knn_predict(train_features, train_labels, query_features, num_classes, k, temperature, exclude_self)
    return (scores.argmax(dim=1) == query_labels).float().mean().item()
