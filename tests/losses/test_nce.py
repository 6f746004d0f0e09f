import math

import torch

from gcmae.losses.nce import nce_loss, nt_xent_loss


def reference_nce(probs: list[list[float]], n: int) -> float:
    """Eq. 6 of Wu et al. 2018 written out with python floats (with the official code's 1e-7 in the denominators)."""
    total = 0.0
    for row in probs:
        k = len(row) - 1
        pn = k / n
        total += math.log(row[0] / (row[0] + pn + 1e-7))
        total += sum(math.log(pn / (p + pn + 1e-7)) for p in row[1:])
    return -total / len(probs)


def test_nce_matches_reference():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(5, 9, generator=g, dtype=torch.float64) * 1e-2
    got = nce_loss(probs, num_data=1000).item()
    assert math.isclose(got, reference_nce(probs.tolist(), 1000), rel_tol=1e-5)


def test_nce_is_lower_when_positive_stands_out():
    good = torch.tensor([[0.5] + [1e-4] * 8])
    bad = torch.tensor([[1e-4] + [0.5] * 8])
    assert nce_loss(good, 100) < nce_loss(bad, 100)


def reference_nt_xent(z1: list[list[float]], z2: list[list[float]], t: float) -> float:
    """SimCLR eq. 1 with python floats: each of the 2B vectors against the 2B - 1 others, its other view positive."""
    z = z1 + z2
    b = len(z1)
    total = 0.0
    for i, zi in enumerate(z):
        pos = (i + b) % (2 * b)
        scores = {j: sum(a * c for a, c in zip(zi, zj)) / t for j, zj in enumerate(z) if j != i}
        total += -scores[pos] + math.log(sum(math.exp(s) for s in scores.values()))
    return total / (2 * b)


def test_nt_xent_matches_reference():
    g = torch.Generator().manual_seed(1)
    z1 = torch.nn.functional.normalize(torch.randn(4, 6, generator=g, dtype=torch.float64), dim=1)
    z2 = torch.nn.functional.normalize(torch.randn(4, 6, generator=g, dtype=torch.float64), dim=1)
    got = nt_xent_loss(z1, z2, 0.2).item()
    assert math.isclose(got, reference_nt_xent(z1.tolist(), z2.tolist(), 0.2), rel_tol=1e-5)


def test_nt_xent_is_low_when_views_agree():
    z = torch.nn.functional.normalize(torch.randn(8, 16, generator=torch.Generator().manual_seed(2)), dim=1)
    shuffled = z[torch.randperm(8, generator=torch.Generator().manual_seed(3))]
    assert nt_xent_loss(z, z, 0.1) < nt_xent_loss(z, shuffled, 0.1)
