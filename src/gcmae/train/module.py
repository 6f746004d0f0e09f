"""The LightningModule for GCMAE pretraining."""
from __future__ import annotations

from typing import Any

import lightning as L
import torch

from gcmae.config import PretrainConfig, from_dict
from gcmae.data.batch_augment import BatchAugment
from gcmae.models.gcmae import GCMAE
from gcmae.seeding import derive_seed, step_generator
from gcmae.train.optim import build_adamw, scaled_lr, warmup_cosine_config


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the run stops before anything is checkpointed from that state."""


class PretrainModule(L.LightningModule):
    """Wraps GCMAE: one optimiser step per batch (or per accumulation window), per-iteration lr schedule."""

    def __init__(self, config: dict[str, Any], num_data: int, stain: dict[str, Any] | None = None) -> None:
        """`stain`: the fitted normaliser `data.stain_norm` applied (`StainNormalizer.to_dict`), kept in the
        checkpoint's hyper-parameters so the checkpoint carries it without its target image."""
        super().__init__()
        self.save_hyperparameters()
        self.cfg: PretrainConfig = from_dict(PretrainConfig, config)
        self.model = GCMAE.from_config(self.cfg, num_data)
        d = self.cfg.data
        # in-memory data arrive as uint8 batches: crop, flips, stain and colour jitter run here, on the training device
        self.augment = (BatchAugment(self.cfg.model.img_size, d.crop_scale, d.hflip, d.rotate90, d.stain_jitter,
                                     d.mean, d.std, colour_jitter=d.colour_jitter, colour_jitter_p=d.colour_jitter_p,
                                     grayscale=d.grayscale) if d.in_memory else None)

    def contrast_scale(self) -> float:
        """The contrast weight's ramp: linear from 0 to 1 over loss.contrast_warmup_epochs, then 1."""
        ramp = self.cfg.loss.contrast_warmup_epochs
        if ramp <= 0:
            return 1.0
        steps_per_epoch = self.trainer.estimated_stepping_batches / max(1, self.trainer.max_epochs)
        return min(1.0, self.global_step / (ramp * steps_per_epoch))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        imgs, _, indices = batch
        seed = derive_seed(self.cfg.trainer.seed, self.current_epoch, batch_idx)
        second_view = None
        if self.augment is not None:
            if self.cfg.loss.contrast == "two_view":
                second_view = self.augment(imgs, step_generator(seed, 3))
            imgs = self.augment(imgs, step_generator(seed, 2))
        losses = self.model.training_losses(imgs, indices, seed, self.global_rank, self.trainer.world_size,
                                            self.contrast_scale(), second_view)
        if not torch.isfinite(losses["loss"]):
            detail = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            raise NonFiniteLossError(
                f"non-finite loss at epoch {self.current_epoch}, batch {batch_idx} (global step {self.global_step}): "
                f"{detail}. Stopping; the last checkpoint written before this step is intact."
            )
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, on_step=True, on_epoch=True,
                      prog_bar=False, batch_size=imgs.shape[0])
        self.log("loss", losses["loss"].detach(), prog_bar=True, logger=False)
        return losses["loss"]

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        self.model.bank.flush()  # this batch's backward is done: write its memory-bank update

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad.detach().norm() for p in self.model.parameters() if p.grad is not None]
        if grads:
            self.log("train/grad_norm", torch.stack(grads).norm(), on_step=True, on_epoch=False)
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False)

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.cfg.optim
        effective_batch = self.cfg.data.batch_size * o.accumulate_grad_batches * self.trainer.world_size
        lr = scaled_lr(o.base_lr, effective_batch)
        optimizer = build_adamw(self.model, lr, o.weight_decay, o.betas)
        return warmup_cosine_config(optimizer, lr, o.min_lr, o.warmup_epochs, o.epochs,
                                    self.trainer.estimated_stepping_batches)
