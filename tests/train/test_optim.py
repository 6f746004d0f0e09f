"""Optimiser set-up: MAE's layer-wise lr decay groups against a hand-computed table, and the warm-up + cosine
schedule against hand-computed values."""
import math

import pytest
import torch

from gcmae.evaluate.finetune_module import build_classifier
from gcmae.train.optim import (build_adamw_layer_decay, param_groups_layer_decay, scaled_lr, warmup_cosine,
                               warmup_cosine_config)

TWO_BLOCKS = dict(embed_dim=192, depth=2, num_heads=3, patch_size=8, img_size=32, mlp_ratio=4.0)  # ViT-Tiny, 2 blocks
WD = 0.05
# layer_decay 0.75, 2 blocks: scale = 0.75 ** (3 - layer_id); layer 0 = embeddings, 1-2 = blocks, 3 = norm/head
S0, S1, S2, S3 = 0.421875, 0.5625, 0.75, 1.0


def block_table(i: int, scale: float) -> dict[str, tuple[float, float]]:
    return {f"blocks.{i}.{name}": (scale, wd) for name, wd in [
        ("norm1.weight", 0.0), ("norm1.bias", 0.0), ("attn.qkv.weight", WD), ("attn.qkv.bias", 0.0),
        ("attn.proj.weight", WD), ("attn.proj.bias", 0.0), ("norm2.weight", 0.0), ("norm2.bias", 0.0),
        ("mlp.fc1.weight", WD), ("mlp.fc1.bias", 0.0), ("mlp.fc2.weight", WD), ("mlp.fc2.bias", 0.0)]}


EXPECTED = {
    "cls_token": (S0, 0.0), "pos_embed": (S0, 0.0), "patch_embed.proj.weight": (S0, WD),
    "patch_embed.proj.bias": (S0, 0.0), **block_table(0, S1), **block_table(1, S2),
    "norm.weight": (S3, 0.0), "norm.bias": (S3, 0.0), "head.weight": (S3, WD), "head.bias": (S3, 0.0),
}


def group_table(model: torch.nn.Module, groups: list[dict]) -> dict[str, tuple[float, float]]:
    names = {id(p): n for n, p in model.named_parameters()}
    table = {}
    for g in groups:
        for p in g["params"]:
            assert names[id(p)] not in table, f"{names[id(p)]} is in two groups"
            table[names[id(p)]] = (g["lr_scale"], g["weight_decay"])
    return table


def test_layer_decay_groups_match_maes_table():
    model = build_classifier(TWO_BLOCKS, num_classes=2, pool="cls", drop_path=0.1)
    table = group_table(model, param_groups_layer_decay(model, WD, 0.75))
    assert table.keys() == EXPECTED.keys()
    for name, (scale, wd) in EXPECTED.items():
        assert table[name][0] == pytest.approx(scale), name
        assert table[name][1] == wd, name


def test_global_pool_norm_is_at_the_heads_layer():
    model = build_classifier(TWO_BLOCKS, num_classes=3, pool="mean", drop_path=0.0)
    table = group_table(model, param_groups_layer_decay(model, WD, 0.75))
    assert "norm.weight" not in table  # MAE's global pool: the final norm moves to fc_norm
    assert table["fc_norm.weight"] == (S3, 0.0) and table["fc_norm.bias"] == (S3, 0.0)


def test_frozen_parameters_are_left_out():
    model = build_classifier(TWO_BLOCKS, num_classes=2, pool="cls", drop_path=0.0)
    model.pos_embed.requires_grad_(False)
    assert "pos_embed" not in group_table(model, param_groups_layer_decay(model, WD, 0.75))


def test_adamw_group_lrs_are_scaled():
    model = build_classifier(TWO_BLOCKS, num_classes=2, pool="cls", drop_path=0.0)
    opt = build_adamw_layer_decay(model, lr=2e-3, weight_decay=WD, layer_decay=0.75)
    names = {id(p): n for n, p in model.named_parameters()}
    for g in opt.param_groups:
        for p in g["params"]:
            assert g["lr"] == pytest.approx(2e-3 * EXPECTED[names[id(p)]][0])
            assert g["weight_decay"] == EXPECTED[names[id(p)]][1]
    assert opt.defaults["betas"] == (0.9, 0.999)  # MAE fine-tuning uses AdamW's default betas


def test_warmup_cosine_values():
    # warm-up of 10 steps to 1e-3, cosine over the next 90 down to 1e-6
    assert warmup_cosine(0, 10, 100, 1e-3, 1e-6) == 0.0
    assert warmup_cosine(5, 10, 100, 1e-3, 1e-6) == pytest.approx(5e-4)
    assert warmup_cosine(10, 10, 100, 1e-3, 1e-6) == pytest.approx(1e-3)
    assert warmup_cosine(55, 10, 100, 1e-3, 1e-6) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)  # half-way
    assert warmup_cosine(40, 10, 100, 1e-3, 0.0) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 3)))
    assert warmup_cosine(100, 10, 100, 1e-3, 1e-6) == pytest.approx(1e-6)
    assert scaled_lr(1e-3, 128) == pytest.approx(5e-4)


def test_warmup_cosine_config_steps_the_lr_per_iteration():
    # 2 of 8 epochs of warm-up over 20.7 (-> 20) steps: 5 warm-up steps, then cosine to 1e-5
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    cfg = warmup_cosine_config(opt, 0.1, 1e-5, 2.0, 8, 20.7)
    assert cfg["optimizer"] is opt and cfg["lr_scheduler"]["interval"] == "step"
    for step in range(25):
        assert opt.param_groups[0]["lr"] == pytest.approx(warmup_cosine(step, 5.0, 20, 0.1, 1e-5), rel=1e-12, abs=1e-15)
        opt.step()
        cfg["lr_scheduler"]["scheduler"].step()
