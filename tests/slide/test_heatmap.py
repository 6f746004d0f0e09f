"""Tile classifier (saved without pickle) and `gcmae heatmap` on the real sample slides."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from gcmae.cli import main
from gcmae.encoders.cache import folder_features
from gcmae.encoders.loading import load_encoder
from gcmae.scoring.probe import fit_logistic_probe
from gcmae.slide.bags import load_bag
from gcmae.slide.features import encoder_record
from gcmae.slide.heatmap import run_heatmap
from gcmae.slide.tile_classifier import load_tile_classifier, train_tile_classifier
from gcmae.viz.tile_scores import tile_layer
from tests.conftest import pcam_subset
from tests.slide.slide_helpers import copy_job

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]
SLIDE_NAMES = ["cmu-1-small-region", "tcga-cr-7395-01a-01-ts1"]


@pytest.fixture(scope="module")
def pcam_small(tmp_path_factory):
    root = tmp_path_factory.mktemp("pcam")
    return (pcam_subset(root / "train", "train", {"0_negative": 30, "1_metastatic": 30}),
            pcam_subset(root / "val", "valid", {"0_negative": 10, "1_metastatic": 10}))


def test_saved_classifier_gives_the_probabilities_of_the_sklearn_probe(pcam_small, tiny_ckpt, tmp_path):
    encoder = load_encoder(tiny_ckpt)
    record = encoder_record(encoder, tiny_ckpt, "cls")
    clf = train_tile_classifier(encoder, record, pcam_small[0], tmp_path / "clf", val_dir=pcam_small[1])
    loaded = load_tile_classifier(tmp_path / "clf")
    assert loaded.classes == ["0_negative", "1_metastatic"] and loaded.positive == 1
    assert sorted(p.name for p in (tmp_path / "clf").iterdir()) == ["classifier.json", "classifier.npz"]
    val, train = folder_features(encoder, pcam_small[1], "cls"), folder_features(encoder, pcam_small[0], "cls")
    pipe, _ = fit_logistic_probe(train.features, train.labels)
    np.testing.assert_allclose(loaded.predict_proba(val.features.numpy()),
                               pipe.predict_proba(val.features.numpy().astype(np.float64)), rtol=1e-9, atol=1e-12)
    meta = json.loads((tmp_path / "clf" / "classifier.json").read_text())
    assert meta["features"]["weights_id"] == record["weights_id"] and meta["val"]["num_samples"] == 20
    assert clf.meta["train_accuracy"] == meta["train_accuracy"]


def test_tile_layer_paints_each_tile_with_its_colour_and_leaves_the_rest_transparent():
    coords = np.array([[0, 0], [200, 100]])
    layer = tile_layer((60, 80), coords, 100, np.array([0.0, 1.0]), (5.0, 5.0), cmap="viridis", alpha=0.4)
    cmap = colormaps["viridis"]
    np.testing.assert_allclose(layer[0:20, 0:20], np.broadcast_to([*cmap(0.0)[:3], 0.4], (20, 20, 4)), atol=1e-6)
    np.testing.assert_allclose(layer[20:40, 40:60], np.broadcast_to([*cmap(1.0)[:3], 0.4], (20, 20, 4)), atol=1e-6)
    painted = np.zeros((60, 80), bool)
    painted[0:20, 0:20] = painted[20:40, 40:60] = True
    assert (layer[~painted] == 0).all()


def test_heatmap_command_scores_every_tile_and_draws_it(extracted_job, pcam_small, tiny_ckpt, tmp_path, capsys):
    src, record = extracted_job
    job = copy_job(src, tmp_path / "job")
    clf_dir = tmp_path / "tumour_probe"
    assert main(["tile-classifier", "train", "--train-dir", str(pcam_small[0]), "--checkpoint", str(tiny_ckpt),
                 "--out", str(clf_dir), "--cache-dir", ""]) == 0
    assert "positive 1_metastatic" in capsys.readouterr().out
    assert main(["heatmap", str(job), "--classifier", str(clf_dir)]) == 0
    clf = load_tile_classifier(clf_dir)
    for name in SLIDE_NAMES:
        bag = load_bag(job / name / f"features_{record['tag']}.h5")
        with open(job / name / "heatmap_tumour_probe.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [(int(r["x"]), int(r["y"])) for r in rows] == [tuple(c) for c in bag.coords.tolist()]
        x = (bag.features.astype(np.float64) - clf.scaler_mean) / clf.scaler_scale
        expected = 1.0 / (1.0 + np.exp(-(x @ clf.coef[0] + clf.intercept[0])))  # logistic of the decision value
        np.testing.assert_allclose([float(r["prob"]) for r in rows], expected, rtol=1e-5)
        tiles = json.loads((job / name / "heatmap_tumour_probe.geojson").read_text())["features"]
        e = int(bag.attrs["extent"])
        assert [t["geometry"]["coordinates"][0][0] for t in tiles] == bag.coords.tolist()
        assert all(t["geometry"]["coordinates"][0][2] == [x + e, y + e] for t, (x, y) in zip(tiles, bag.coords.tolist()))
        np.testing.assert_allclose([t["properties"]["measurements"]["prob"] for t in tiles], expected, rtol=1e-5)
        with Image.open(job / name / "heatmap_tumour_probe.png") as im:
            assert im.size[0] > 300 and im.size[1] > 200
    (result,) = run_heatmap(job, clf_dir, slides=[SLIDE_NAMES[1]])
    assert result.num_tiles == len(rows) and abs(result.mean_prob - expected.mean()) < 1e-6


def test_features_that_do_not_fit_the_classifier_are_refused(extracted_job, pcam_small, tiny_ckpt, tmp_path,
                                                             capsys):
    src, record = extracted_job
    job = copy_job(src, tmp_path / "job")
    encoder = load_encoder(tiny_ckpt)
    mean_clf = tmp_path / "mean_clf"
    train_tile_classifier(encoder, encoder_record(encoder, tiny_ckpt, "mean"), pcam_small[0], mean_clf)
    assert main(["heatmap", str(job), "--classifier", str(mean_clf), "--slide", SLIDE_NAMES[0]]) == 2
    err = capsys.readouterr().err
    assert "pool mean" in err and f"features_{record['tag']}.h5" in err and "gcmae extract" in err
    assert main(["heatmap", str(job), "--classifier", str(mean_clf), "--tag", record["tag"]]) == 2
    err = capsys.readouterr().err
    assert "pool: features 'cls' vs model 'mean'" in err and record["tag"] in err
    other = tmp_path / "other.pth"  # the same architecture, other weights: another digest
    state = torch.load(tiny_ckpt, weights_only=True)
    torch.save({k: v + 0.01 for k, v in state.items()}, other)
    other_enc = load_encoder(other)
    shutil.rmtree(mean_clf)
    train_tile_classifier(other_enc, encoder_record(other_enc, other, "cls"), pcam_small[0], mean_clf)
    assert main(["heatmap", str(job), "--classifier", str(mean_clf), "--tag", record["tag"]]) == 2
    assert "weights_id" in capsys.readouterr().err
    assert main(["heatmap", str(job), "--classifier", str(tmp_path)]) == 2
    assert "not a tile classifier folder" in capsys.readouterr().err


def test_stain_normalised_extract_and_classifier_agree_and_a_different_normalisation_is_refused(
        extracted_job, pcam_small, tiny_ckpt, tmp_path, capsys):
    src, record = extracted_job  # features without stain normalisation
    job = copy_job(src, tmp_path / "job")
    clf_dir = tmp_path / "macenko_probe"
    assert main(["tile-classifier", "train", "--train-dir", str(pcam_small[0]), "--checkpoint", str(tiny_ckpt),
                 "--out", str(clf_dir), "--cache-dir", "", "--stain-norm", "macenko"]) == 0
    meta = load_tile_classifier(clf_dir).meta
    stain_id = meta["features"]["stain_id"]
    assert stain_id.startswith("macenko-") and meta["features"]["stain"]["target_name"].startswith("crc-norm")
    assert list(meta["stain_failed"]) == ["train"] and 0 <= meta["stain_failed"]["train"] < 60  # fatty patches
    assert meta["features"]["tag"].endswith(stain_id)
    capsys.readouterr()
    # the unnormalised features are refused, naming both normalisations
    assert main(["heatmap", str(job), "--classifier", str(clf_dir), "--tag", record["tag"]]) == 2
    err = capsys.readouterr().err
    assert "stain normalisation 'none'" in err and repr(stain_id) in err and "refused" in err
    # extracting with the same normalisation makes features the classifier takes, with the normaliser recorded
    assert main(["extract", str(job), "--checkpoint", str(tiny_ckpt), "--workers", "0", "--device", "cpu",
                 "--stain-norm", "macenko"]) == 0
    out = capsys.readouterr().out
    assert "passed through without stain normalisation" in out
    bag = load_bag(job / SLIDE_NAMES[0] / f"features_{meta['features']['tag']}.h5")
    assert bag.attrs["stain_id"] == stain_id and json.loads(bag.attrs["stain"])["id"] == stain_id
    assert 0 <= bag.attrs["stain_failed_tiles"] <= len(bag.features)
    plain = load_bag(job / SLIDE_NAMES[0] / f"features_{record['tag']}.h5")
    assert not np.allclose(plain.features, bag.features)  # the normalisation changed the features
    assert main(["heatmap", str(job), "--classifier", str(clf_dir)]) == 0
    # and a classifier without normalisation refuses the normalised features
    assert main(["heatmap", str(job), "--classifier", str(clf_dir), "--tag", record["tag"]]) == 2
    assert main(["tile-classifier", "train", "--train-dir", str(pcam_small[0]), "--checkpoint", str(tiny_ckpt),
                 "--out", str(tmp_path / "plain"), "--cache-dir", "", "--stain-norm", "reinhard"]) == 0
    capsys.readouterr()
    assert main(["heatmap", str(job), "--classifier", str(tmp_path / "plain"), "--tag",
                 meta["features"]["tag"]]) == 2
    assert f"made with stain normalisation {stain_id!r}" in capsys.readouterr().err
