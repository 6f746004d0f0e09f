"""`gcmae heatmap`: a tile classifier's probability of the positive class for every tile of a slide, drawn over
the slide's thumbnail and saved per tile (``heatmap_<classifier>.csv`` with x, y, prob; ``.png``).

The features come from the slide's ``features_<tag>.h5`` (`gcmae extract`) made with the classifier's encoder:
the weights digest, pool and image size recorded in both must agree, otherwise it is an error naming the files.
`draw_slide_scores` is also how MIL attention maps are drawn.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gcmae.io.atomic import write_csv_atomic, write_text_atomic
from gcmae.io.paths import safe_name
from gcmae.slide.bags import FEATURES_PREFIX, Bag, feature_filename, load_bag, read_attrs
from gcmae.slide.features import tiled_slides
from gcmae.slide.qupath import write_tile_scores_geojson
from gcmae.slide.reader import SlideReadError, open_slide
from gcmae.slide.tile_classifier import TileClassifier, check_features_match, load_tile_classifier
from gcmae.viz.tile_scores import plot_tile_heatmap

log = logging.getLogger(__name__)

THUMBNAIL_SIZE = 1024


@dataclass
class HeatmapResult:
    slide: str
    csv: Path
    png: Path | None
    num_tiles: int
    mean_prob: float


Thumbnail = tuple[Image.Image, tuple[float, float]]  # the image, level-0 px per thumbnail px in x and y


def slide_thumbnail(attrs: dict[str, Any], slide_dir: Path | None = None,
                    max_size: int = THUMBNAIL_SIZE) -> Thumbnail | None:
    """(thumbnail, level-0 px per thumbnail px in x and y) from the slide file recorded in `attrs`, else from
    `slide_dir`/thumbnail.png (written by `gcmae tile`); None when neither can be read."""
    width, height = attrs.get("width"), attrs.get("height")
    if not width or not height:
        return None
    path = Path(str(attrs.get("slide_path", "")))
    try:
        with open_slide(path) as reader:
            thumb = reader.thumbnail(max_size)
    except (FileNotFoundError, SlideReadError, OSError) as err:
        fallback = slide_dir / "thumbnail.png" if slide_dir else None
        if fallback is None or not fallback.is_file():
            log.warning("no thumbnail for %s (%s)", attrs.get("slide_name", path.name), err)
            return None
        with Image.open(fallback) as im:
            thumb = im.convert("RGB")
    return thumb, (width / thumb.size[0], height / thumb.size[1])


def write_tile_scores(path: Path, coords: np.ndarray | None, columns: dict[str, np.ndarray],
                      extent: int | None = None) -> Path:
    """CSV with x, y (empty when unknown) and one column per entry of `columns`, one row per tile; with the
    coordinates and the tiles' level-0 `extent` known, the same scores as QuPath GeoJSON beside it (.geojson)."""
    n = len(next(iter(columns.values())))
    if coords is not None and extent:
        write_tile_scores_geojson(path.with_suffix(".geojson"), coords, int(extent), columns)

    def row(i: int) -> list[object]:
        xy = ["", ""] if coords is None else [int(coords[i, 0]), int(coords[i, 1])]
        return [*xy, *(f"{float(v[i]):.6g}" for v in columns.values())]

    return write_csv_atomic(path, ["x", "y", *columns], (row(i) for i in range(n)))


def draw_slide_scores(attrs: dict[str, Any], coords: np.ndarray, scores: np.ndarray, out_png: Path, title: str,
                      label: str, slide_dir: Path | None = None, vmin: float = 0.0, vmax: float = 1.0,
                      background: Thumbnail | None = None) -> Path | None:
    """The tiles' scores over the slide thumbnail (`background`, else read from the slide); None, with a warning,
    when the slide geometry is unknown."""
    extent = attrs.get("extent") or attrs.get("step")
    background = background or slide_thumbnail(attrs, slide_dir)
    if background is None or not extent:
        log.warning("cannot draw %s: the features do not record the slide and tile geometry", out_png.name)
        return None
    offset = (int(extent) - int(attrs.get("step") or extent)) // 2  # with overlap, paint each tile's own cell
    size = int(attrs.get("step") or extent)
    return plot_tile_heatmap(background[0], background[1], coords, size, scores, out_png, title, label, vmin, vmax,
                             offset=offset)


def features_for(slide_dir: Path, meta: dict[str, Any], tag: str | None = None) -> Path:
    """The feature file of `slide_dir` made with the encoder in `meta` (or named by `tag`); a clear error when
    there is none, listing what there is."""
    path = slide_dir / feature_filename(tag or meta["tag"])
    if path.is_file():
        return path
    others = sorted(slide_dir.glob(f"{FEATURES_PREFIX}*.h5"))
    found = "; ".join(f"{p.name} (checkpoint {read_attrs(p).get('checkpoint')}, pool {read_attrs(p).get('pool')})"
                      for p in others) or "none"
    stain = meta.get("stain_id") or "none"
    raise FileNotFoundError(
        f"{slide_dir}: no {path.name}; the classifier needs features of checkpoint {meta.get('checkpoint')} with "
        f"pool {meta.get('pool')} and stain normalisation {stain} (found: {found}); run gcmae extract "
        f"{slide_dir.parent} --checkpoint {meta.get('checkpoint')} --pool {meta.get('pool')}"
        + (f" --stain-norm {stain.split('-')[0]} --stain-target <the classifier's target>" if stain != "none" else ""))


def heatmap_slide(slide_dir: Path, clf: TileClassifier, name: str, tag: str | None = None,
                  out_dir: Path | None = None, bag: Bag | None = None,
                  background: Thumbnail | None = None) -> HeatmapResult:
    """Score every tile of one slide with `clf`; write heatmap_<name>.csv and .png into `out_dir` (the slide's
    folder by default). A caller that already holds the slide's feature `bag` or thumbnail passes them in."""
    out_dir = out_dir or slide_dir
    if bag is None:
        feats_path = features_for(slide_dir, clf.meta["features"], tag)
        if read_attrs(feats_path).get("num_tiles") == 0:
            log.warning("%s: no tiles, no heatmap", slide_dir.name)
            return HeatmapResult(slide_dir.name, write_tile_scores(out_dir / f"heatmap_{name}.csv", None,
                                                                   {"prob": np.zeros(0)}), None, 0, float("nan"))
        bag = load_bag(feats_path)
    feats_path = bag.path
    check_features_match(clf.meta["features"], bag.attrs, f"{feats_path} vs the classifier's {clf.meta.get('train_dir')}")
    if bag.dim != clf.dim:
        raise ValueError(f"{feats_path}: {bag.dim}-d features, but the classifier takes {clf.dim}-d features")
    prob = clf.predict_proba(bag.features)[:, clf.positive]
    positive = clf.classes[clf.positive]
    csv_path = write_tile_scores(out_dir / f"heatmap_{name}.csv", bag.coords, {"prob": prob}, bag.attrs.get("extent"))
    png = None
    if bag.coords is not None:
        png = draw_slide_scores(bag.attrs, bag.coords, prob, out_dir / f"heatmap_{name}.png",
                                f"{bag.slide_id}: P({positive}) per tile ({name})", f"P({positive})", slide_dir,
                                background=background)
    settings = {"classifier": clf.meta.get("source"), "classes": clf.classes, "positive": positive,
                "features": str(feats_path), "weights_id": bag.attrs.get("weights_id"), "num_tiles": len(prob),
                "mean_prob": float(prob.mean()), "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_text_atomic(out_dir / f"heatmap_{name}.json", json.dumps(settings, indent=2) + "\n")
    return HeatmapResult(bag.slide_id, csv_path, png, len(prob), float(prob.mean()))


def run_heatmap(job_dir: str | Path, classifier: str | Path, slides: list[str] | None = None,
                tag: str | None = None) -> list[HeatmapResult]:
    """Heatmaps of every slide of `job_dir` that has features (or of the named `slides`)."""
    clf = load_tile_classifier(classifier)
    name = safe_name(Path(classifier).resolve().name)
    results, missing = [], []
    for slide_dir in tiled_slides(job_dir, slides):
        try:
            results.append(heatmap_slide(slide_dir, clf, name, tag))
        except FileNotFoundError as err:
            if slides:  # a slide asked for by name must have its features
                raise
            log.warning("skipping %s: %s", slide_dir.name, err)
            missing.append(err)
    if not results and missing:
        raise missing[0]
    return results
