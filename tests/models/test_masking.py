import pytest
import torch

from gcmae.models.masking import random_masking


@pytest.mark.parametrize("ratio,length", [(0.5, 36), (0.75, 196), (0.0, 16), (0.3, 10)])
def test_counts_and_kept_tokens(ratio, length):
    b, d = 3, 4
    x = torch.arange(b * length * d, dtype=torch.float).view(b, length, d)
    noise = torch.rand(b, length, generator=torch.Generator().manual_seed(1))
    kept, mask, ids_restore = random_masking(x, ratio, noise)
    keep = int(length * (1 - ratio))
    assert kept.shape == (b, keep, d)
    assert torch.equal(mask.sum(1), torch.full((b,), float(length - keep)))
    for i in range(b):
        order = sorted(range(length), key=lambda j: noise[i, j].item())  # ascending noise = kept first
        assert torch.equal(kept[i], x[i, order[:keep]])
        expected_mask = torch.ones(length)
        expected_mask[order[:keep]] = 0
        assert torch.equal(mask[i], expected_mask)


def test_restore_order_puts_shuffled_sequence_back():
    b, length, d = 2, 9, 3
    x = torch.randn(b, length, d)
    noise = torch.rand(b, length)
    ids_shuffle = torch.argsort(noise, dim=1)
    _, _, ids_restore = random_masking(x, 0.5, noise)
    shuffled = torch.gather(x, 1, ids_shuffle.unsqueeze(-1).expand(-1, -1, d))
    restored = torch.gather(shuffled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
    assert torch.equal(restored, x)


def test_wrong_noise_shape_is_an_error():
    with pytest.raises(ValueError, match="noise must have shape"):
        random_masking(torch.zeros(2, 4, 3), 0.5, torch.zeros(2, 5))
