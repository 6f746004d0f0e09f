import pytest
import torch

from gcmae.config import ConfigError, load_pretrain_config
from gcmae.data.batch_augment import BatchAugment
from gcmae.data.colour_jitter import ColourJitterDraws, apply_colour_jitter, draw_colour_jitter

GRAY_WEIGHTS = torch.tensor([0.2989, 0.587, 0.114]).view(3, 1, 1)  # ITU-R 601-2 luma, by hand


def one(factors, gray=False, order=(0, 1, 2, 3)):
    return ColourJitterDraws(torch.tensor([factors]), torch.tensor([order]), torch.tensor([gray]))


def test_each_operation_against_a_hand_computation():
    x = torch.rand(1, 3, 8, 8)
    assert torch.allclose(apply_colour_jitter(x, one([1.3, 1, 1, 0])), (x * 1.3).clamp(0, 1), atol=1e-6)
    luma = (x[0] * GRAY_WEIGHTS).sum(0, keepdim=True)
    assert torch.allclose(apply_colour_jitter(x, one([1, 1, 0.0, 0])), luma.expand(3, -1, -1)[None], atol=1e-5)
    m = luma.mean()
    assert torch.allclose(apply_colour_jitter(x, one([1, 0.6, 1, 0])), ((x - m) * 0.6 + m).clamp(0, 1), atol=1e-5)
    assert torch.allclose(apply_colour_jitter(x, one([1, 1, 1, 0], gray=True)), luma.expand(3, -1, -1)[None],
                          atol=1e-5)
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1
    green = apply_colour_jitter(red, one([1, 1, 1, 1 / 3]))  # a third of the hue circle: red -> green
    assert torch.allclose(green[0, :, 0, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-5)


def test_order_is_honoured():
    x = torch.rand(1, 3, 8, 8) * 0.5 + 0.5
    bright_first = apply_colour_jitter(x, one([1.5, 0.5, 1, 0], order=(0, 1, 2, 3)))
    contrast_first = apply_colour_jitter(x, one([1.5, 0.5, 1, 0], order=(1, 0, 2, 3)))
    assert not torch.allclose(bright_first, contrast_first, atol=1e-3)


def test_draws_ranges_probability_and_seeding():
    d = draw_colour_jitter(4000, 1.0, 0.8, 0.2, torch.Generator().manual_seed(0))
    changed = (d.factors != torch.tensor([1.0, 1.0, 1.0, 0.0])).any(1)
    assert 0.77 < changed.float().mean() < 0.83 and 0.18 < d.grayscale.float().mean() < 0.22
    assert d.factors[:, :3].min() >= 0.2 and d.factors[:, :3].max() <= 1.8 and d.factors[:, 3].abs().max() <= 0.2
    assert d.factors[:, :3].min() < 0.21 and d.factors[:, :3].max() > 1.79 and d.factors[:, 3].abs().max() > 0.199
    assert torch.equal(d.order.sort(1).values, torch.arange(4).expand(4000, 4))
    again = draw_colour_jitter(4000, 1.0, 0.8, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(d.factors, again.factors) and torch.equal(d.order, again.order)
    off = draw_colour_jitter(50, 0.0, 0.8, 0.0, torch.Generator().manual_seed(0))
    x = torch.rand(50, 3, 4, 4)
    assert torch.allclose(apply_colour_jitter(x, off), x)
    with pytest.raises(ValueError, match="strength"):
        draw_colour_jitter(1, 2.0, 0.8, 0.0, torch.Generator())
    with pytest.raises(ValueError, match="probabilities"):
        draw_colour_jitter(1, 0.5, 1.5, 0.0, torch.Generator())


def test_batch_augment_distorts_each_image_and_stays_seeded():
    x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8).expand(8, -1, -1, -1).contiguous()
    aug = BatchAugment(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False, colour_jitter=1.0, colour_jitter_p=1.0)
    a = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(1)))
    assert len({tuple(img.flatten()[:20].tolist()) for img in a}) == 8  # one image, eight different distortions
    gray = BatchAugment(16, hflip=False, grayscale=1.0)(x, torch.Generator().manual_seed(1))
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])


def test_config_checks_colour_jitter():
    cfg = load_pretrain_config(None, ["data.in_memory=true", "data.colour_jitter=0.5", "data.grayscale=0.2"])
    assert cfg.data.colour_jitter == 0.5 and cfg.data.colour_jitter_p == 0.8 and cfg.data.grayscale == 0.2
    with pytest.raises(ConfigError, match="set data.in_memory=true"):
        load_pretrain_config(None, ["data.colour_jitter=0.5"])
    with pytest.raises(ConfigError, match=r"data\.colour_jitter must be in \[0, 1.25\], got 2"):
        load_pretrain_config(None, ["data.in_memory=true", "data.colour_jitter=2"])
    with pytest.raises(ConfigError, match="probabilities"):
        load_pretrain_config(None, ["data.in_memory=true", "data.grayscale=1.5"])
