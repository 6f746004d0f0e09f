import pytest

from gcmae.config import ConfigError, load_pretrain_config
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


def test_the_22_epoch_variant_is_the_cpu_hour_recipe_with_the_documented_overrides():
    variant = load_pretrain_config(REPO / "configs/pretrain/pcam_cpu_22ep_infonce.yaml",
                                   ["trainer.out_dir=runs/x"])
    documented = load_pretrain_config(REPO / "configs/pretrain/pcam_cpu_hour.yaml", [
        "optim.base_lr=3e-4", "optim.epochs=22", "optim.warmup_epochs=2", "loss.contrast_weight=0.1",
        "loss.objective=infonce", "trainer.out_dir=runs/x"])
    assert variant == documented
