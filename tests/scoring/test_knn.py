import math

import torch

from gcmae.evaluate.knn import knn_accuracy, knn_predict, knn_probabilities


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
