"""ABMIL: the gated attention against a hand computation, order invariance, training and prediction on bags,
generic bag formats and clear errors (the PCam proxy experiment: tests/experiments/test_mil_proxy.py)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from gcmae.cli import main
from gcmae.io.arrays import ArrayFileError
from gcmae.slide import bag_store, mil_train
from gcmae.slide.bags import find_bags, load_bag, read_labels_csv
from gcmae.slide.mil import ABMILConfig, GatedABMIL, load_mil_model, predict_bag, predict_slides
from gcmae.slide.mil_train import MILTrainOptions, train_mil
from tests.slide.slide_helpers import MPP, TILE

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def _reference(model: GatedABMIL, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ilse et al. (2018), eq. 9, written out in NumPy from the module's weights."""
    p = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    h = np.maximum(x @ p["embed.0.weight"].T + p["embed.0.bias"], 0.0)
    tanh = np.tanh(h @ p["attention_v.weight"].T + p["attention_v.bias"])
    sig = 1.0 / (1.0 + np.exp(-(h @ p["attention_u.weight"].T + p["attention_u.bias"])))
    e = (tanh * sig) @ p["attention_w.weight"][0] + p["attention_w.bias"][0]
    a = np.exp(e - e.max())
    a /= a.sum()
    z = (a[:, None] * h).sum(0)
    return z @ p["classifier.weight"].T + p["classifier.bias"], a


def test_gated_attention_matches_a_hand_computation_and_ignores_tile_order():
    torch.manual_seed(0)
    model = GatedABMIL(ABMILConfig(in_dim=6, num_classes=3, hidden_dim=5, attn_dim=4, dropout=0.0)).eval()
    x = np.random.default_rng(0).normal(size=(7, 6))
    logits, attention = model(torch.from_numpy(x).float())
    ref_logits, ref_attention = _reference(model, x)
    np.testing.assert_allclose(logits.detach().numpy(), ref_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(attention.detach().numpy(), ref_attention, rtol=1e-5, atol=1e-7)
    assert abs(float(attention.detach().sum()) - 1.0) < 1e-6 and len(set(np.round(ref_attention, 6))) > 1
    perm = np.random.default_rng(1).permutation(7)
    probs, att = predict_bag(model, x)
    probs_p, att_p = predict_bag(model, x[perm])
    np.testing.assert_allclose(probs_p, probs, rtol=1e-5)
    np.testing.assert_allclose(att_p, att[perm], rtol=1e-5)
    with pytest.raises(ValueError, match=r"\(tiles >= 1, 6\)"):
        model(torch.zeros(3, 5))


def _bags(root: Path, n_per_class: int = 6, dim: int = 8, seed: int = 0) -> Path:
    """Separable toy bags in three generic formats; labels.csv with class names."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    rows = [("slide_id", "label")]
    for i in range(2 * n_per_class):
        label = i % 2
        x = rng.normal(size=(int(rng.integers(5, 12)), dim)).astype(np.float32)
        if label:
            x[:2, 0] += 4.0  # a couple of "positive tiles"
        sid = f"s{i:02d}"
        if i % 3 == 0:
            torch.save({"features": torch.from_numpy(x), "coords": torch.arange(2 * len(x)).view(-1, 2)},
                       root / f"{sid}.pt")
        elif i % 3 == 1:
            np.savez(root / f"{sid}.npz", features=x)
        else:
            with h5py.File(root / f"{sid}.h5", "w") as h5:
                h5["features"] = x
        rows.append((sid, "tumour" if label else "normal"))
    with open(root / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root


def test_mil_train_and_predict_commands_on_generic_bags(tmp_path, capsys):
    bags = _bags(tmp_path / "bags")
    out = tmp_path / "mil"
    train = ["mil", "train", "--features", str(bags), "--labels", str(bags / "labels.csv"), "--out", str(out),
             "--epochs", "15", "--val-fraction", "0.34", "--lr", "1e-3", "--device", "cpu"]
    assert main(train) == 0
    assert "validation AUC" in capsys.readouterr().out
    for f in ("config.json", "model.safetensors", "history.csv", "report.md"):
        assert (out / f).is_file(), f
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["classes"] == ["normal", "tumour"] and cfg["model"]["in_dim"] == 8 and cfg["features"] == {}
    stamp = (out / "config.json").stat().st_mtime_ns
    assert main(train) == 0 and (out / "config.json").stat().st_mtime_ns == stamp  # finished: not retrained
    assert main([*train[:-2], "--seed", "1", "--device", "cpu"]) == 2
    assert "other settings" in capsys.readouterr().err
    pred = tmp_path / "pred"
    assert main(["mil", "predict", "--model", str(out), "--features", str(bags), "--out", str(pred),
                 "--labels", str(bags / "labels.csv"), "--device", "cpu"]) == 0
    with open(pred / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["slide_id"] for r in rows] == [f"s{i:02d}" for i in range(12)]
    mil = load_mil_model(out)
    for r in rows:
        probs, att = predict_bag(mil.model, load_bag(find_bags(bags)[r["slide_id"]]).features)
        assert abs(float(r["prob_tumour"]) - probs[1]) < 1e-5 and r["predicted"] == mil.classes[int(probs.argmax())]
        with open(pred / "attention" / f"{r['slide_id']}.csv", newline="") as fh:
            att_rows = list(csv.DictReader(fh))
        np.testing.assert_allclose([float(a["attention"]) for a in att_rows], att, rtol=1e-4)
    assert att_rows[0]["x"] == "" or att_rows[0]["x"].isdigit()
    metrics = json.loads((pred / "metrics.json").read_text())["results"]["abmil"]
    assert metrics["num_samples"] == 12 and metrics["auc"] > 0.8  # separable toy bags


def test_predictions_csv_quotes_slide_ids_with_commas(tmp_path):
    bags = _bags(tmp_path / "bags")
    train_mil(MILTrainOptions(features=str(bags), labels=str(bags / "labels.csv"), out=str(tmp_path / "m"),
                              epochs=2, val_fraction=0.34, device="cpu"), progress=False)
    odd = 'case 7, block "B"'
    (bags / "s00.pt").rename(bags / f"{odd}.pt")
    assert main(["mil", "predict", "--model", str(tmp_path / "m"), "--features", str(bags),
                 "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    with open(tmp_path / "pred" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 and odd in [r["slide_id"] for r in rows]
    assert all(set(r) == {"slide_id", "prob_normal", "prob_tumour", "predicted"} and None not in r.values()
               for r in rows)


def test_train_mil_returns_what_load_mil_model_reads_back(tmp_path):
    bags = _bags(tmp_path / "bags")
    trained = train_mil(MILTrainOptions(features=str(bags), labels=str(bags / "labels.csv"), out=str(tmp_path / "m"),
                                        epochs=3, val_fraction=0.34, device="cpu"), progress=False)
    loaded = load_mil_model(tmp_path / "m")
    assert trained.config == loaded.config and trained.root == loaded.root
    assert trained.model.cfg == loaded.model.cfg and not trained.model.training
    state, ref = trained.model.state_dict(), loaded.model.state_dict()
    assert state.keys() == ref.keys()
    for k, v in ref.items():
        assert state[k].device.type == "cpu" and torch.equal(state[k], v), k


@pytest.mark.parametrize("budget_bags", [0, 5])
def test_bags_beyond_the_preload_budget_are_streamed_and_train_the_same_model(tmp_path, monkeypatch, budget_bags):
    bags = _bags(tmp_path / "bags", dim=16)
    sizes = [load_bag(p).features.nbytes for _, p in sorted(find_bags(bags).items())]
    budget_gb = sum(sizes[:budget_bags]) / 1e9  # exactly the first `budget_bags` bags fit
    reads: list[str] = []
    real_load_bag = mil_train.load_bag

    def counting_load_bag(path, slide_id=None):
        reads.append(slide_id)
        return real_load_bag(path, slide_id=slide_id)

    def run(name: str, max_preload_gb: float):
        opts = MILTrainOptions(features=str(bags), labels=str(bags / "labels.csv"), out=str(tmp_path / name),
                               epochs=4, val_fraction=0.34, device="cpu", max_preload_gb=max_preload_gb)
        return train_mil(opts, progress=False)

    held = run("held", 1.0)
    for module in (mil_train, bag_store):  # the first pass, then the streamed reads
        monkeypatch.setattr(module, "load_bag", counting_load_bag)
    streamed = run("streamed", budget_gb)
    epochs = streamed.config["epochs_run"]
    # each bag read once to check it; then a streamed bag at every training step and evaluation
    streamed_ids = {f"s{i:02d}" for i in range(budget_bags, 12)}
    assert set(reads) == {f"s{i:02d}" for i in range(12)}
    assert {sid for sid in reads if reads.count(sid) > 1} == streamed_ids
    assert len(reads) == 12 + len(streamed_ids) * (epochs + 1)  # + 1: final metrics of the best weights
    for key, ref in held.model.state_dict().items():
        assert torch.equal(streamed.model.state_dict()[key], ref), key
    assert streamed.config["metrics"] == held.config["metrics"]
    assert (tmp_path / "streamed" / "history.csv").read_text() == (tmp_path / "held" / "history.csv").read_text()
    assert "max_preload_gb" not in streamed.config["settings"]  # the budget does not change the model


def test_a_streamed_bag_that_goes_bad_mid_training_stops_it_unfinished_and_a_rerun_completes(tmp_path, monkeypatch):
    bags = _bags(tmp_path / "bags")
    opts = MILTrainOptions(features=str(bags), labels=str(bags / "labels.csv"), out=str(tmp_path / "m"),
                           epochs=3, val_fraction=0.34, device="cpu", max_preload_gb=0)
    good = (bags / "s01.npz").read_bytes()
    real_load_bag = bag_store.load_bag

    def corrupt_after_the_first_pass(path, slide_id=None):  # the first streamed read finds the file damaged
        (bags / "s01.npz").write_bytes(b"not a zip archive")
        return real_load_bag(path, slide_id=slide_id)

    monkeypatch.setattr(bag_store, "load_bag", corrupt_after_the_first_pass)
    with pytest.raises(ArrayFileError, match="s01.npz"):
        train_mil(opts, progress=False)
    assert not (tmp_path / "m" / "config.json").exists()  # never looks finished
    monkeypatch.undo()
    (bags / "s01.npz").write_bytes(good)
    assert train_mil(opts, progress=False).config["epochs_run"] >= 1
    assert (tmp_path / "m" / "config.json").is_file()


def test_clear_errors_for_bad_labels_bags_and_models(tmp_path):
    bags = _bags(tmp_path / "bags")
    labels = tmp_path / "labels.csv"
    labels.write_text("slide,y\ns00,a\n")
    with pytest.raises(ValueError, match="slide_id,label"):
        read_labels_csv(labels)
    labels.write_text("slide_id,label\ns00,normal\ns00,tumour\n")
    with pytest.raises(ValueError, match="line 3.*twice"):
        read_labels_csv(labels)
    labels.write_bytes("\ufeffslide_id,label\ns00,normal\ns01,tumour\n".encode())  # Excel's "CSV UTF-8" (a BOM)
    assert read_labels_csv(labels) == {"s00": "normal", "s01": "tumour"}  # issue 11 item 11: was refused
    labels.write_text("slide_id,label\ns00,normal\nghost,tumour\n")
    opts = MILTrainOptions(features=str(bags), labels=str(labels), out=str(tmp_path / "m"), device="cpu")
    with pytest.raises(FileNotFoundError, match="ghost"):
        train_mil(opts, progress=False)
    labels.write_text("slide_id,label\ns00,normal\ns01,tumour\ns02,normal\n")
    with pytest.raises(ValueError, match=r">= 2 slides per class; too few: tumour \(1\)"):
        train_mil(MILTrainOptions(features=str(bags), labels=str(labels), out=str(tmp_path / "m"), device="cpu"),
                  progress=False)
    # issue 11 item 6: single-class labels used to train and report AUC NaN with exit 0
    labels.write_text("slide_id,label\ns00,normal\ns01,normal\ns02,normal\ns03,normal\n")
    for val_fraction in (0.0, 0.25):
        with pytest.raises(ValueError, match="all 4 slide.*label 'normal'.*at least two classes"):
            train_mil(MILTrainOptions(features=str(bags), labels=str(labels), out=str(tmp_path / "m1"),
                                      val_fraction=val_fraction, device="cpu"), progress=False)
    assert not (tmp_path / "m1").exists()
    mil_dir = tmp_path / "m2"
    train_mil(MILTrainOptions(features=str(bags), labels=str(bags / "labels.csv"), out=str(mil_dir), epochs=1,
                              val_fraction=0, device="cpu"), progress=False)
    other = _bags(tmp_path / "wide", dim=5)
    with pytest.raises(ValueError, match="5-d features.*takes 8-d"):
        predict_slides(mil_dir, other, tmp_path / "p", device="cpu")
    (other / "s00.pt").write_bytes(b"junk")
    with pytest.raises(ArrayFileError, match="s00.pt"):
        load_bag(other / "s00.pt")
    np.savez(other / "s01.npz", features=np.full((3, 5), np.nan, dtype=np.float32))
    with pytest.raises(ArrayFileError, match="NaN"):
        load_bag(other / "s01.npz")
    with pytest.raises(FileNotFoundError, match="not a finished MIL model"):
        load_mil_model(tmp_path)


def test_mil_on_a_job_of_extracted_slides_records_the_encoder_and_draws_attention(extracted_job, tmp_path, capsys):
    job, record = extracted_job
    labels = tmp_path / "labels.csv"
    labels.write_text("slide_id,label\ncmu-1-small-region,normal\ntcga-cr-7395-01a-01-ts1,tumour\n")
    out = tmp_path / "mil"
    assert main(["mil", "train", "--features", str(job), "--labels", str(labels), "--out", str(out), "--epochs", "2",
                 "--val-fraction", "0", "--device", "cpu"]) == 0
    assert "train AUC" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert {k: cfg["features"][k] for k in ("weights_id", "tag", "pool", "img_size", "checkpoint")} == \
        {k: record[k] for k in ("weights_id", "tag", "pool", "img_size", "checkpoint")}
    assert (cfg["tiles"]["tile_mpp"], cfg["tiles"]["tile_size"]) == (MPP, TILE)
    assert main(["mil", "predict", "--model", str(out), "--features", str(job), "--out", str(tmp_path / "p"),
                 "--device", "cpu"]) == 0
    for name in ("cmu-1-small-region", "tcga-cr-7395-01a-01-ts1"):
        assert (tmp_path / "p" / "attention" / f"{name}.png").is_file()
    with pytest.raises(ValueError, match="tile-mpp 2.0 contradicts"):
        train_mil(MILTrainOptions(features=str(job), labels=str(labels), out=str(tmp_path / "m2"), tile_mpp=2.0,
                                  val_fraction=0, device="cpu"), progress=False)
