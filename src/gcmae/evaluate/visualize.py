"""`gcmae visualize`: t-SNE / UMAP of features, cls-token attention maps and MAE reconstructions for an image folder."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from gcmae.data.datasets import ImageFolderDataset
from gcmae.data.folders import open_folder
from gcmae.data.transforms import eval_transform
from gcmae.device import resolve_device
from gcmae.encoders.cache import FeatureSet, folder_features
from gcmae.encoders.loading import Encoder, load_autoencoder
from gcmae.evaluate.common import encoder_from_options, img_size_of
from gcmae.evaluate.options import VisualizeOptions, settings
from gcmae.io.atomic import write_text_atomic
from gcmae.scoring.report import write_report
from gcmae.viz.attention import plot_attention
from gcmae.viz.embedding import plot_embedding, subsample
from gcmae.viz.reconstruction_grid import plot_reconstructions


def sample_images(encoder: Encoder, dataset: ImageFolderDataset, num: int) -> tuple[torch.Tensor, list[str]]:
    """`num` images spread evenly over the sorted folder (so every class shows up), and their titles; as the
    encoder sees them (stain-normalised when it has a normaliser)."""
    dataset.transform = eval_transform(encoder.img_size, encoder.mean, encoder.std)
    picks = sorted(set(np.linspace(0, len(dataset) - 1, max(1, min(num, len(dataset)))).round().astype(int)))
    imgs, titles = [], []
    for i in picks:
        img, _, index = dataset[int(i)]
        imgs.append(img)
        titles.append(str(dataset.files[index].relative_to(dataset.root).parent / dataset.files[index].stem))
    batch = torch.stack(imgs)
    stain = encoder.stain_step()
    return (batch if stain is None else stain(batch)), titles


@dataclass
class Sources:
    """What the visuals draw from and where they go."""

    opts: VisualizeOptions
    encoder: Encoder
    dataset: ImageFolderDataset
    out: Path

    @cached_property
    def features(self) -> FeatureSet:
        """The folder's features, embedded (or read from the cache) once for t-SNE and UMAP together."""
        opts = self.opts
        return folder_features(self.encoder, self.dataset, opts.pool, opts.cache_dir or None, opts.batch_size,
                               opts.num_workers, resolve_device(opts.device), labelled=False)

    @cached_property
    def samples(self) -> tuple[torch.Tensor, list[str]]:
        """The images (and titles) shown by the attention and reconstruction figures, loaded once for both."""
        return sample_images(self.encoder, self.dataset, self.opts.num_images)


def _feature_map(method: str, label: str) -> Callable[[Sources], tuple[str, str]]:
    def draw(src: Sources) -> tuple[str, str]:
        opts, encoder, out, fs = src.opts, src.encoder, src.out, src.features
        keep = subsample(len(fs.files), opts.max_points, opts.seed)
        title = f"{label} of {opts.pool} features, {len(keep)} of {len(fs.files)} images\n{encoder.description}"
        plot_embedding(fs.features[keep].numpy(), fs.labels[keep].numpy(), fs.classes, out / f"{method}.png", title,
                       opts.seed, method)
        return f"{label} of encoder features", f"{method}.png"
    return draw


def _attention(src: Sources) -> tuple[str, str]:
    encoder = src.encoder
    imgs, titles = src.samples
    model = encoder.model.cpu().eval()
    plot_attention(model, imgs, src.out / "attention.png", encoder.mean, encoder.std, titles)
    return "cls-token attention of the last encoder block", "attention.png"


def _reconstruction(src: Sources) -> tuple[str, str]:
    encoder, opts = src.encoder, src.opts
    imgs, _ = src.samples
    model = load_autoencoder(opts.checkpoint, opts.encoder, img_size_of(opts), opts.patch_size, opts.seed)
    plot_reconstructions(model, imgs, src.out / "reconstructions.png", encoder.mean, encoder.std, src.opts.seed)
    return "reconstructions (original / masked / reconstruction / with visible patches)", "reconstructions.png"


VISUALS = {"tsne": _feature_map("tsne", "t-SNE"), "umap": _feature_map("umap", "UMAP"), "attention": _attention, "reconstruction": _reconstruction}


def run_visualize(opts: VisualizeOptions) -> dict[str, Any]:
    """Write the requested PNGs and a report.md to opts.out; returns {what: png path}."""
    wanted = [w.strip() for w in opts.what.split(",") if w.strip()]
    dataset = open_folder(opts.data, labelled=False)
    encoder = encoder_from_options(opts)
    if "reconstruction" in wanted and not encoder.has_decoder:
        raise ValueError(f"{opts.checkpoint} has no decoder weights (encoder only): reconstructions need a "
                         "GCMAE/MAE checkpoint with its decoder")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    src = Sources(opts, encoder, dataset, out)
    figures = [VISUALS[w](src) for w in wanted]
    stain = f", {encoder.stain.method}-normalised (target {encoder.stain.target_name})" if encoder.stain else ""
    notes = [f"Weights: {encoder.description}; images from `{opts.data}`{stain}."]
    write_report(out, "Visualisations", settings(opts), {}, figures, notes)
    written = {w: str(out / rel) for w, (_, rel) in zip(wanted, figures)}
    write_text_atomic(out / "visualize.json", json.dumps({"settings": settings(opts), "figures": written,
                                                          "weights": encoder.description}, indent=2) + "\n")
    for w, path in written.items():
        print(f"{w}: {path}")
    print(f"report: {out / 'report.md'}")
    return written
