import math

import numpy as np
import torch
from skimage.color import hed2rgb, rgb2hed

from gcmae.data.batch_augment import BatchAugment, hed_to_rgb, random_resized_boxes, rgb_to_hed
from gcmae.losses.nce import info_nce_loss


def test_hed_matches_skimage():
    rgb = torch.rand(2, 3, 8, 8)
    ref = rgb2hed(rgb.permute(0, 2, 3, 1).numpy())
    assert np.abs(rgb_to_hed(rgb).permute(0, 2, 3, 1).numpy() - ref).max() < 1e-5
    assert np.abs(hed_to_rgb(rgb_to_hed(rgb)).permute(0, 2, 3, 1).numpy() - hed2rgb(ref)).max() < 1e-5


def test_boxes_inside_image_and_area_in_scale():
    boxes = random_resized_boxes(500, 96, 96, (0.2, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 96).all() and (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= 96).all()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 96**2
    assert area.min() > 0.18 and area.max() <= 1.0


def test_same_generator_same_batch_and_identity_crop_normalises():
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    aug = BatchAugment(16, rotate90=True, stain_jitter=0.05)
    a = aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(3)))
    plain = BatchAugment(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False)(x, torch.Generator().manual_seed(0))
    assert torch.allclose(plain, (x.float() / 255 - 0.5) / 0.5, atol=1e-5)


def test_info_nce_by_hand():
    sims = torch.tensor([[0.5, 0.1, -0.2]])
    logits = [s / 0.1 for s in (0.5, 0.1, -0.2)]
    expected = -logits[0] + math.log(sum(math.exp(v) for v in logits))
    assert abs(info_nce_loss(sims, 0.1).item() - expected) < 1e-5
