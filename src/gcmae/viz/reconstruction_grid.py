"""A grid of original / masked / reconstructed / reconstructed-with-visible-patches images."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from gcmae.io.atomic import atomic_path  # noqa: E402
from gcmae.models.gcmae import GCMAE  # noqa: E402


def _to_rgb(x: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    return (x.cpu() * s + m).clamp(0, 1).permute(1, 2, 0)


@torch.no_grad()
def plot_reconstructions(
    model: GCMAE, imgs: torch.Tensor, out_png: str | Path, mean: tuple, std: tuple, seed: int = 0
) -> Path:
    """Each row one image; columns: original, masked input, reconstruction, reconstruction + visible patches."""
    was_training = model.training
    model.eval()
    num_patches = model.encoder.patch_embed.num_patches
    noise = torch.rand(imgs.shape[0], num_patches, generator=torch.Generator().manual_seed(seed))
    recon, mask = model.reconstruct(imgs, noise)
    model.train(was_training)
    p = model.patch_size
    grid = int(num_patches**0.5)
    pixel_mask = mask.view(-1, 1, grid, 1, grid, 1).expand(-1, 3, -1, p, -1, p).reshape(imgs.shape)
    columns = {
        "original": imgs,
        f"masked ({model.mask_ratio:.0%})": imgs * (1 - pixel_mask) + pixel_mask * imgs.new_tensor(
            [(0.5 - m) / s for m, s in zip(mean, std)]).view(1, 3, 1, 1),
        "reconstruction": recon,
        "reconstruction + visible": imgs * (1 - pixel_mask) + recon * pixel_mask,
    }
    n = imgs.shape[0]
    fig, axes = plt.subplots(n, 4, figsize=(4 * 1.8, n * 1.8), squeeze=False)
    for col, (title, batch) in enumerate(columns.items()):
        for row in range(n):
            ax = axes[row, col]
            ax.imshow(_to_rgb(batch[row], mean, std).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=8)
    fig.suptitle("GCMAE reconstructions (predictions de-normalised with each patch's mean/std)", fontsize=8)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(out_png)
