"""`gcmae diagnose`: one new slide, end to end, with a MIL model folder.

Tissue mask and tiles (`gcmae tile`, at the tile size and MPP the model was trained with) -> features with the
model's recorded encoder (checked by digest) -> ABMIL slide probabilities and per-tile attention -> heatmaps
(attention; and the tile classifier's probabilities when the model folder holds one) -> ``OUT/report.md`` and
``OUT/diagnosis.json``. Every step skips work already done in OUT, so a re-run only redoes what is missing.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from gcmae.device import resolve_device
from gcmae.io.atomic import write_text_atomic
from gcmae.io.paths import safe_name
from gcmae.slide.bags import feature_filename, load_bag
from gcmae.slide.features import extract_job, load_recorded_encoder
from gcmae.slide.heatmap import heatmap_slide, slide_thumbnail
from gcmae.slide.mil import attend_bag, load_mil_model
from gcmae.slide.options import DiagnoseOptions
from gcmae.slide.tile_classifier import load_tile_classifier
from gcmae.slide.tiling import TilingSettings

log = logging.getLogger(__name__)

TOP_TILES = 5


def _tiling(opts: DiagnoseOptions, tiles: dict[str, Any]) -> tuple[float, int, list[str]]:
    """(mpp, tile size, warnings): the model's tiling unless overridden (overrides are noted in the report)."""
    notes = []
    mpp = opts.mpp if opts.mpp is not None else tiles.get("tile_mpp")
    size = opts.tile_size if opts.tile_size is not None else tiles.get("tile_size")
    if mpp is None or size is None:
        raise ValueError("the model does not record its tile MPP/size (trained on generic bags?): pass --mpp and "
                         "--tile-size")
    for name, given, trained in (("mpp", opts.mpp, tiles.get("tile_mpp")),
                                 ("tile size", opts.tile_size, tiles.get("tile_size"))):
        if given is not None and trained is not None and given != trained:
            notes.append(f"{name} {given} differs from the {trained} the model was trained with")
    return float(mpp), int(size), notes


def diagnose(opts: DiagnoseOptions, progress: bool = True) -> dict[str, Any]:
    """Run the whole process for opts.slide; returns what diagnosis.json holds."""
    from gcmae.slide.batch import tile_slides

    slide = Path(opts.slide)
    if not slide.is_file():
        raise FileNotFoundError(f"slide not found: {slide}")
    mil = load_mil_model(opts.model)
    record = mil.features
    if not record.get("weights_id"):
        raise ValueError(f"{mil.root}: the model records no encoder (trained on generic bags); diagnose needs a "
                         f"model trained on gcmae extract features")
    mpp, tile_size, notes = _tiling(opts, mil.config.get("tiles") or {})
    encoder = load_recorded_encoder(record)  # checks the checkpoint still has the recorded digest
    out = Path(opts.out or Path("runs/diagnose") / safe_name(slide.stem))
    settings = TilingSettings(tile_size=tile_size, mpp=mpp, slide_mpp=opts.slide_mpp, min_tissue=opts.min_tissue)
    tiling = tile_slides(slide, out, settings, progress=progress)
    if tiling.slides_busy:
        raise BlockingIOError(f"{slide} is being tiled into {out} by another process; try again when it is done")
    slide_dir = out / tiling.outcomes[0].name
    device = resolve_device(opts.device)
    summary = extract_job(out, encoder, record, opts.batch_size, opts.num_workers, device, names=[slide_dir.name],
                          precision=opts.precision, progress=progress)
    if summary.busy:
        raise BlockingIOError(f"{slide} is being embedded in {out} by another process; try again when it is done")
    if summary.failures:
        raise ValueError(f"{slide}: feature extraction failed: {summary.failures[0][1]}")
    feats_path = slide_dir / feature_filename(record["tag"])
    with_tiles = _num_tiles(feats_path)
    if not with_tiles:
        raise ValueError(f"{slide}: no tissue tile at {mpp} µm/px with >= {opts.min_tissue} tissue; nothing to "
                         f"classify (see {slide_dir / 'thumbnail.png'})")
    bag = load_bag(feats_path)
    background = slide_thumbnail(bag.attrs, slide_dir)  # read once, drawn under both heatmaps
    scored = attend_bag(mil, bag, device, out / "attention.csv", out / "attention.png", background=background)
    probs, attention = scored.probs, scored.attention
    images = [("tiles kept (green: tissue mask, blue: tiles)", str((slide_dir / "thumbnail.png").relative_to(out)))]
    if scored.png:
        images.append(("ABMIL attention (relative to the most attended tile)", scored.png.name))
    heat = None
    if mil.config.get("tile_classifier"):
        clf = load_tile_classifier(mil.root / mil.config["tile_classifier"])
        heat = heatmap_slide(slide_dir, clf, "tile_classifier", out_dir=out, bag=bag, background=background)
        if heat.png:
            images.append((f"tile classifier: P({clf.classes[clf.positive]}) per tile", heat.png.name))
    top = np.argsort(-attention)[:TOP_TILES]
    result = {
        "slide": str(slide.resolve()), "model": str(mil.root.resolve()), "classes": mil.classes,
        "probabilities": {c: float(p) for c, p in zip(mil.classes, probs)},
        "predicted": mil.classes[int(probs.argmax())], "num_tiles": len(attention),
        "top_tiles": [{"x": int(bag.coords[i, 0]), "y": int(bag.coords[i, 1]), "attention": float(attention[i])}
                      for i in top],
        "tile_classifier_mean_prob": heat.mean_prob if heat else None,
        "settings": {**asdict(opts), "out": str(out), "mpp": mpp, "tile_size": tile_size, "device": str(device)},
        "encoder": {k: record.get(k) for k in ("checkpoint", "checkpoint_sha256", "encoder", "pool", "img_size")},
        "notes": notes, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_text_atomic(out / "diagnosis.json", json.dumps(result, indent=2) + "\n")
    _write_report(out, result, images)
    return result


def _num_tiles(path: Path) -> int:
    from gcmae.slide.bags import read_attrs

    return int(read_attrs(path).get("num_tiles", 0))


def _write_report(out: Path, r: dict[str, Any], images: list[tuple[str, str]]) -> Path:
    s, e = r["settings"], r["encoder"]
    lines = [f"# Slide report: {Path(r['slide']).name}", "",
             f"**Predicted: {r['predicted']}**", "", "| class | probability |", "|---|---|",
             *(f"| {c} | {p:.4f} |" for c, p in r["probabilities"].items()), "",
             "Research output of a MIL model; not a clinical diagnosis.", "", "## Settings", "",
             f"- slide: `{r['slide']}`", f"- MIL model: `{r['model']}`",
             f"- encoder: `{e['checkpoint']}` ({e['encoder']}, sha256 {str(e['checkpoint_sha256'])[:16]}…, "
             f"pool {e['pool']}, {e['img_size']} px)",
             f"- tiles: {s['tile_size']} px at {s['mpp']} µm/px, tissue >= {s['min_tissue']}; {r['num_tiles']} tiles",
             *(f"- note: {n}" for n in r["notes"]), "", "## Most attended tiles (level-0 x, y)", "",
             "| x | y | attention |", "|---|---|---|",
             *(f"| {t['x']} | {t['y']} | {t['attention']:.4f} |" for t in r["top_tiles"]), ""]
    if r["tile_classifier_mean_prob"] is not None:
        lines += [f"Tile classifier: mean probability over tiles {r['tile_classifier_mean_prob']:.4f}.", ""]
    lines += ["## Images", ""]
    for caption, rel in images:
        lines += [f"### {caption}", "", f"![{caption}]({rel})", ""]
    return write_text_atomic(out / "report.md", "\n".join(lines))
