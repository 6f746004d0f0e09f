"""GCMAE: a masked autoencoder whose masked-view embedding is also contrasted against an NPID memory bank."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Block

from gcmae.config import PretrainConfig
from gcmae.losses.nce import info_nce_loss, nce_loss, nt_xent_loss
from gcmae.losses.reconstruction import masked_reconstruction_loss, patchify, unpatchify
from gcmae.models.memory_bank import MemoryBank
from gcmae.models.masking import random_masking
from gcmae.models.pos_embed import sincos_2d
from gcmae.models.vit import create_encoder
from gcmae.seeding import step_generator


@dataclass
class GCMAEOutput:
    latent: torch.Tensor  # (B, 1 + kept, D) encoder tokens of the masked view, cls first
    mask: torch.Tensor  # (B, L) 1 = removed patch, in the original patch order
    ids_restore: torch.Tensor  # (B, L)
    pred: torch.Tensor | None  # (B, L, p*p*3) decoder output, None when the decoder was skipped
    embedding: torch.Tensor  # (B, D) mean of latent tokens, L2-normalised (the global-contrast feature)


class MAEDecoder(nn.Module):
    """The MAE decoder: project, fill masked positions with a mask token, transformer, per-patch pixels."""

    def __init__(self, embed_dim: int, num_patches: int, patch_size: int, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        grid = int(num_patches**0.5)
        self.pos_embed = nn.Parameter(sincos_2d(dim, grid), requires_grad=False)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm) for _ in range(depth)])
        self.norm = norm(dim)
        self.pred = nn.Linear(dim, patch_size * patch_size * 3)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.embed(latent)
        b, kept, d = x.shape
        num_masked = ids_restore.shape[1] + 1 - kept
        patches = torch.cat([x[:, 1:], self.mask_token.expand(b, num_masked, d)], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.pred(x[:, 1:])


class GCMAE(nn.Module):
    """Encoder (timm ViT) + MAE decoder + NPID memory bank.

    `num_data` is the number of training images: the bank holds one entry per image, addressed by dataset index.
    """

    def __init__(
        self,
        num_data: int,
        encoder: str = "vit_base",
        img_size: int = 224,
        patch_size: int = 16,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        mask_ratio: float = 0.5,
        norm_pix_loss: bool = True,
        drop_path: float = 0.0,
        reconstruction_weight: float = 1.0,
        contrast_weight: float = 0.1,
        num_negatives: int = 8192,
        temperature: float = 0.07,
        bank_momentum: float = 0.5,
        negatives: str = "per_sample",
        objective: str = "nce",
        z_estimate: str = "first_batch",
        z_momentum: float = 0.99,
        contrast: str = "memory_bank",
        projection_dim: int = 0,
    ) -> None:
        super().__init__()
        self.encoder = create_encoder(encoder, img_size, patch_size, drop_path)
        self.encoder.pos_embed.requires_grad_(False)  # fixed sin-cos, as in MAE
        num_patches = self.encoder.patch_embed.num_patches
        self.encoder.pos_embed.data.copy_(sincos_2d(self.encoder.embed_dim, int(num_patches**0.5)))
        self.decoder = MAEDecoder(self.encoder.embed_dim, num_patches, patch_size, decoder_dim, decoder_depth, decoder_heads)
        if objective not in ("nce", "infonce"):
            raise ValueError(f"objective must be 'nce' or 'infonce', got {objective!r}")
        if contrast not in ("memory_bank", "two_view"):
            raise ValueError(f"contrast must be 'memory_bank' or 'two_view', got {contrast!r}")
        d = self.encoder.embed_dim
        self.projector = (nn.Sequential(nn.Linear(d, 512), nn.GELU(), nn.Linear(512, projection_dim))
                          if projection_dim > 0 else None)
        self.bank = MemoryBank(num_data, projection_dim or d, num_negatives, temperature, bank_momentum, negatives,
                               z_estimate, z_momentum)
        self.objective = objective
        self.contrast = contrast
        self.patch_size = patch_size
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.reconstruction_weight = reconstruction_weight
        self.contrast_weight = contrast_weight
        self._init_weights()

    @classmethod
    def from_config(cls, cfg: PretrainConfig, num_data: int) -> GCMAE:
        """The model a pretraining config describes (`model.*` and the `loss.*` the model applies itself)."""
        loss = asdict(cfg.loss)
        loss.pop("contrast_warmup_epochs")  # a schedule, applied by the training loop
        return cls(num_data=num_data, **asdict(cfg.model), **loss)

    def _init_weights(self) -> None:
        w = self.encoder.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        nn.init.normal_(self.decoder.mask_token, std=0.02)
        for name, m in self.named_modules():
            if name == "encoder.patch_embed.proj":
                continue
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def encode_masked(self, imgs: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder on the visible patches chosen by `noise` (B, L); returns latent, mask, ids_restore."""
        enc = self.encoder
        x = enc.patch_embed(imgs) + enc.pos_embed[:, 1:]
        x, mask, ids_restore = random_masking(x, self.mask_ratio, noise)
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = enc.norm_pre(enc.pos_drop(torch.cat([cls, x], dim=1)))
        return enc.norm(enc.blocks(x)), mask, ids_restore

    def forward(self, imgs: torch.Tensor, noise: torch.Tensor) -> GCMAEOutput:
        latent, mask, ids_restore = self.encode_masked(imgs, noise)
        pred = self.decoder(latent, ids_restore) if self.reconstruction_weight > 0 else None
        embedding = F.normalize(latent.mean(dim=1), dim=1)
        return GCMAEOutput(latent, mask, ids_restore, pred, embedding)

    def contrast_features(self, embedding: torch.Tensor) -> torch.Tensor:
        """What the contrast term scores: the embedding, or its projection (renormalised) when there is a head."""
        return embedding if self.projector is None else F.normalize(self.projector(embedding), dim=1)

    def training_losses(
        self, imgs: torch.Tensor, indices: torch.Tensor, seed: int, rank: int = 0, world_size: int = 1,
        contrast_scale: float = 1.0, second_view: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """One step's losses (and `stat_*` diagnostics of the contrast term); updates the memory bank.

        `contrast_scale` multiplies the contrast weight (a ramp-up schedule); the bank is updated whatever it is.
        With `contrast="two_view"`, `second_view` is a second augmentation of the same images: it is masked
        independently, both views are reconstructed (the loss is their mean) and NT-Xent pairs them; no bank.

        The masking noise and the negatives are drawn for the *global* batch from generators seeded by `seed`
        and each rank takes its slice, so a run is identical whatever the number of processes, and resumes exactly.
        """
        b = imgs.shape[0]
        num_patches = self.encoder.patch_embed.num_patches
        noise_all = torch.rand(b * world_size, num_patches, generator=step_generator(seed, 0))
        noise = noise_all[rank * b : (rank + 1) * b].to(imgs.device)
        out = self(imgs, noise)
        views = [(imgs, out)]
        if self.contrast == "two_view":
            if second_view is None or second_view.shape != imgs.shape:
                raise ValueError("contrast='two_view' needs a second_view of the same shape as imgs")
            if world_size > 1:  # NT-Xent over each rank's local batch would differ from one process's run
                raise NotImplementedError("loss.contrast=two_view runs in one process for now (its negatives are "
                                          "the batch; gathering them across processes is not implemented)")
            noise2 = torch.rand(b * world_size, num_patches, generator=step_generator(seed, 4))
            views.append((second_view, self(second_view, noise2[rank * b : (rank + 1) * b].to(imgs.device))))
        losses: dict[str, torch.Tensor] = {}
        total = imgs.new_zeros(())
        if out.pred is not None:
            rec = [masked_reconstruction_loss(o.pred, patchify(x, self.patch_size), o.mask, self.norm_pix_loss)
                   for x, o in views]
            losses["loss_rec"] = torch.stack(rec).mean()
            total = total + self.reconstruction_weight * losses["loss_rec"]
        if self.contrast_weight > 0 and self.contrast == "two_view":
            z1, z2 = (self.contrast_features(o.embedding) for _, o in views)
            losses["loss_nce"] = nt_xent_loss(z1, z2, self.bank.temperature)
            losses["stat_sim_pos"] = (z1 * z2).sum(1).detach().mean()
            total = total + self.contrast_weight * contrast_scale * losses["loss_nce"]
        elif self.contrast_weight > 0:
            negatives = self.bank.sample_negatives(b, step_generator(seed, 1), rank, world_size)
            z = self.contrast_features(out.embedding)
            sims = self.bank.similarities(z, indices, negatives)
            if self.objective == "infonce":
                losses["loss_nce"] = info_nce_loss(sims, self.bank.temperature)
            else:
                probs = self.bank.probabilities(sims)
                losses["loss_nce"] = nce_loss(probs, self.bank.size)
                # this batch's estimate of the partition function over the one in use (official: fixed at step 0)
                losses["stat_log_z_ratio"] = torch.log(probs.detach().mean() * self.bank.size)
            losses["stat_sim_pos"] = sims[:, 0].detach().mean()
            losses["stat_sim_neg"] = sims[:, 1:].detach().mean()
            total = total + self.contrast_weight * contrast_scale * losses["loss_nce"]
            self.bank.update(z.detach(), indices)
        losses["loss"] = total
        return losses

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstructed images in input space, mask as (B, L)); per-patch-normalised predictions are
        mapped back with each patch's own mean/std, the usual way to look at a norm-pix MAE."""
        out = self(imgs, noise)
        if out.pred is None:
            raise ValueError("this model has no reconstruction head (reconstruction_weight = 0)")
        pred = out.pred
        if self.norm_pix_loss:
            target = patchify(imgs, self.patch_size)
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mean
        return unpatchify(pred, self.patch_size), out.mask

    def embed(self, imgs: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        """Features of unmasked images: the cls token or the mean of the patch tokens, after the final norm."""
        tokens = self.encoder.forward_features(imgs)
        return tokens[:, 0] if pool == "cls" else tokens[:, self.encoder.num_prefix_tokens :].mean(dim=1)
