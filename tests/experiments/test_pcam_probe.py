"""The probe runner: one result file per encoder and pool, resumable, tabulated by label."""
from __future__ import annotations

import json

from gcmae.experiments.pcam_probe import probe, table
from tests.conftest import copy_subset


def test_probe_writes_resumes_and_tabulates(samples, tmp_path):
    train = copy_subset(samples / "pcam" / "train", tmp_path / "train", 12)
    val = copy_subset(samples / "pcam" / "valid", tmp_path / "val", 6)
    out = tmp_path / "results"
    files = probe(["colour-histogram", "random:vit_tiny:16:0"], str(train), str(val), out, label=None,
                  cache_dir=str(tmp_path / "cache"))
    assert len(files) == 3 and all(f.exists() for f in files)  # hist + (cls, mean)
    records = [json.loads(f.read_text()) for f in files]
    assert {r["pool"] for r in records} == {"hist", "cls", "mean"}
    for r in records:
        assert r["num_train"] == 24 and r["num_val"] == 12
        assert 0.0 <= r["logreg"]["balanced_accuracy"] <= 1.0 and set(r) >= {"knn20", "knn200"}
    stamps = {f: f.stat().st_mtime_ns for f in files}
    again = probe(["colour-histogram", "random:vit_tiny:16:0"], str(train), str(val), out,
                  cache_dir=str(tmp_path / "cache"))
    assert {f: f.stat().st_mtime_ns for f in again} == stamps  # finished results are not recomputed
    text = table(out)
    assert "| colour-histogram | hist | 1 |" in text and "| random:vit_tiny:16:0 | cls | 1 |" in text
