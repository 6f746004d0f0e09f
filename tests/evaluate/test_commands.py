"""`gcmae knn / linprobe / visualize` end to end on real PCam patches, and their errors (exit code 2)."""
import csv
import json
import shutil

import numpy as np
import torch
import pytest

from gcmae.cli import build_parser, main
from gcmae.evaluate.options import KNNOptions, LinprobeOptions, resolve_options
from tests.conftest import save_state

pytestmark = pytest.mark.slow  # real pretraining, slides or subprocesses: skipped by `make test-fast`

RANDOM = ["--checkpoint", "random", "--encoder", "vit_tiny", "--img-size", "32", "--patch-size", "8"]


def folders(pcam_pair, tmp_path):
    train, val = pcam_pair
    return ["--train", str(train), "--val", str(val), "--cache-dir", str(tmp_path / "cache")]


def test_knn_with_a_trained_checkpoint(pcam_pair, trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "knn"
    assert main(["knn", "--checkpoint", str(trained_checkpoint), *folders(pcam_pair, tmp_path), "--out", str(out),
                 "--k", "5", "200"]) == 0
    printed = capsys.readouterr().out
    assert "knn_k5" in printed and "nn1" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    results = metrics["results"]
    assert list(results) == ["knn_k5", "knn_k200", "nn1"]
    assert [results[m]["k"] for m in results] == [5, 24, 1]  # k capped at the 24 reference images
    assert metrics["num_train"] == 24 and metrics["num_val"] == 16 and "gcmae checkpoint" in metrics["weights"]

    # independent check from the cached features: plain numpy weighted 5-NN of val against train
    caches = metrics["feature_cache"]
    ref, query = np.load(caches["train"]), np.load(caches["val"])
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    sim = norm(query["features"]) @ norm(ref["features"]).T
    top = np.argsort(-sim, axis=1)[:, :5]
    votes = np.zeros((len(sim), 2))
    for i, row in enumerate(top):
        for j in row:
            votes[i, ref["labels"][j]] += np.exp(sim[i, j] / 0.07)
    assert results["knn_k5"]["accuracy"] == pytest.approx((votes.argmax(1) == query["labels"]).mean())
    # one row per val image: its file, true label, prediction and the normalised votes
    with open(out / "predictions_knn_k5.csv", newline="") as fh:
        pred = list(csv.DictReader(fh))
    classes = metrics["results"]["knn_k5"]["classes"]
    assert [r["label"] for r in pred] == [classes[y] for y in query["labels"]]
    assert [r["predicted"] for r in pred] == [classes[i] for i in votes.argmax(1)]
    np.testing.assert_allclose([float(r[f"prob_{classes[1]}"]) for r in pred], votes[:, 1] / votes.sum(1), rtol=1e-4)
    assert len(pred) == 16 and pred[0]["file"].endswith(".jpg") and (out / "predictions_nn1.csv").is_file()

    rows = list(csv.reader((out / "confusion_knn_k5.csv").read_text().splitlines()))
    assert [[int(v) for v in r[1:]] for r in rows[1:]] == results["knn_k5"]["confusion_matrix"]
    report = (out / "report.md").read_text()
    assert "| knn_k5 |" in report and "| nn1 |" in report
    # issue 11 item 11: options left to the checkpoint were reported as `None`
    assert "`None`" not in report and "- **encoder**: `vit_tiny`" in report and "- **img_size**: `32`" in report
    assert metrics["settings"]["patch_size"] == 8 and metrics["encoder_used"]["encoder"] == "vit_tiny"
    for name in ("knn_k5", "knn_k200", "nn1"):
        assert f"(confusion_{name}.png)" in report and (out / f"confusion_{name}.png").stat().st_size > 0


def test_linprobe_fast_protocol(pcam_pair, tmp_path, capsys):
    out = tmp_path / "lin"
    assert main(["linprobe", *RANDOM, *folders(pcam_pair, tmp_path), "--out", str(out)]) == 0
    assert "logreg" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    m = metrics["results"]["logreg"]
    assert m["num_samples"] == 16 and sum(map(sum, m["confusion_matrix"])) == 16
    assert 0.0 <= m["accuracy"] <= 1.0 and m["train_accuracy"] >= m["accuracy"] - 0.5
    assert "epochs" not in metrics["settings"] and metrics["settings"]["logreg_c"] == 1.0
    assert "| logreg |" in (out / "report.md").read_text() and (out / "confusion_logreg.png").is_file()
    with open(out / "predictions.csv", newline="") as fh:
        pred = list(csv.DictReader(fh))
    assert len(pred) == 16 and all(abs(sum(float(v) for k, v in r.items() if k.startswith("prob_")) - 1) < 1e-4
                                   for r in pred)
    correct = sum(r["predicted"] == r["label"] for r in pred)
    assert correct / 16 == pytest.approx(m["accuracy"])


def test_linprobe_paper_protocol_two_epochs(pcam_pair, tmp_path):
    out = tmp_path / "paper"
    assert main(["linprobe", *RANDOM, *folders(pcam_pair, tmp_path), "--out", str(out), "--protocol", "paper",
                 "--epochs", "2", "--warmup-epochs", "1", "--probe-batch-size", "8"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["peak_lr"] == pytest.approx(0.1 * 8 / 256) and metrics["batch_size"] == 8
    history = metrics["history"]
    assert [h["epoch"] for h in history] == [1, 2] and all(np.isfinite(h["loss"]) for h in history)
    assert metrics["history"][0]["lr"] == pytest.approx(0.1 * 8 / 256 * 2 / 3)  # last step of warm-up epoch 1
    m = metrics["results"]["linear_probe_paper"]
    assert m["num_samples"] == 16 and (out / "confusion_linear_probe_paper.png").is_file()


def test_visualize_everything(pcam_pair, trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "viz"
    assert main(["visualize", "--checkpoint", str(trained_checkpoint), "--data", str(pcam_pair[1]), "--out",
                 str(out), "--what", "tsne,attention,reconstruction", "--num-images", "3",
                 "--cache-dir", ""]) == 0
    report = (out / "report.md").read_text()
    for png in ("tsne.png", "attention.png", "reconstructions.png"):
        assert (out / png).stat().st_size > 1000 and f"({png})" in report


def test_tsne_and_umap_share_one_feature_pass(pcam_pair, trained_checkpoint, tmp_path, monkeypatch):
    import gcmae.evaluate.visualize as visualize

    passes, drawn = [], {}
    real = visualize.folder_features
    monkeypatch.setattr(visualize, "folder_features", lambda *a, **kw: passes.append(1) or real(*a, **kw))
    monkeypatch.setattr(visualize, "plot_embedding",
                        lambda feats, labels, classes, path, title, seed, method: drawn.setdefault(method, feats))
    assert main(["visualize", "--checkpoint", str(trained_checkpoint), "--data", str(pcam_pair[1]), "--out",
                 str(tmp_path / "viz"), "--what", "tsne,umap", "--cache-dir", ""]) == 0
    assert len(passes) == 1 and list(drawn) == ["tsne", "umap"]
    np.testing.assert_array_equal(drawn["tsne"], drawn["umap"])


def test_attention_and_reconstructions_share_one_image_sample(pcam_pair, trained_checkpoint, tmp_path, monkeypatch):
    import gcmae.evaluate.visualize as visualize

    loads, drawn = [], {}
    real = visualize.sample_images
    monkeypatch.setattr(visualize, "sample_images", lambda *a, **kw: loads.append(1) or real(*a, **kw))
    monkeypatch.setattr(visualize, "plot_attention", lambda enc, imgs, *a: drawn.setdefault("attention", imgs))
    monkeypatch.setattr(visualize, "plot_reconstructions", lambda m, imgs, *a: drawn.setdefault("recon", imgs))
    assert main(["visualize", "--checkpoint", str(trained_checkpoint), "--data", str(pcam_pair[1]), "--out",
                 str(tmp_path / "viz"), "--what", "attention,reconstruction", "--num-images", "3"]) == 0
    assert len(loads) == 1 and set(drawn) == {"attention", "recon"} and len(drawn["attention"]) == 3
    assert torch.equal(drawn["attention"], drawn["recon"])


def test_visualize_shows_stain_normalised_images(pcam_pair, trained_checkpoint, tmp_path, monkeypatch):
    """--stain-norm: the attention and reconstruction figures get the images the encoder sees, normalised."""
    import gcmae.evaluate.visualize as visualize
    from gcmae.stain import make_normalizer

    drawn = {}
    monkeypatch.setattr(visualize, "plot_attention", lambda enc, imgs, out, *a: drawn.setdefault(out.parent.name, imgs))
    args = ["visualize", "--checkpoint", str(trained_checkpoint), "--data", str(pcam_pair[1]), "--what",
            "attention", "--num-images", "3"]
    assert main([*args, "--out", str(tmp_path / "raw")]) == 0
    assert main([*args, "--out", str(tmp_path / "norm"), "--stain-norm", "macenko"]) == 0
    raw, norm = drawn["raw"], drawn["norm"]
    assert raw.shape == norm.shape == (3, 3, 32, 32)
    # independently: undo the encoder's mean/std, Macenko-normalise the RGB images, redo it
    from gcmae.encoders.loading import load_encoder
    enc = load_encoder(str(trained_checkpoint))
    m, s = (torch.tensor(v).view(1, 3, 1, 1) for v in (enc.mean, enc.std))
    expected = (make_normalizer("macenko").normalize((raw * s + m).clamp(0, 1)).images - m) / s
    assert (norm - raw).abs().max() > 0.1
    torch.testing.assert_close(norm, expected, atol=1e-5, rtol=1e-5)
    assert "macenko-normalised" in (tmp_path / "norm" / "report.md").read_text()


def test_reconstruction_needs_a_decoder(pcam_pair, timm_checkpoint, tmp_path, capsys):
    assert main(["visualize", "--checkpoint", str(timm_checkpoint), "--data", str(pcam_pair[1]), "--out",
                 str(tmp_path / "v"), "--what", "reconstruction"]) == 2
    assert "no decoder weights" in capsys.readouterr().err


def make_bad_folders(tmp_path, pcam_pair):
    train, _ = pcam_pair
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "a" / "notes.txt").write_text("no images here")
    one_class = tmp_path / "one_class"
    shutil.copytree(train / "0_negative", one_class / "0_negative")
    three = shutil.copytree(train, tmp_path / "three_classes")
    shutil.copytree(train / "0_negative", three / "2_other")
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in sorted((train / "0_negative").glob("*.jpg"))[:2]:
        shutil.copy(f, flat / f.name)
    empty_class = shutil.copytree(train, tmp_path / "empty_class")
    (empty_class / "2_other").mkdir()  # issue 11 item 6: was dropped silently
    unreadable_class = shutil.copytree(train, tmp_path / "unreadable_class")
    (unreadable_class / "2_other").mkdir()
    (unreadable_class / "2_other" / "x.jpg").write_bytes(b"")
    return {"missing": tmp_path / "nope", "empty": empty, "one_class": one_class, "three": three, "flat": flat,
            "empty_class": empty_class, "unreadable_class": unreadable_class}


@pytest.mark.parametrize("case, message", [
    ("missing", "image folder not found"),
    ("empty", "no usable images"),
    ("one_class", "class sets differ"),
    ("three", "has 2 classes"),
    ("flat", "needs one sub-folder per class"),
    ("empty_class", "class folder(s) without a usable image: 2_other/ (no images)"),
    ("unreadable_class", "class folder(s) without a usable image: 2_other/ (only unreadable files)"),
])
@pytest.mark.parametrize("command", ["knn", "linprobe"])
def test_bad_val_folders(command, case, message, pcam_pair, tmp_path, capsys):
    bad = make_bad_folders(tmp_path, pcam_pair)[case]
    args = [command, *RANDOM, "--train", str(pcam_pair[0]), "--val", str(bad), "--out", str(tmp_path / "o")]
    if command == "linprobe":
        args += ["--protocol", "paper"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and str(bad) in err


def test_checkpoint_errors(pcam_pair, trained_checkpoint, tmp_path, capsys):
    base = ["knn", "--train", str(pcam_pair[0]), "--val", str(pcam_pair[1]), "--out", str(tmp_path / "o")]
    assert main([*base, "--checkpoint", str(trained_checkpoint), "--encoder", "vit_small"]) == 2
    assert "vit_tiny" in (err := capsys.readouterr().err) and "--encoder vit_small expects 384 wide" in err
    assert main([*base, "--checkpoint", str(trained_checkpoint), "--patch-size", "16"]) == 2
    assert "--patch-size 16" in capsys.readouterr().err
    assert main([*base, "--checkpoint", str(tmp_path / "missing.ckpt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main([*base, "--checkpoint", "random"]) == 2
    assert "needs --encoder" in capsys.readouterr().err
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    assert main([*base, "--checkpoint", str(garbage)]) == 2
    assert "garbage.ckpt" in capsys.readouterr().err


def test_missing_options_and_bad_config(tmp_path, capsys):
    assert main(["knn", "--checkpoint", "random", "--out", str(tmp_path)]) == 2
    assert "missing --train" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("temprature: 0.1\n")
    assert main(["knn", "--config", str(bad), *RANDOM, "--train", "a", "--val", "b", "--out", "c"]) == 2
    assert "temprature" in capsys.readouterr().err


def test_yaml_configs_and_flag_precedence():
    parser = build_parser()
    args = parser.parse_args(["knn", "--config", "configs/evaluate/knn.yaml", "--checkpoint", "random",
                              "--train", "t", "--val", "v", "--out", "o", "--temperature", "0.1"])
    opts = resolve_options(KNNOptions, args)
    assert opts.k == (20, 200) and opts.temperature == 0.1 and opts.pool == "cls"
    for config, protocol in (("linprobe.yaml", "fast"), ("linprobe_paper.yaml", "paper")):
        args = parser.parse_args(["linprobe", "--config", f"configs/evaluate/{config}", "--checkpoint", "c",
                                  "--train", "t", "--val", "v", "--out", "o"])
        opts = resolve_options(LinprobeOptions, args)
        assert opts.protocol == protocol and opts.base_lr == 0.1 and opts.epochs == 90


def test_knn_stain_norm_embeds_normalised_images_under_its_own_cache_key(pcam_pair, timm_state, tmp_path):
    ckpt = save_state(tmp_path / "vit.pth", timm_state)
    cache = tmp_path / "cache"
    runs = {}
    for norm in ("none", "macenko"):
        out = tmp_path / norm
        assert main(["knn", "--checkpoint", str(ckpt), "--train", str(pcam_pair[0]), "--val", str(pcam_pair[1]),
                     "--out", str(out), "--k", "5", "20", "--cache-dir", str(cache), "--stain-norm", norm]) == 0
        runs[norm] = json.loads((out / "metrics.json").read_text())
    assert runs["none"]["stain"] is None and runs["none"]["settings"]["stain_norm"] == "none"
    stain = runs["macenko"]["stain"]
    assert stain["method"] == "macenko" and set(stain["passed_through"]) == {"train", "val"}
    plain, normed = runs["none"]["feature_cache"]["train"], runs["macenko"]["feature_cache"]["train"]
    assert plain != normed and not np.allclose(np.load(plain)["features"], np.load(normed)["features"])
    # the paper protocol normalises each image before its augmentation, and records it
    assert main(["linprobe", "--checkpoint", str(ckpt), "--train", str(pcam_pair[0]), "--val", str(pcam_pair[1]),
                 "--out", str(tmp_path / "lp"), "--protocol", "paper", "--epochs", "1", "--stain-norm",
                 "macenko"]) == 0
    assert json.loads((tmp_path / "lp" / "metrics.json").read_text())["stain"]["method"] == "macenko"


def test_unreadable_val_image_is_named_in_metrics_and_report(pcam_pair, tmp_path):
    """Issue 11 item 5 at the command level: the truncated image is listed, and val counts one image fewer."""
    val = shutil.copytree(pcam_pair[1], tmp_path / "val")
    bad = sorted((val / "0_negative").glob("*.jpg"))[0]
    bad.write_bytes(bad.read_bytes()[:600])
    out = tmp_path / "knn"
    assert main(["knn", *RANDOM, "--train", str(pcam_pair[0]), "--val", str(val), "--out", str(out),
                 "--cache-dir", ""]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_val"] == 15 and metrics["results"]["nn1"]["num_samples"] == 15
    assert [e["file"] for e in metrics["excluded_images"]["val"]] == [f"0_negative/{bad.name}"]
    assert metrics["excluded_images"]["train"] == []
    assert f"0_negative/{bad.name}" in (out / "report.md").read_text()


def _loo_nn1_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    norm = features / np.linalg.norm(features, axis=1, keepdims=True)
    sim = norm @ norm.T
    np.fill_diagonal(sim, -np.inf)
    return float((labels[sim.argmax(1)] == labels).mean())


@pytest.mark.parametrize("how", ["same_path", "copy", "flag"])
def test_knn_on_the_same_images_is_leave_one_out(how, pcam_pair, tmp_path):
    """Issue 11 item 7: `knn --train X --val X` matched every image to itself (1-NN 1.000) without a word."""
    train = pcam_pair[0]
    val = {"same_path": ["--val", str(train) + "/"], "flag": ["--leave-one-out"],
           "copy": ["--val", str(shutil.copytree(train, tmp_path / "copy"))]}[how]
    out = tmp_path / "knn"
    assert main(["knn", *RANDOM, "--train", str(train), *val, "--out", str(out), "--cache-dir", str(tmp_path / "c"),
                 "--k", "5", "30"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    results = metrics["results"]
    assert metrics["leave_one_out"] and all(m["leave_one_out"] for m in results.values())
    assert metrics["num_val"] == 24 and results["nn1"]["num_samples"] == 24
    cached = np.load(metrics["feature_cache"]["train"])
    assert results["nn1"]["accuracy"] == pytest.approx(_loo_nn1_accuracy(cached["features"], cached["labels"]))
    assert results["nn1"]["accuracy"] < 1.0  # an image matched to itself gives 1.000
    assert (results["knn_k30"]["k"], results["knn_k30"]["k_asked"]) == (23, 30)  # capped at 24 - 1, recorded
    report = (out / "report.md").read_text()
    assert "leave-one-out" in report and "k 23 (asked 30)" in report


def test_leave_one_out_with_another_val_and_linprobe_on_its_training_set_are_refused(pcam_pair, tmp_path, capsys):
    train, val = pcam_pair
    assert main(["knn", *RANDOM, "--train", str(train), "--val", str(val), "--leave-one-out",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--leave-one-out" in capsys.readouterr().err
    assert main(["linprobe", *RANDOM, "--train", str(train), "--val", str(train), "--out", str(tmp_path / "o")]) == 2
    assert "scored on its own training images" in capsys.readouterr().err


def test_knn_takes_one_or_more_k(pcam_pair, tmp_path):
    """Issue 11 item 11: `--k 20` failed with 'expected 2 arguments'."""
    for ks, names in ((["7"], ["knn_k7", "nn1"]), (["3", "5", "7"], ["knn_k3", "knn_k5", "knn_k7", "nn1"])):
        out = tmp_path / "-".join(ks)
        assert main(["knn", *RANDOM, *folders(pcam_pair, tmp_path), "--out", str(out), "--k", *ks]) == 0
        assert list(json.loads((out / "metrics.json").read_text())["results"]) == names


def test_feature_cache_defaults_to_the_output_folder_not_the_current_one(pcam_pair, tmp_path, monkeypatch):
    """Issue 11 item 11: the cache landed in ./runs/feature-cache of whatever folder the command ran in."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "knn"
    assert main(["knn", *RANDOM, "--train", str(pcam_pair[0]), "--val", str(pcam_pair[1]), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["cache_dir"] == str(out / "feature-cache")
    assert metrics["feature_cache"]["train"].startswith(str(out / "feature-cache"))
    assert len(list((out / "feature-cache").glob("*.npz"))) == 2 and not any(cwd.iterdir())
    assert main(["transfer", *RANDOM, "--eval", f"p={pcam_pair[0]},{pcam_pair[1]}", "--out", str(tmp_path / "t"),
                 "--device", "cpu"]) == 0
    assert len(list((tmp_path / "t" / "feature-cache").glob("*.npz"))) == 2 and not any(cwd.iterdir())
