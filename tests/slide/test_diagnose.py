"""`gcmae diagnose` end to end on a real slide with a MIL model trained on PCam proxy bags of the same encoder."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gcmae.cli import main
from gcmae.encoders.loading import load_encoder
import gcmae.slide.diagnose as diagnose_module
import gcmae.slide.heatmap as heatmap_module
from gcmae.experiments.mil_proxy import ProxySpec, run_proxy
from gcmae.slide import bags
from gcmae.slide.bags import load_bag
from gcmae.slide.coords import read_coords_h5
from gcmae.slide.diagnose import DiagnoseOptions, diagnose
from gcmae.slide.features import encoder_record
from gcmae.slide.mil import load_mil_model, predict_bag
from gcmae.slide.mil_train import MILTrainOptions, train_mil
from gcmae.slide.reader import OpenSlideReader
from gcmae.slide.tile_classifier import train_tile_classifier
from tests.conftest import pcam_subset
from tests.slide.slide_helpers import SLIDES

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]
SLIDE = SLIDES / "cmu-1-small-region.svs"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """ABMIL on proxy bags of real PCam patches embedded by a tiny checkpoint (its record kept in the bags), with
    the tile classifier of the same encoder; tiles: 32 px at 4 µm/px."""
    root = tmp_path_factory.mktemp("diag_model")
    ckpt = root / "vit_tiny_p8_32.pth"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        from gcmae.models.vit import create_encoder

        torch.save(create_encoder("vit_tiny", 32, 8).state_dict(), ckpt)
    encoder = load_encoder(ckpt)
    record = encoder_record(encoder, ckpt, "cls")
    train = pcam_subset(root / "train", "train", {"0_negative": 40, "1_metastatic": 20})
    test = pcam_subset(root / "test", "valid", {"0_negative": 20, "1_metastatic": 10})
    train_tile_classifier(encoder, record, train, root / "clf")
    spec = ProxySpec(bags_per_class=6, bag_size=(8, 12), positive_fraction=(0.2, 0.4))
    run_proxy(encoder, "cls", train, test, root / "proxy", spec, record=record,
              mil_overrides={"epochs": 3, "tile_mpp": 4.0, "tile_size": 32, "tile_classifier": str(root / "clf")})
    return root / "proxy" / "mil"


def test_diagnose_writes_prediction_heatmaps_and_report(model_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "diag"
    assert main(["diagnose", str(SLIDE), "--model", str(model_dir), "--out", str(out), "--workers", "0",
                 "--device", "cpu"]) == 0
    assert "predicted" in capsys.readouterr().out
    r = json.loads((out / "diagnosis.json").read_text())
    mil = load_mil_model(model_dir)
    slide_dir = out / SLIDE.stem
    tiles = read_coords_h5(slide_dir / "coords.h5")
    assert tiles.grid.mpp == 4.0 and tiles.grid.tile_size == 32 and r["num_tiles"] == len(tiles) > 10
    bag = load_bag(slide_dir / f"features_{mil.features['tag']}.h5")
    probs, attention = predict_bag(mil.model, bag.features)
    assert r["probabilities"] == pytest.approx(dict(zip(mil.classes, probs.tolist())), abs=1e-6)
    assert abs(sum(r["probabilities"].values()) - 1) < 1e-6 and r["predicted"] == mil.classes[int(probs.argmax())]
    with open(out / "attention.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(int(a["x"]), int(a["y"])) for a in rows] == [tuple(c) for c in tiles.coords.tolist()]
    np.testing.assert_allclose([float(a["attention"]) for a in rows], attention, rtol=1e-4)
    assert r["top_tiles"][0]["attention"] == pytest.approx(float(attention.max()), rel=1e-5)
    for f in ("attention.png", "attention.geojson", "heatmap_tile_classifier.png", "heatmap_tile_classifier.csv",
              "heatmap_tile_classifier.geojson", "report.md"):
        assert (out / f).is_file(), f
    report = (out / "report.md").read_text()
    assert f"**Predicted: {r['predicted']}**" in report and "attention.png" in report
    assert "heatmap_tile_classifier.png" in report and mil.features["checkpoint"] in report
    stamps = {p: p.stat().st_mtime_ns for p in (slide_dir / "coords.h5", bag.path)}
    thumbnails, bag_loads = [], []
    monkeypatch.setattr(OpenSlideReader, "thumbnail", _counting(OpenSlideReader.thumbnail, thumbnails))
    monkeypatch.setattr(bags, "load_bag", _counting(bags.load_bag, bag_loads))
    for module in (diagnose_module, heatmap_module):  # imported by name there
        monkeypatch.setattr(module, "load_bag", bags.load_bag, raising=False)
    again = diagnose(DiagnoseOptions(str(SLIDE), str(model_dir), str(out), num_workers=0, device="cpu"),
                     progress=False)
    assert again["probabilities"] == r["probabilities"]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items()), "a re-run redid finished work"
    assert len(thumbnails) == 1 and len(bag_loads) == 1  # both heatmaps drawn from one read of each


def _counting(fn, calls: list):
    def wrapper(*args, **kwargs):
        calls.append(args)
        return fn(*args, **kwargs)
    return wrapper


def test_diagnose_refuses_a_changed_or_missing_encoder_and_unusable_models(model_dir, tmp_path, capsys):
    model = shutil.copytree(model_dir, tmp_path / "model")
    cfg = json.loads((model / "config.json").read_text())
    ckpt = Path(cfg["features"]["checkpoint"])
    moved = tmp_path / "moved.pth"
    state = torch.load(ckpt, weights_only=True)
    torch.save({k: v * 1.01 for k, v in state.items()}, moved)
    cfg["features"]["checkpoint"] = str(moved)
    (model / "config.json").write_text(json.dumps(cfg))
    assert main(["diagnose", str(SLIDE), "--model", str(model), "--out", str(tmp_path / "o")]) == 2
    assert "has changed since the model was trained" in capsys.readouterr().err
    moved.unlink()
    assert main(["diagnose", str(SLIDE), "--model", str(model), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    cfg["features"] = {}
    (model / "config.json").write_text(json.dumps(cfg))
    assert main(["diagnose", str(SLIDE), "--model", str(model), "--out", str(tmp_path / "o")]) == 2
    assert "records no encoder" in capsys.readouterr().err
    assert main(["diagnose", str(tmp_path / "nope.svs"), "--model", str(model_dir)]) == 2
    assert "slide not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_mil_train_refuses_a_tile_classifier_of_other_features(model_dir, tmp_path):
    bags = model_dir.parent / "train_bags"
    clf = model_dir.parent.parent / "clf"

    def train_with(classifier: Path):
        return train_mil(MILTrainOptions(features=str(bags), labels=str(bags / "labels.csv"), out=str(tmp_path / "m"),
                                         epochs=1, device="cpu", tile_classifier=str(classifier), overwrite=True),
                         progress=False)

    assert train_with(clf).config["tile_classifier"] == "tile_classifier"  # the matching one is taken
    for key, value, message in (("weights_id", "0" * 64, "was fitted on features of"),
                                ("pool", "mean", "pool: features 'cls' vs model 'mean'"),
                                ("img_size", 64, "img_size: features 32 vs model 64")):
        other = tmp_path / f"clf_{key}"
        shutil.copytree(clf, other)
        meta = json.loads((other / "classifier.json").read_text())
        meta["features"][key] = value
        (other / "classifier.json").write_text(json.dumps(meta))
        with pytest.raises(ValueError, match=message):
            train_with(other)
