import math

import torch

from gcmae.losses.reconstruction import masked_reconstruction_loss, patchify, unpatchify


def test_patchify_layout_and_inverse():
    imgs = torch.arange(2 * 3 * 4 * 4, dtype=torch.float).view(2, 3, 4, 4)
    patches = patchify(imgs, 2)
    assert patches.shape == (2, 4, 12)
    # patch 1 is the top-right 2x2 block; inside a patch pixels are (row, col, channel)
    expected = [imgs[0, c, r, 2 + q].item() for r in range(2) for q in range(2) for c in range(3)]
    assert patches[0, 1].tolist() == expected
    assert torch.equal(unpatchify(patches, 2), imgs)


def test_loss_matches_hand_computation_without_normalisation():
    pred = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [3.0, 3.0]]])
    target = torch.tensor([[[0.0, 0.0], [5.0, 5.0], [1.0, 2.0]]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    # masked patches 0 and 2: mean sq err (1+4)/2 = 2.5 and (4+1)/2 = 2.5 -> 2.5; patch 1 ignored
    loss = masked_reconstruction_loss(pred, target, mask, norm_pix=False)
    assert math.isclose(loss.item(), 2.5, rel_tol=1e-6)


def test_loss_matches_hand_computation_with_per_patch_normalisation():
    target = torch.tensor([[[1.0, 3.0, 5.0], [2.0, 2.0, 8.0]]])
    pred = torch.zeros(1, 2, 3)
    mask = torch.tensor([[1.0, 1.0]])
    # patch 0: mean 3, unbiased var 4 -> normalised (-1, 0, 1): mse vs 0 = 2/3 (up to the 1e-6 eps)
    # patch 1: mean 4, unbiased var 12 -> (-2, -2, 4)/sqrt(12): mse = (4+4+16)/12/3 = 2/3
    loss = masked_reconstruction_loss(pred, target, mask, norm_pix=True)
    assert math.isclose(loss.item(), 2 / 3, rel_tol=1e-5)
