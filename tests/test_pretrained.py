"""The encoder shipped inside the package (`gcmae.from_pretrained("gcmae-vit-tiny-pcam")`): it loads offline, in
timm too, is accepted by name where a checkpoint is taken, and beats random init on the shipped PCam valid sample."""
import json
from pathlib import Path

import pytest
import timm
import torch

import gcmae
from gcmae.cli import main
from gcmae.experiments.random_baseline import compare_with_random_init
from gcmae.pretrained import WEIGHTS_DIR, available, resolve

NAME = "gcmae-vit-tiny-pcam"


def test_shipped_encoder_loads_offline_by_name_and_in_timm():
    assert NAME in available()
    folder = resolve(NAME)
    assert folder == WEIGHTS_DIR / NAME
    assert (folder / "model.safetensors").stat().st_size <= 12 * 2**20
    config = json.loads((folder / "config.json").read_text())
    assert {k: config["gcmae"][k] for k in ("stain_norm", "stain_target")} == {"stain_norm": "macenko",
                                                                               "stain_target": ""}
    # the fitted normaliser is stored, and is the one gcmae fits to the shipped target today
    from gcmae.stain import StainNormalizer, make_normalizer
    assert StainNormalizer.from_dict(config["gcmae"]["stain"]).id == make_normalizer("macenko").id
    card = (folder / "README.md").read_text()
    for words in ("seed | 0", "infonce", "random init", "colour histogram", "## Limits"):
        assert words in card, words
    ours = gcmae.from_pretrained(NAME).eval()
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), theirs.forward_features(x))
    assert ours.forward_features(x).shape == (2, 1 + 36, 192)


@pytest.mark.slow
def test_shipped_encoder_beats_random_init_on_the_pcam_valid_sample(samples, tmp_path):
    """The logistic probe on its frozen features (fit on the shipped PCam train sample, scored on the shipped valid
    sample: other slides), the images Macenko-normalised as in its pretraining, against random inits of the same
    architecture at five seeds, on the class token and on the mean tokens: above every seed, by more than 2 points
    over their mean, and by at least 1.96 standard errors of that margin (valid-image bootstrap and the seeds'
    spread; one-sided 2.5 % per pool, both pools required). Measured when it was shipped: +2.9 points (2.5 SE) cls,
    +3.5 (3.0 SE) mean; the threshold leaves room for a few probe decisions that differ between CPUs."""
    results = compare_with_random_init(NAME, samples / "pcam" / "train", samples / "pcam" / "valid",
                                       cache_dir=tmp_path)
    assert [r.pool for r in results] == ["cls", "mean"]
    for r in results:
        assert r.encoder > max(r.random_init), r
        assert r.margin > 0.02 and r.z > 1.96, r
        assert len(set(r.random_init)) > 1  # five different random inits, not one repeated


def test_commands_take_the_shipped_encoder_by_name(pcam_pair, tmp_path, caplog):
    train, val = pcam_pair
    base = ["knn", "--checkpoint", NAME, "--train", str(train), "--val", str(val), "--k", "5"]
    main([*base, "--out", str(tmp_path / "normalised"), "--stain-norm", "macenko"])
    metrics = json.loads((tmp_path / "normalised" / "metrics.json").read_text())
    assert str(resolve(NAME)) in metrics["weights"] and metrics["encoder_used"]["img_size"] == 96
    assert metrics["stain"]["method"] == "macenko"
    assert "was pretrained on macenko" not in caplog.text  # normalised like its pretraining: no warning
    main([*base, "--out", str(tmp_path / "raw")])
    assert "was pretrained on macenko-normalised images" in caplog.text and "given raw images" in caplog.text
    assert "--stain-norm pretrained" in caplog.text
    # --stain-norm pretrained: the encoder's own stored normaliser, the same features as --stain-norm macenko
    caplog.clear()
    assert main([*base, "--out", str(tmp_path / "own"), "--stain-norm", "pretrained"]) == 0
    own = json.loads((tmp_path / "own" / "metrics.json").read_text())
    assert own["stain"]["id"] == metrics["stain"]["id"] and "was pretrained on" not in caplog.text
    assert own["results"]["knn_k5"]["balanced_accuracy"] == metrics["results"]["knn_k5"]["balanced_accuracy"]


def test_stain_norm_pretrained_is_refused_where_it_has_nothing_to_apply(pcam_pair, tmp_path, capsys):
    train, val = pcam_pair
    base = ["knn", "--train", str(train), "--val", str(val), "--k", "5", "--out", str(tmp_path / "o")]
    assert main([*base, "--checkpoint", "random", "--encoder", "vit_tiny", "--stain-norm", "pretrained"]) == 2
    assert "records no stain normalisation of its pretraining: --stain-norm pretrained has nothing to apply" in (
        capsys.readouterr().err)
    assert main([*base, "--checkpoint", NAME, "--stain-norm", "pretrained", "--stain-target", str(train)]) == 2
    assert "--stain-target" in capsys.readouterr().err


def test_a_path_named_like_the_shipped_encoder_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path(NAME).mkdir()
    assert resolve(NAME) == Path(NAME)
