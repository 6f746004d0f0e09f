import math

import torch

from gcmae.losses.nce import nce_loss


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
