"""The slide layers of `gcmae demo`: the demo's tiling job gets features, a tile classifier's heatmap and ABMIL
attention, so that `gcmae serve <out>/tiles` shows every layer of the viewer on the shipped slides.

There are no labelled slides in the repository, so the models are the stated PCam proxies of
`examples/diagnose_shipped_slide.py`: a tile classifier (linear probe, PCam tumour vs normal) and ABMIL trained on
bags of real PCam patches, both on the demo's own encoder. The shipped slides are skin and head-and-neck tissue,
not lymph node: the layers show what the tools draw, not a finding.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gcmae.experiments.mil_proxy import ProxySpec, run_proxy
from gcmae.slide.features import encoder_record, extract_job
from gcmae.slide.heatmap import run_heatmap
from gcmae.slide.mil import predict_slides
from gcmae.slide.tile_classifier import train_tile_classifier

log = logging.getLogger(__name__)

POOL = "mean"
MIL_OUT = "abmil"  # <job>/abmil/: predictions.csv and attention/<slide>.csv, where `gcmae serve` finds them


def slide_layers(encoder: Any, checkpoint: str | Path, job_dir: str | Path, pcam: str | Path,
                 out_dir: str | Path) -> dict[str, Any]:
    """Features of every slide of `job_dir` with `encoder` (loaded from `checkpoint`), the heatmap of a PCam tile
    classifier and ABMIL attention + slide predictions of a PCam proxy model; models in `out_dir`."""
    job_dir, pcam, out_dir = Path(job_dir), Path(pcam), Path(out_dir)
    record = encoder_record(encoder, checkpoint, POOL)
    cache = out_dir / "feature-cache"  # PCam is embedded once for both models
    summary = extract_job(job_dir, encoder, record, batch_size=64, num_workers=0, progress=False)
    clf_dir = out_dir / "tile_classifier"
    clf = train_tile_classifier(encoder, record, pcam / "train", clf_dir, val_dir=pcam / "valid", cache_dir=cache)
    heat = run_heatmap(job_dir, clf_dir)
    proxy = run_proxy(encoder, POOL, pcam / "train", pcam / "valid", out_dir / "proxy", ProxySpec(), record=record,
                      cache_dir=cache, mil_overrides={"tile_classifier": str(clf_dir)})
    predictions = predict_slides(proxy["model"], job_dir, job_dir / MIL_OUT, device="cpu")
    return {"slides_embedded": summary.done, "tile_classifier_val_auc": (clf.meta.get("val") or {}).get("auc"),
            "proxy_auc": proxy["auc"], "heatmap_mean_prob": {r.slide: r.mean_prob for r in heat},
            "predicted": {p.slide_id: p.predicted for p in predictions}}
