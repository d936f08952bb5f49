import pytest

from hnerv_fast.config import ConfigError, DualHNeRVConfig, from_dict, load_config, to_dict

TINY = "configs/dual_hnerv_tiny.yaml"


def test_tiny_config_loads_into_dataclasses():
    cfg = load_config(TINY)
    assert isinstance(cfg, DualHNeRVConfig)
    assert cfg.model.dec_strds == [2, 2, 2]
    assert cfg.loss.pixel == "Fusion6"


def test_dotted_overrides_apply_with_types():
    cfg = load_config(TINY, ["train.epochs=7", "loss.pixel_loss_warmup_epochs=2", "loss.pixel=L1", "model.fc_hw=[2,2]", "clip.pretrained=null"])
    assert cfg.train.epochs == 7 and cfg.loss.pixel == "L1" and cfg.model.fc_hw == [2, 2]
    assert cfg.clip.pretrained is None


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.epochz=3", "train.epochz"),
        ("nonsense.key=1", "nonsense"),
        ("train.epochs=abc", "train.epochs"),
        ("loss.pixel=Fusion13", "loss.pixel"),
        ("data.data_split=9_10", "data.data_split"),
        ("data.data_split=5_3_10", "data.data_split"),
        ("data.data_split=0_5_10", "data.data_split"),
        ("loss.pixel_loss_warmup_epochs=99", "loss.pixel_loss_warmup_epochs"),
        ("train.compile=fast", "train.compile"),
        ("model.embed=fourier", "model.embed"),
        ("train.lr_schedule=step", "train.lr_schedule"),
        ("data.source=folder", "data.path"),
        ("ops.backend=gpu", "ops.backend"),
    ],
)
def test_bad_settings_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(TINY, [override])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("configs/nope.yaml")


def test_dict_round_trip():
    cfg = load_config(TINY, ["train.epochs=3", "loss.pixel_loss_warmup_epochs=1"])
    assert from_dict(to_dict(cfg)) == cfg


def test_split_strings_survive_yaml_and_overrides():
    # YAML 1.1 would read 9_9_10 as the integer 9910
    assert load_config(TINY).data.data_split == "9_9_10"
    assert load_config(TINY, ["data.data_split=1_1_1"]).data.data_split == "1_1_1"
