"""cls-token attention maps: the weights computed from qkv reproduce timm's own attention output."""
import copy

import pytest
import torch
from PIL import Image

from gcmae.models.vit import create_encoder
from gcmae.viz.attention import attention_weights, block_input, cls_attention_maps, plot_attention


@pytest.fixture(scope="module")
def encoder():
    """A seeded ViT-Tiny/8 at 32 px (17 tokens, 3 heads); tests that change it take a copy."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return create_encoder("vit_tiny", img_size=32, patch_size=8).eval()


def test_weights_reproduce_the_blocks_attention_output(encoder):
    enc = encoder
    imgs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = block_input(enc, imgs)
        weights = attention_weights(enc, x)
        blk = enc.blocks[-1]
        attn = blk.attn
        h = blk.norm1(x)
        v = attn.qkv(h).reshape(2, 17, 3, attn.num_heads, attn.head_dim)[:, :, 2].transpose(1, 2)
        ours = attn.proj((weights @ v).transpose(1, 2).reshape(2, 17, -1))
        assert torch.allclose(ours, attn(h), atol=1e-5)  # timm's fused / unfused forward
    assert weights.shape == (2, 3, 17, 17) and torch.allclose(weights.sum(-1), torch.ones(2, 3, 17))


def test_block_input_is_what_the_last_block_sees(encoder):
    enc = encoder
    imgs = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        x = enc.norm_pre(enc._pos_embed(enc.patch_embed(imgs)))
        for blk in enc.blocks[:-1]:
            x = blk(x)
        assert torch.allclose(block_input(enc, imgs), x, atol=1e-6)


def test_zero_queries_attend_uniformly(encoder):
    enc = copy.deepcopy(encoder)
    dim = enc.embed_dim
    with torch.no_grad():
        enc.blocks[-1].attn.qkv.weight[:dim] = 0  # q = bias only ...
        enc.blocks[-1].attn.qkv.bias[:dim] = 0  # ... = 0: softmax of zeros
    maps = cls_attention_maps(enc, torch.randn(2, 3, 32, 32))
    assert maps.shape == (2, 3, 4, 4) and torch.allclose(maps, torch.full_like(maps, 1 / 17))


def test_plot_attention_writes_a_png(encoder, tmp_path):
    out = plot_attention(encoder, torch.randn(3, 3, 32, 32), tmp_path / "a.png", (0.5,) * 3, (0.2,) * 3,
                         ["x", "y", "z"])
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[1] > img.size[0]  # 3 rows, 2 columns
