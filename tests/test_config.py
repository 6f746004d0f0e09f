import pytest

from gcmae.config import ConfigError, load_pretrain_config, load_yaml
from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs" / "pretrain").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_pretrain_config(path)
    assert cfg.model.mask_ratio == 0.5


def test_paper_recipe_defaults():
    cfg = load_pretrain_config(REPO / "configs/pretrain/gcmae_vit_base_paper.yaml")
    assert (cfg.model.encoder, cfg.model.img_size, cfg.model.patch_size) == ("vit_base", 224, 16)
    assert (cfg.model.decoder_dim, cfg.model.decoder_depth, cfg.model.decoder_heads) == (512, 8, 16)
    assert (cfg.loss.contrast_weight, cfg.loss.num_negatives, cfg.loss.temperature) == (0.1, 8192, 0.07)
    assert (cfg.optim.epochs, cfg.optim.warmup_epochs, cfg.optim.betas) == (80, 40, (0.9, 0.95))
    assert load_pretrain_config(REPO / "configs/pretrain/mae_vit_base_paper.yaml").loss.contrast_weight == 0


def test_unknown_key_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  encoder: vit_tiny\n  mask_ration: 0.5\n")
    with pytest.raises(ConfigError, match=r"model\.mask_ration"):
        load_pretrain_config(bad)


def test_unknown_section_and_wrong_type(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key"):
        load_pretrain_config(None, ["optimiser.lr=1"])
    with pytest.raises(ConfigError, match=r"data\.batch_size: expected an integer"):
        load_pretrain_config(None, ["data.batch_size=big"])
    with pytest.raises(ConfigError, match=r"optim\.betas: expected a list of 2"):
        load_pretrain_config(None, ["optim.betas=[0.9]"])


def test_overrides_are_parsed_as_yaml():
    cfg = load_pretrain_config(None, ["optim.epochs=3", "loss.contrast_weight=0", "data.crop_scale=[0.5, 1]"])
    assert cfg.optim.epochs == 3 and cfg.loss.contrast_weight == 0.0 and cfg.data.crop_scale == (0.5, 1.0)


def test_inconsistent_values_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="mask_ratio is 0"):
        load_pretrain_config(None, ["model.mask_ratio=0"])
    with pytest.raises(ConfigError, match="not a multiple"):
        load_pretrain_config(None, ["model.img_size=100"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_pretrain_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"trainer\.keep_every_n_epochs must be >= 0, got -1"):
        load_pretrain_config(None, ["trainer.keep_every_n_epochs=-1"])


def test_python_tag_in_an_override_is_a_config_error(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pretrain_config(None, [f"data.train_dir=!!python/object/apply:os.system ['touch {marker}']"])
    assert not marker.exists()


def test_lists_mappings_and_nested_dataclasses_are_checked():
    from dataclasses import dataclass, field

    from gcmae.config import ConfigError, from_dict

    @dataclass
    class Item:
        name: str
        size: int = 1

    @dataclass
    class Outer:
        items: list[Item] = field(default_factory=list)
        overrides: dict[str, list[str]] = field(default_factory=dict)
        ks: tuple[int, ...] = ()

    cfg = from_dict(Outer, {"items": [{"name": "a"}, {"name": "b", "size": 2}], "overrides": {"m": ["x=1"]},
                            "ks": [20, 200]})
    assert cfg == Outer([Item("a"), Item("b", 2)], {"m": ["x=1"]}, (20, 200))
    with pytest.raises(ConfigError, match=r"items\[1\].size: expected an integer"):
        from_dict(Outer, {"items": [{"name": "a"}, {"name": "b", "size": "big"}]})
    with pytest.raises(ConfigError, match=r"overrides.m: expected a list"):
        from_dict(Outer, {"overrides": {"m": "x=1"}})
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) items\[0\].colour"):
        from_dict(Outer, {"items": [{"name": "a", "colour": 1}]})


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 reads `3e-4` as a string; a learning rate written that way must still work."""
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  base_lr: 3e-4\n  min_lr: 1E-6\n")
    cfg = load_pretrain_config(path, ["loss.temperature=7e-2"])
    assert (cfg.optim.base_lr, cfg.optim.min_lr, cfg.loss.temperature) == (3e-4, 1e-6, 0.07)
    with pytest.raises(ConfigError, match="optim.base_lr: expected a number"):
        load_pretrain_config(path, ["optim.base_lr=fast"])


def test_the_22_epoch_configs_are_the_cpu_hour_recipe_with_the_documented_overrides():
    schedule = ["optim.base_lr=3e-4", "optim.epochs=22", "optim.warmup_epochs=2", "trainer.out_dir=runs/x"]
    hour = REPO / "configs/pretrain/pcam_cpu_hour.yaml"
    mae = load_pretrain_config(REPO / "configs/pretrain/pcam_cpu_22ep_mae.yaml", ["trainer.out_dir=runs/x"])
    assert mae == load_pretrain_config(hour, schedule)
    variant = load_pretrain_config(REPO / "configs/pretrain/pcam_cpu_22ep_infonce.yaml", ["trainer.out_dir=runs/x"])
    assert variant == load_pretrain_config(hour, [*schedule, "loss.contrast_weight=0.1", "loss.objective=infonce"])


def test_base_is_read_first_and_merged_section_by_section(tmp_path):
    (tmp_path / "parent").mkdir()
    (tmp_path / "parent/root.yaml").write_text(
        "model:\n  encoder: vit_tiny\n  img_size: 96\ndata:\n  crop_scale: [0.2, 1.0]\n  batch_size: 64\n")
    (tmp_path / "parent/middle.yaml").write_text("base: root.yaml\nmodel:\n  img_size: 64\noptim:\n  epochs: 3\n")
    (tmp_path / "child.yaml").write_text("base: parent/middle.yaml\ndata:\n  crop_scale: [0.5, 1.0]\n")
    data = load_yaml(tmp_path / "child.yaml")
    # each file's own keys win, untouched keys of every section are kept, lists are replaced whole
    assert data == {"model": {"encoder": "vit_tiny", "img_size": 64}, "optim": {"epochs": 3},
                    "data": {"crop_scale": [0.5, 1.0], "batch_size": 64}}
    cfg = load_pretrain_config(tmp_path / "child.yaml", ["model.img_size=32"])
    assert (cfg.model.encoder, cfg.model.img_size, cfg.data.batch_size, cfg.optim.epochs) == ("vit_tiny", 32, 64, 3)


def test_bad_base_names_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"b.yaml: base 'a.yaml' makes a cycle \(a.yaml -> b.yaml -> a.yaml\)"):
        load_yaml(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"c.yaml: base config not found: .*missing.yaml"):
        load_pretrain_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(ConfigError, match="d.yaml: base must be the file name of another config"):
        load_yaml(tmp_path / "d.yaml")


def test_a_bad_key_in_a_base_names_the_base(tmp_path):
    (tmp_path / "root.yaml").write_text("model:\n  encodr: vit_tiny\n")
    (tmp_path / "child.yaml").write_text("base: root.yaml\noptim:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"child.yaml \(read over its base .*root.yaml\): unknown config key\(s\) "
                                          r"model.encodr"):
        load_pretrain_config(tmp_path / "child.yaml")


def test_stain_norm_choices_match_the_stain_package_and_are_checked():
    from gcmae.config import STAIN_CHOICES
    from gcmae.stain import CHOICES

    assert STAIN_CHOICES == CHOICES
    assert load_pretrain_config(None, ["data.in_memory=true", "data.stain_norm=macenko"]).data.stain_norm == "macenko"
    with pytest.raises(ConfigError, match="data.stain_norm must be one of"):
        load_pretrain_config(None, ["data.in_memory=true", "data.stain_norm=vahadane"])
    with pytest.raises(ConfigError, match="set data.in_memory=true"):
        load_pretrain_config(None, ["data.stain_norm=reinhard"])
    with pytest.raises(ConfigError, match="data.stain_target .* given with data.stain_norm=none"):
        load_pretrain_config(None, ["data.in_memory=true", "data.stain_target=t.png"])
    with pytest.raises(ConfigError, match="the kNN monitor reads raw images"):
        load_pretrain_config(None, ["data.in_memory=true", "data.stain_norm=macenko", "monitor.val_dir=v"])
