"""The fine-tuning LightningModule: a timm ViT classifier initialised from a pretrained encoder, trained with
MAE/GCMAE's recipe (AdamW + layer-wise lr decay, per-iteration warm-up + cosine, label smoothing), and the
train / eval transforms of the official `main_finetune.py`."""
from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torchvision import transforms as T

from gcmae.scoring.metrics import HEADLINE_METRICS, classification_metrics
from gcmae.train.module import NonFiniteLossError
from gcmae.train.optim import build_adamw_layer_decay, scaled_lr, warmup_cosine_config

HEAD_INIT_STD = 2e-5  # MAE's main_finetune.py: trunc_normal_(head.weight, std=2e-5)
VAL_METRICS = tuple(HEADLINE_METRICS)


def finetune_train_transform(img_size: int, mean: tuple, std: tuple, crop_scale: tuple[float, float] = (0.08, 1.0),
                             randaug_ops: int = 2, randaug_magnitude: int = 9, reprob: float = 0.25) -> T.Compose:
    """RandomResizedCrop (bicubic) + horizontal flip + RandAugment, normalise, random erasing (timm's
    `create_transform` order, with torchvision's RandAugment and RandomErasing filled with normal noise)."""
    steps: list[Any] = [T.RandomResizedCrop(img_size, scale=crop_scale, interpolation=T.InterpolationMode.BICUBIC),
                        T.RandomHorizontalFlip()]
    if randaug_ops > 0:
        steps.append(T.RandAugment(num_ops=randaug_ops, magnitude=randaug_magnitude,
                                   interpolation=T.InterpolationMode.BILINEAR))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    if reprob > 0:
        steps.append(T.RandomErasing(p=reprob, value="random"))
    return T.Compose(steps)


def encoder_architecture(encoder: VisionTransformer) -> dict[str, Any]:
    """What a classifier needs to hold `encoder`'s weights."""
    dim = encoder.embed_dim
    return {"embed_dim": dim, "depth": len(encoder.blocks), "num_heads": encoder.blocks[0].attn.num_heads,
            "patch_size": int(encoder.patch_embed.patch_size[0]), "img_size": int(encoder.patch_embed.img_size[0]),
            "mlp_ratio": encoder.blocks[0].mlp.fc1.out_features / dim}


def build_classifier(arch: dict[str, Any], num_classes: int, pool: str, drop_path: float) -> VisionTransformer:
    """A timm ViT with a linear head on the cls token (`pool` "cls") or on the mean of the patch tokens followed
    by a new LayerNorm (`pool` "mean", MAE's global pool: the final norm moves to `fc_norm`)."""
    return VisionTransformer(
        img_size=arch["img_size"], patch_size=arch["patch_size"], embed_dim=arch["embed_dim"], depth=arch["depth"],
        num_heads=arch["num_heads"], mlp_ratio=arch["mlp_ratio"], qkv_bias=True, num_classes=num_classes,
        global_pool="token" if pool == "cls" else "avg", drop_path_rate=drop_path,
        norm_layer=partial(nn.LayerNorm, eps=1e-6))


def load_pretrained(model: VisionTransformer, state: dict[str, torch.Tensor], source: str) -> None:
    """Encoder weights into the classifier; exactly the head (and, for the global pool, fc_norm instead of the
    final norm) may differ, anything else is an error. The head is initialised as in MAE."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    new = {"head.weight", "head.bias"} | ({"fc_norm.weight", "fc_norm.bias"} if model.global_pool == "avg" else set())
    unused = {"norm.weight", "norm.bias"} if model.global_pool == "avg" else set()
    if set(missing) != new or not set(unexpected) <= unused:
        raise ValueError(f"{source}: encoder weights do not fit the classifier (missing {sorted(set(missing) - new)}, "
                         f"unexpected {sorted(set(unexpected) - unused)})")
    nn.init.trunc_normal_(model.head.weight, std=HEAD_INIT_STD)
    nn.init.zeros_(model.head.bias)


class FinetuneModule(L.LightningModule):
    """One optimiser step per batch; validation metrics (scikit-learn) on the whole val set every epoch."""

    def __init__(self, arch: dict[str, Any], classes: list[str], settings: dict[str, Any], batch_size: int) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.settings, self.classes, self.batch_size = settings, classes, batch_size
        self.model = build_classifier(arch, len(classes), settings["pool"], settings["drop_path"])
        self.criterion = nn.CrossEntropyLoss(label_smoothing=settings["label_smoothing"])
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    @property
    def peak_lr(self) -> float:
        return scaled_lr(self.settings["base_lr"], self.batch_size)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.model(imgs)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        imgs, labels, _ = batch
        loss = self.criterion(self.model(imgs), labels)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite fine-tuning loss at epoch {self.current_epoch}, batch {batch_idx} "
                                     f"(global step {self.global_step}); the last checkpoint is from before it")
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True, batch_size=imgs.shape[0])
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        head = next(g for g in optimizer.param_groups if g["lr_scale"] == 1.0)
        self.log("train/lr", head["lr"], on_step=True, on_epoch=False)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        imgs, labels, _ = batch
        logits = self.model(imgs).float()
        self._val.append((logits.softmax(dim=1).cpu(), labels.cpu(),
                          F.cross_entropy(logits, labels, reduction="sum").cpu()))

    def on_validation_epoch_end(self) -> None:
        probs = torch.cat([p for p, _, _ in self._val])
        labels = torch.cat([y for _, y, _ in self._val])
        loss = sum(s for _, _, s in self._val) / len(labels)
        self._val.clear()
        m = classification_metrics(labels, probs, self.classes)
        values = {f"val/{k}": float(m[k]) for k in VAL_METRICS if m[k] is not None}
        self.log_dict({"val/loss": float(loss), **values}, prog_bar=False)

    def configure_optimizers(self) -> dict[str, Any]:
        s = self.settings
        lr = self.peak_lr
        optimizer = build_adamw_layer_decay(self.model, lr, s["weight_decay"], s["layer_decay"])
        return warmup_cosine_config(optimizer, lr, s["min_lr"], s["warmup_epochs"], s["epochs"],
                                    self.trainer.estimated_stepping_batches)


@torch.no_grad()
def predict(model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device,
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax probabilities (N, C), labels (N,)) of `model` in eval mode over `loader`."""
    model.eval().to(device)
    probs, labels = [], []
    for imgs, y, _ in loader:
        probs.append(model(imgs.to(device)).float().softmax(dim=1).cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(probs), torch.cat(labels)
