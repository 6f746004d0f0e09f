"""`gcmae replicate`: every method x seed is pretrained once and evaluated; the table is mean ± std."""
import json

import pytest
import yaml

from gcmae.cli import main
from gcmae.config import ConfigError, load_pretrain_config
from gcmae.experiments.replicate import load_replicate_config, replica_table, summarise

pytestmark = pytest.mark.slow  # real pretraining, slides or subprocesses: skipped by `make test-fast`

TINY_PRETRAIN = {
    "model": {"encoder": "vit_tiny", "img_size": 32, "patch_size": 8, "decoder_dim": 32, "decoder_depth": 1,
              "decoder_heads": 2},
    "loss": {"num_negatives": 16},
    "data": {"batch_size": 8, "num_workers": 0},
    "optim": {"epochs": 1, "warmup_epochs": 0},
    "trainer": {"accelerator": "cpu", "progress_bar": False, "log_every_n_steps": 1},
}


def write_configs(tmp_path, pcam_pair, **extra):
    pretrain = tmp_path / "pretrain.yaml"
    pretrain.write_text(yaml.safe_dump({**TINY_PRETRAIN, "data": {**TINY_PRETRAIN["data"],
                                                                   "train_dir": str(pcam_pair[0])}}))
    replicate = {
        "out": str(tmp_path / "rep"), "seeds": [0, 1], "pretrain_config": str(pretrain),
        "methods": {"gcmae": [], "mae": ["loss.contrast_weight=0"]},
        "eval": {"eval_sets": [{"name": "pcam", "train": str(pcam_pair[0]), "val": str(pcam_pair[1])}],
                 "knn_k": [5], "device": "cpu", "cache_dir": str(tmp_path / "cache")},
        "table_columns": ["pcam/knn_k5", "pcam/logreg"], **extra,
    }
    path = tmp_path / "replicate.yaml"
    path.write_text(yaml.safe_dump(replicate))
    return path


def test_replicate_pretrains_each_method_and_seed_once(tmp_path, pcam_pair, capsys):
    config = write_configs(tmp_path, pcam_pair)
    assert main(["replicate", "--config", str(config)]) == 0
    out = tmp_path / "rep"
    for run in ("gcmae-seed0", "gcmae-seed1", "mae-seed0", "mae-seed1"):
        assert (out / "pretrain" / run / "checkpoints" / "last.ckpt").is_file()
    saved = yaml.safe_load((out / "pretrain" / "mae-seed1" / "config.yaml").read_text())
    assert saved["loss"]["contrast_weight"] == 0 and saved["trainer"]["seed"] == 1
    payload = json.loads((out / "replica.json").read_text())
    assert payload["methods"] == ["gcmae", "mae", "random_init"]
    assert payload["summary"]["random_init/pcam/logreg"]["n"] == 2
    table = (out / "replica.md").read_text()
    assert "| method | pcam/knn_k5 | pcam/logreg |" in table and "| random_init |" in table
    assert (out / "replica_bars.png").stat().st_size > 10_000
    # a second invocation reuses every run and evaluation
    assert main(["replicate", "--config", str(config)]) == 0
    again = json.loads((out / "replica.json").read_text())
    finished = json.loads((out / "pretrain" / "mae-seed1" / "finished.json").read_text())
    assert again["timings_s"]["pretrain/mae-seed1"] == finished["seconds"] == payload["timings_s"]["pretrain/mae-seed1"]
    assert again["wall_s"] < payload["wall_s"]  # nothing trained again
    assert again["summary"] == payload["summary"]


def test_summary_and_table_against_hand_computed_values():
    rows = [{"method": "a", "eval_set": "s", "protocol": "p", "seed": i, "accuracy": v}
            for i, v in enumerate([0.70, 0.80, 0.90])]
    rows += [{"method": "b", "eval_set": "s", "protocol": "p", "seed": 0, "accuracy": 0.75}]
    summary = summarise(rows, "accuracy")
    assert summary[("a", "s", "p")] == pytest.approx((0.80, 0.10, 3))  # sample std of .7, .8, .9 is 0.1
    assert summary[("b", "s", "p")] == (0.75, 0.0, 1)
    table = replica_table(summary, ["a", "b"], ["s/p"])
    assert "| a | **80.0 ± 10.0** |" in table and "| b | 75.0 ± 0.0 |" in table


def test_bad_configs_are_named(tmp_path, pcam_pair):
    config = write_configs(tmp_path, pcam_pair, methods={"random_init": []})
    with pytest.raises(ConfigError, match="random_init"):
        load_replicate_config(config)
    config = write_configs(tmp_path, pcam_pair, seeds=[])
    with pytest.raises(ConfigError, match="at least one seed"):
        load_replicate_config(config)
    config = write_configs(tmp_path, pcam_pair, epochs=3)
    with pytest.raises(ConfigError, match="unknown config key"):
        load_replicate_config(config)


@pytest.mark.parametrize("name", ["pcam_cpu.yaml", "pcam_vitb_gpu.yaml"])
def test_shipped_replicate_configs_load(name):
    from tests.conftest import REPO

    cfg = load_replicate_config(REPO / "configs" / "replicate" / name)
    assert cfg.seeds == [0, 1, 2] and set(cfg.methods) == {"gcmae", "mae", "contrast_only"}
    pretrain = load_pretrain_config(REPO / cfg.pretrain_config, cfg.pretrain_overrides + cfg.methods["mae"])
    assert pretrain.loss.contrast_weight == 0 and pretrain.model.mask_ratio == 0.5
