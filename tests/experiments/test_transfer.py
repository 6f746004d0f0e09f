"""`gcmae transfer`: one row per (pretrain set, method, eval set, protocol); re-runs reuse finished models."""
import csv
import json
import shutil

import pytest

from gcmae.cli import main
from gcmae.config import ConfigError
from gcmae.data.datasets import EmptyDatasetError
from gcmae.encoders import loading
from gcmae.evaluate.protocols import EvalSet, ProtocolSettings
from gcmae.experiments import transfer
from gcmae.experiments.transfer import EvalConfig, ModelSpec, TransferConfig, run_transfer

pytestmark = pytest.mark.slow  # real pretraining, slides or subprocesses: skipped by `make test-fast`

CRC_CLASSES = ("ADI", "LYM", "TUM")


@pytest.fixture(scope="module")
def crc_small(tmp_path_factory, samples):
    """Three real CRC-VAL-HE-7K classes, 4 tiles each."""
    src = samples / "crc-val-he-7k"
    dst = tmp_path_factory.mktemp("crc") / "crc"
    for cls in CRC_CLASSES:
        (dst / cls).mkdir(parents=True)
        for f in sorted((src / cls).iterdir())[:4]:
            shutil.copy(f, dst / cls / f.name)
    return dst


def eval_config(pcam_pair, crc_small, tmp_path) -> EvalConfig:
    return EvalConfig(eval_sets=[EvalSet("pcam", str(pcam_pair[0]), str(pcam_pair[1])),
                                 EvalSet("crc", str(crc_small), None, 4)],
                      knn_k=(5,), device="cpu", cache_dir=str(tmp_path / "cache"))


def test_rows_for_every_model_set_and_protocol_and_reuse(tmp_path, pcam_pair, crc_small, trained_checkpoint,
                                                         monkeypatch):
    models = [ModelSpec("gcmae", str(trained_checkpoint), "pcam", 0),
              ModelSpec("random_init", "random", "none", 1, "vit_tiny", 32, 8)]
    cfg = TransferConfig(str(tmp_path / "out"), models, eval_config(pcam_pair, crc_small, tmp_path))
    rows = run_transfer(cfg)
    assert len(rows) == 2 * 2 * 3  # models x eval sets x (knn_k5, nn1, logreg)
    with open(tmp_path / "out" / "transfer.csv") as fh:
        table = list(csv.DictReader(fh))
    assert {(r["method"], r["pretrain_set"], r["eval_set"]) for r in table} == {
        ("gcmae", "pcam", "pcam"), ("gcmae", "pcam", "crc"), ("random_init", "none", "pcam"),
        ("random_init", "none", "crc")}
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in table)
    crc_rows = [r for r in rows if r["eval_set"] == "crc" and r["protocol"] == "nn1"]
    assert all(r["accuracy"] * 12 == pytest.approx(round(r["accuracy"] * 12)) for r in crc_rows)  # 12 tiles
    metrics = tmp_path / "out" / "models" / "gcmae-pcam-seed0" / "metrics.json"
    before = metrics.stat().st_mtime_ns
    assert run_transfer(cfg) == rows
    assert metrics.stat().st_mtime_ns == before  # reused, not recomputed
    cfg.eval.knn_k = (3,)  # other settings: evaluated again
    hashed = []
    for module in (transfer, loading):
        monkeypatch.setattr(module, "file_digest", lambda p, real=loading.file_digest: hashed.append(p) or real(p))
    assert {r["protocol"] for r in run_transfer(cfg)} == {"knn_k3", "nn1", "logreg"}
    assert metrics.stat().st_mtime_ns != before
    assert hashed == [str(trained_checkpoint)]  # the checkpoint is read once to hash it, not once per use


def test_cli_writes_the_table(tmp_path, pcam_pair, crc_small, capsys):
    code = main(["transfer", "--checkpoint", "random", "--encoder", "vit_tiny", "--img-size", "32",
                 "--patch-size", "8", "--method", "random_init", "--eval", f"crc={crc_small}",
                 "--out", str(tmp_path / "t"), "--cache-dir", "", "--device", "cpu"])
    assert code == 0
    text = (tmp_path / "t" / "transfer.md").read_text()
    assert "| unknown | random_init | 0 | crc | logreg |" in text


def test_missing_eval_folder_and_no_models_are_named(tmp_path, pcam_pair):
    cfg = TransferConfig(str(tmp_path), [ModelSpec("m", "random", encoder="vit_tiny")],
                         EvalConfig(eval_sets=[EvalSet("x", str(tmp_path / "nope"))]))
    with pytest.raises(FileNotFoundError, match="evaluation set x: no such folder .*nope"):
        run_transfer(cfg)
    with pytest.raises(ConfigError, match="no models"):
        run_transfer(TransferConfig(str(tmp_path)))
    cfg.eval.eval_sets = []
    with pytest.raises(ConfigError, match="no evaluation sets"):
        run_transfer(cfg)


def test_wrong_architecture_empty_folder_and_class_mismatch_are_named(tmp_path, pcam_pair, crc_small,
                                                                        trained_checkpoint):
    sets = [EvalSet("pcam", str(pcam_pair[0]), str(pcam_pair[1]))]
    wrong = TransferConfig(str(tmp_path / "a"), [ModelSpec("m", str(trained_checkpoint), encoder="vit_small")],
                           EvalConfig(eval_sets=sets, device="cpu", cache_dir=""))
    with pytest.raises(ValueError, match="vit_tiny.*--encoder vit_small"):
        run_transfer(wrong)
    mismatch = TransferConfig(str(tmp_path / "b"), [ModelSpec("m", "random", encoder="vit_tiny", img_size=32,
                                                              patch_size=8)],
                              EvalConfig(eval_sets=[EvalSet("x", str(pcam_pair[0]), str(crc_small))], device="cpu",
                                         cache_dir=""))
    with pytest.raises(ValueError, match="class sets differ"):
        run_transfer(mismatch)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    mismatch.eval.eval_sets = [EvalSet("e", str(tmp_path / "empty"))]
    with pytest.raises(EmptyDatasetError, match="no usable images in .*empty"):
        run_transfer(mismatch)


def test_eval_config_carries_every_protocol_setting():
    assert EvalConfig().protocol_settings(3) == ProtocolSettings(seed=3)
    cfg = EvalConfig(pool="mean", knn_k=[5, 7], temperature=0.2, logreg_c=0.5, max_iter=10)
    assert cfg.protocol_settings(1) == ProtocolSettings("mean", (5, 7), 0.2, 0.5, 10, 1)


def test_class_sizes_are_checked_against_the_folds_before_anything_is_embedded(tmp_path, crc_small, monkeypatch,
                                                                               capsys):
    """Issue 11 item 7: a class too small for the folds failed only after every model had embedded everything;
    `--cv-folds` sets the folds; the k used when capped is recorded."""
    small = shutil.copytree(crc_small, tmp_path / "crc")
    for f in sorted((small / "LYM").iterdir())[2:]:
        f.unlink()  # LYM keeps 2 tiles
    loaded = []
    monkeypatch.setattr(transfer, "load_encoder", lambda *a, **k: loaded.append(a) or loading.load_encoder(*a, **k))
    base = ["transfer", "--checkpoint", "random", "--encoder", "vit_tiny", "--img-size", "32", "--patch-size", "8",
            "--eval", f"crc={small}", "--cache-dir", "", "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "evaluation set crc" in err and "4-fold cross-validation needs >= 4 images per class; too few: LYM (2)" in err
    assert "--cv-folds 2" in err and loaded == []
    assert main([*base, "--out", str(tmp_path / "b"), "--cv-folds", "2"]) == 0 and len(loaded) == 1
    saved = json.loads((tmp_path / "b" / "models" / "gcmae-unknown-seed0" / "metrics.json").read_text())
    assert saved["identity"]["eval"]["eval_sets"][0]["cv_folds"] == 2
    knn = saved["results"]["crc"]["knn_k200"]  # 10 tiles, 2 folds of 5: k capped at 5, and recorded
    assert (knn["k"], knn["k_asked"]) == (5, 200) and saved["results"]["crc"]["nn1"]["k"] == 1


def test_stain_norm_pretrained_applies_each_models_own_normaliser(tmp_path, crc_small, capsys):
    """The shipped encoder is evaluated with the Macenko normaliser stored with it (and by its name); a random init
    records none, so `pretrained` is refused for it with the reason."""
    from gcmae.stain import make_normalizer

    base = ["transfer", "--eval", f"crc={crc_small}", "--cache-dir", "", "--device", "cpu", "--stain-norm",
            "pretrained"]
    assert main([*base, "--checkpoint", "gcmae-vit-tiny-pcam", "--out", str(tmp_path / "shipped")]) == 0
    saved = [json.loads(p.read_text()) for p in (tmp_path / "shipped" / "models").glob("*/metrics.json")]
    assert len(saved) == 1 and saved[0]["identity"]["stain"] == make_normalizer("macenko").id
    assert main([*base, "--checkpoint", "random", "--encoder", "vit_tiny", "--out", str(tmp_path / "r")]) == 2
    assert "records no stain normalisation" in capsys.readouterr().err
