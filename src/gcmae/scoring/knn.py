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
    return vote_probabilities(votes)


def knn_accuracy(
    train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
    query_labels: torch.Tensor, num_classes: int, k: int = 200, temperature: float = 0.07, exclude_self: bool = False,
) -> float:
    """Accuracy of weighted kNN (k capped as in `knn_predict`)."""
    scores = knn_predict(train_features, train_labels, query_features, num_classes, k, temperature, exclude_self)
    return vote_accuracy(scores, query_labels)


def knn_methods(
    train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor, num_classes: int,
    ks: tuple[int, ...], temperature: float = 0.07, exclude_self: bool = False,
) -> dict[str, tuple[int, torch.Tensor]]:
    """Weighted kNN for each k of `ks`, then 1-NN: {"knn_k20": (k used, votes (Q, C)), ..., "nn1": (1, votes)}.

    The one place every kNN evaluation (the `knn` command, the protocols, the training monitor) gets its votes.
    k is capped at the training size (minus one with `exclude_self`, leave-one-out); a k of 1 in `ks` is the 1-NN.
    """
    out = {}
    for k in dict.fromkeys((*ks, 1)):
        k_used = min(k, train_features.shape[0] - int(exclude_self))
        votes = knn_predict(train_features, train_labels, query_features, num_classes, k_used, temperature,
                            exclude_self)
        out["nn1" if k == 1 else f"knn_k{k}"] = (k_used, votes)
    return out


def vote_probabilities(votes: torch.Tensor) -> torch.Tensor:
    """Class probabilities (Q, C): each query's votes divided by their sum."""
    return votes / votes.sum(dim=1, keepdim=True)


def vote_accuracy(votes: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of queries whose most-voted class is their label."""
    return (votes.argmax(dim=1) == labels).float().mean().item()
