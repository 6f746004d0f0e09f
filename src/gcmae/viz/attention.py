"""Attention of the cls token in the last encoder block, computed from the block's own qkv weights."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from gcmae.io.atomic import atomic_path  # noqa: E402


def block_input(encoder: VisionTransformer, imgs: torch.Tensor, block: int = -1) -> torch.Tensor:
    """The tokens (B, N, D) entering `encoder.blocks[block]` on unmasked images."""
    captured: list[torch.Tensor] = []
    handle = encoder.blocks[block].register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    try:
        encoder.forward_features(imgs)
    finally:
        handle.remove()
    return captured[0]


def attention_weights(encoder: VisionTransformer, tokens: torch.Tensor, block: int = -1) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) (B, heads, N, N) of `encoder.blocks[block]` for its input `tokens`."""
    blk = encoder.blocks[block]
    attn = blk.attn
    x = blk.norm1(tokens)
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, _ = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


@torch.no_grad()
def cls_attention_maps(encoder: VisionTransformer, imgs: torch.Tensor) -> torch.Tensor:
    """(B, heads, grid, grid): how much the cls token attends to each patch in the last block."""
    was_training = encoder.training
    encoder.eval()
    weights = attention_weights(encoder, block_input(encoder, imgs))
    encoder.train(was_training)
    patches = weights[:, :, 0, encoder.num_prefix_tokens:]
    grid = encoder.patch_embed.grid_size
    return patches.reshape(*patches.shape[:2], *grid)


def _to_rgb(x: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    return (x.cpu() * s + m).clamp(0, 1).permute(1, 2, 0)


def plot_attention(
    encoder: VisionTransformer, imgs: torch.Tensor, out_png: str | Path, mean: tuple, std: tuple,
    titles: list[str] | None = None,
) -> Path:
    """One row per image: the image | the head-averaged cls attention upsampled over it."""
    maps = cls_attention_maps(encoder, imgs).mean(dim=1, keepdim=True).cpu()
    maps = F.interpolate(maps, size=imgs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    lo = maps.flatten(1).min(1).values.view(-1, 1, 1)
    hi = maps.flatten(1).max(1).values.view(-1, 1, 1)
    maps = (maps - lo) / (hi - lo).clamp_min(1e-12)
    n = imgs.shape[0]
    fig, axes = plt.subplots(n, 2, figsize=(2 * 2.2, n * 2.2), squeeze=False)
    for row in range(n):
        rgb = _to_rgb(imgs[row], mean, std).numpy()
        axes[row, 0].imshow(rgb)
        axes[row, 1].imshow(rgb)
        axes[row, 1].imshow(maps[row].numpy(), cmap="inferno", alpha=0.55, vmin=0, vmax=1)
        if titles:
            axes[row, 0].set_ylabel(titles[row], fontsize=7)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("image", fontsize=8)
    axes[0, 1].set_title("cls attention, last block\n(mean over heads)", fontsize=8)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(out_png)
