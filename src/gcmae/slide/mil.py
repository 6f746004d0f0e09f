"""Gated attention MIL (ABMIL, Ilse et al. 2018) for slide labels from tile features, and the MIL model folder.

The model embeds every tile ``h_k = ReLU(W x_k + b)``, scores it with the gated attention
``e_k = w^T (tanh(V h_k) ⊙ sigmoid(U h_k)) + c``, takes ``a = softmax(e)`` over the bag, pools ``z = Σ a_k h_k``
and classifies ``z`` linearly. The pooled bag is a weighted sum, so a bag's prediction does not depend on the
order of its tiles.

A MIL model folder (`gcmae mil train` writes it, `gcmae mil predict` and `gcmae diagnose` read it) holds
``model.safetensors`` (the weights), ``config.json`` (architecture, classes, the encoder and tile geometry the
features came from, the training settings, split and metrics; written last, so it marks a finished model),
``history.csv`` (loss / AUC per epoch), ``report.md``, and optionally ``tile_classifier/`` and ``encoder/``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from gcmae.io.atomic import atomic_path

if TYPE_CHECKING:  # imported where used: they pull in h5py, the slide readers and matplotlib
    from gcmae.slide.bags import Bag
    from gcmae.slide.heatmap import Thumbnail

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "gcmae-abmil"


@dataclass(frozen=True)
class ABMILConfig:
    in_dim: int
    num_classes: int = 2
    hidden_dim: int = 128
    attn_dim: int = 128
    dropout: float = 0.25


class GatedABMIL(nn.Module):
    """Gated attention MIL: (N, in_dim) tile features -> (num_classes,) logits and (N,) attention weights."""

    def __init__(self, cfg: ABMILConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Sequential(nn.Linear(cfg.in_dim, cfg.hidden_dim), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.attention_v = nn.Linear(cfg.hidden_dim, cfg.attn_dim)
        self.attention_u = nn.Linear(cfg.hidden_dim, cfg.attn_dim)
        self.attention_w = nn.Linear(cfg.attn_dim, 1)
        self.classifier = nn.Linear(cfg.hidden_dim, cfg.num_classes)

    def attention_logits(self, h: torch.Tensor) -> torch.Tensor:
        """(N,) unnormalised gated attention scores of embedded tiles h (N, hidden_dim)."""
        gate = torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))
        return self.attention_w(gate).squeeze(-1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (num_classes,), attention (N,) summing to 1) of one bag of tile features (N, in_dim)."""
        if features.ndim != 2 or features.shape[1] != self.cfg.in_dim or features.shape[0] == 0:
            raise ValueError(f"expected a bag of shape (tiles >= 1, {self.cfg.in_dim}), got {tuple(features.shape)}")
        h = self.embed(features)
        attention = torch.softmax(self.attention_logits(h), dim=0)
        pooled = attention @ h
        return self.classifier(pooled), attention


@torch.no_grad()
def predict_bag(model: GatedABMIL, features: np.ndarray | torch.Tensor,
                device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities (C,), attention (N,)) of one bag, with the model in eval mode."""
    model.eval()
    x = torch.as_tensor(np.asarray(features, dtype=np.float32)).to(device)
    logits, attention = model(x)
    return torch.softmax(logits.float(), dim=0).cpu().numpy(), attention.float().cpu().numpy()


def save_weights(model: GatedABMIL, path: Path) -> None:
    """The state dict as safetensors, atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT, "config": json.dumps(asdict(model.cfg))})


@dataclass
class MILModel:
    """A trained model and its folder's config.json."""

    model: GatedABMIL
    config: dict[str, Any]
    root: Path

    @property
    def classes(self) -> list[str]:
        return list(self.config["classes"])

    @property
    def features(self) -> dict[str, Any]:
        """What the training features came from: weights_id, checkpoint, encoder, pool, img_size, tile geometry."""
        return dict(self.config.get("features") or {})


def load_mil_model(model_dir: str | Path) -> MILModel:
    """The model of a `gcmae mil train` folder; clear errors for a missing or unfinished folder."""
    root = Path(model_dir)
    cfg_path, weights = root / CONFIG_FILE, root / MODEL_FILE
    if not root.is_dir():
        raise FileNotFoundError(f"MIL model folder not found: {root}")
    if not cfg_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{root} is not a finished MIL model folder (needs {CONFIG_FILE} and {MODEL_FILE}; "
                                f"run gcmae mil train)")
    try:
        config = json.loads(cfg_path.read_text())
        arch = ABMILConfig(**config["model"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{cfg_path}: not a gcmae MIL config ({type(err).__name__}: {err})") from None
    if config.get("format") != FORMAT:
        raise ValueError(f"{cfg_path}: format {config.get('format')!r} is not {FORMAT!r}")
    model = GatedABMIL(arch)
    try:
        model.load_state_dict(load_file(str(weights)))
    except Exception as err:  # safetensors / shape errors
        raise ValueError(f"{weights}: does not hold the weights of {arch} ({type(err).__name__}: {err})") from None
    return MILModel(model.eval(), config, root)


@dataclass
class SlidePrediction:
    slide_id: str
    probs: np.ndarray  # (C,)
    predicted: str
    attention_csv: Path
    attention_png: Path | None


def check_bag_fits(mil: MILModel, bag: Bag) -> None:
    """ValueError naming the bag's file when its features do not fit the model (size, encoder, pool)."""
    from gcmae.slide.tile_classifier import check_features_match

    if bag.dim != mil.model.cfg.in_dim:
        raise ValueError(f"{bag.path}: {bag.dim}-d features, but the MIL model in {mil.root} takes "
                         f"{mil.model.cfg.in_dim}-d features")
    check_features_match(mil.features, bag.attrs, f"{bag.path} vs MIL model {mil.root}")


@dataclass
class BagAttention:
    bag: Bag
    probs: np.ndarray  # (C,)
    attention: np.ndarray  # (N,)
    png: Path | None


def attend_bag(mil: MILModel, source: Path | Bag, device: torch.device | str, csv_path: Path, png_path: Path | None,
               slide_id: str | None = None, title_prob: bool = False,
               background: Thumbnail | None = None) -> BagAttention:
    """Predict the bag (`source`: a bag file or a loaded bag) with `mil` after checking it fits, write its per-tile
    attention to `csv_path` and, when `png_path` is given and the tiles' coordinates are known, draw the attention
    relative to the most attended tile over the slide thumbnail (`background`, else read from the slide); the title
    also gives P(last class) when `title_prob`."""
    from gcmae.slide.bags import Bag, load_bag
    from gcmae.slide.heatmap import draw_slide_scores, write_tile_scores

    bag = source if isinstance(source, Bag) else load_bag(source, slide_id=slide_id)
    check_bag_fits(mil, bag)
    probs, attention = predict_bag(mil.model.to(device), bag.features, device)
    write_tile_scores(csv_path, bag.coords, {"attention": attention}, bag.attrs.get("extent"))
    png = None
    if png_path is not None and bag.coords is not None:
        title = f"{bag.slide_id}: ABMIL attention"
        if title_prob:
            title += f" (P({mil.classes[-1]}) = {probs[-1]:.3f})"
        png = draw_slide_scores(bag.attrs, bag.coords, attention / attention.max(), png_path, title,
                                "attention / max attention", bag.path.parent, background=background)
    return BagAttention(bag, probs, attention, png)


def predict_slides(model_dir: str | Path, features: str | Path, out_dir: str | Path, tag: str | None = None,
                   labels: str | Path | None = None, device: str = "cpu",
                   draw: bool = True) -> list[SlidePrediction]:
    """Slide probabilities (OUT/predictions.csv) and per-tile attention (OUT/attention/<slide>.csv, .png) of
    every bag under `features`; with `labels` (CSV slide_id,label) also metrics.json and report.md."""
    from gcmae.device import resolve_device
    from gcmae.io.atomic import write_csv_atomic, write_text_atomic
    from gcmae.io.paths import safe_name
    from gcmae.slide.bags import find_bags

    mil, dev, out = load_mil_model(model_dir), resolve_device(device), Path(out_dir)
    tag = tag or mil.features.get("tag")
    paths = find_bags(features, tag)
    results = []
    for sid, path in paths.items():
        name = safe_name(sid)
        csv_path, png_path = out / "attention" / f"{name}.csv", out / "attention" / f"{name}.png"
        a = attend_bag(mil, path, dev, csv_path, png_path if draw else None, slide_id=sid, title_prob=True)
        results.append(SlidePrediction(sid, a.probs, mil.classes[int(a.probs.argmax())], csv_path, a.png))
    write_csv_atomic(out / "predictions.csv", ["slide_id", *(f"prob_{c}" for c in mil.classes), "predicted"],
                     ([r.slide_id, *(f"{p:.6f}" for p in r.probs), r.predicted] for r in results))
    settings = {"model": str(mil.root.resolve()), "features": str(Path(features).resolve()), "tag": tag,
                "labels": str(labels) if labels else None, "device": str(dev), "classes": mil.classes,
                "num_slides": len(results)}
    write_text_atomic(out / "predict_settings.json", json.dumps(settings, indent=2) + "\n")
    if labels:
        _write_metrics(mil, results, labels, out)
    return results


def _write_metrics(mil: MILModel, results: list[SlidePrediction], labels: str | Path, out: Path) -> None:
    from gcmae.scoring.metrics import classification_metrics
    from gcmae.scoring.report import save_evaluation
    from gcmae.slide.bags import read_labels_csv

    truth = read_labels_csv(labels)
    scored = [r for r in results if r.slide_id in truth]
    unknown = sorted({truth[r.slide_id] for r in scored} - set(mil.classes))
    if unknown:
        raise ValueError(f"{labels}: labels {unknown} are not classes of the model ({', '.join(mil.classes)})")
    if not scored:
        raise ValueError(f"{labels}: no predicted slide has a label")
    y = np.array([mil.classes.index(truth[r.slide_id]) for r in scored])
    metrics = classification_metrics(y, np.stack([r.probs for r in scored]), mil.classes)
    save_evaluation(out, "mil predict", "ABMIL slide predictions", {"model": str(mil.root), "labels": str(labels)},
                    {"abmil": metrics})
