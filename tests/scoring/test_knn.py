import math

import pytest
import torch

from gcmae.scoring.knn import (knn_accuracy, knn_methods, knn_predict, knn_probabilities, vote_accuracy,
                              vote_probabilities)


def brute_force(train, train_y, query, num_classes, k, t, exclude_self=False):
    preds = []
    for qi, q in enumerate(query.tolist()):
        sims = []
        for ti, x in enumerate(train.tolist()):
            if exclude_self and ti == qi:
                continue
            dot = sum(a * b for a, b in zip(q, x))
            cos = dot / (math.sqrt(sum(a * a for a in q)) * math.sqrt(sum(b * b for b in x)))
            sims.append((cos, train_y[ti].item()))
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for cos, y in sims[:k]:
            votes[y] += math.exp(cos / t)
        preds.append(votes)
    return torch.tensor(preds)


def test_knn_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    train, query = torch.randn(40, 5, generator=g), torch.randn(7, 5, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    for k in (1, 5, 40):
        got = knn_predict(train, y, query, 3, k=k, temperature=0.07)
        assert torch.allclose(got, brute_force(train, y, query, 3, k, 0.07), rtol=1e-4)


def test_leave_one_out_never_votes_for_itself():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 4, generator=g)
    y = torch.randint(0, 2, (12,), generator=g)
    got = knn_predict(x, y, x, 2, k=3, temperature=0.1, exclude_self=True)
    assert torch.allclose(got, brute_force(x, y, x, 2, 3, 0.1, exclude_self=True), rtol=1e-4)


def test_separable_clusters_are_classified():
    a = torch.tensor([1.0, 0.0]) + 0.01 * torch.randn(10, 2)
    b = torch.tensor([0.0, 1.0]) + 0.01 * torch.randn(10, 2)
    feats, labels = torch.cat([a, b]), torch.tensor([0] * 10 + [1] * 10)
    assert knn_accuracy(feats, labels, feats, labels, 2, k=5, exclude_self=True) == 1.0


def test_knn_probabilities_by_hand():
    # query (1, 0); training points at 0°, 60° and 90° with labels 0, 1, 1; T = 1, k = 2:
    # votes class 0: e^cos0 = e, class 1: e^cos60 = e^0.5 (the 90° point is the third neighbour)
    train = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, 2.0]])
    probs = knn_probabilities(train, torch.tensor([0, 1, 1]), torch.tensor([[3.0, 0.0]]), 2, k=2, temperature=1.0)
    e, e_half = math.e, math.exp(0.5)
    assert torch.allclose(probs, torch.tensor([[e / (e + e_half), e_half / (e + e_half)]]))
    # k larger than the training set: all three vote (the 90° point with e^0 = 1)
    probs = knn_probabilities(train, torch.tensor([0, 1, 1]), torch.tensor([[3.0, 0.0]]), 2, k=50, temperature=1.0)
    assert torch.allclose(probs, torch.tensor([[e / (e + e_half + 1), (e_half + 1) / (e + e_half + 1)]]))


def test_knn_methods_by_hand():
    """The one kNN every evaluation calls: each k of `ks` then 1-NN, k capped, votes as computed by hand."""
    # query (1, 0); training points at 0°, 60° and 90° with labels 0, 1, 1; T = 1
    train, labels = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, 2.0]]), torch.tensor([0, 1, 1])
    e, e_half = math.e, math.exp(0.5)
    methods = knn_methods(train, labels, torch.tensor([[3.0, 0.0]]), 2, ks=(2, 50), temperature=1.0)
    assert list(methods) == ["knn_k2", "knn_k50", "nn1"]
    assert [k for k, _ in methods.values()] == [2, 3, 1]  # k = 50 capped at the 3 training points
    assert torch.allclose(methods["knn_k2"][1], torch.tensor([[e, e_half]]))
    assert torch.allclose(methods["knn_k50"][1], torch.tensor([[e, e_half + 1]]))
    assert torch.allclose(methods["nn1"][1], torch.tensor([[e, 0.0]]))
    expected = torch.tensor([[e / (e + e_half), e_half / (e + e_half)]])
    assert torch.allclose(vote_probabilities(methods["knn_k2"][1]), expected)
    assert vote_accuracy(methods["nn1"][1], torch.tensor([0])) == 1.0
    assert vote_accuracy(methods["nn1"][1], torch.tensor([1])) == 0.0
    # leave-one-out: the query set is the training set and nobody votes for itself; k = 1 in `ks` is the 1-NN
    loo = knn_methods(train, labels, train, 2, ks=(1, 5), temperature=1.0, exclude_self=True)
    assert list(loo) == ["nn1", "knn_k5"] and loo["knn_k5"][0] == 2
    # nearest other point: 0° -> 60° (class 1), 60° -> 90° (cos 30°, class 1), 90° -> 60° (class 1)
    assert vote_accuracy(loo["nn1"][1], labels) == pytest.approx(2 / 3)


def test_knn_methods_agree_with_knn_accuracy_and_probabilities():
    g = torch.Generator().manual_seed(3)
    train, query = torch.randn(30, 6, generator=g), torch.randn(9, 6, generator=g)
    y, qy = torch.randint(0, 3, (30,), generator=g), torch.randint(0, 3, (9,), generator=g)
    for name, (k, votes) in knn_methods(train, y, query, 3, (4, 200), 0.07).items():
        assert torch.equal(vote_probabilities(votes), knn_probabilities(train, y, query, 3, k, 0.07)), name
        assert vote_accuracy(votes, qy) == knn_accuracy(train, y, query, qy, 3, k, 0.07), name
