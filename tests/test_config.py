import pytest

from hnerv_fast.config import ConfigError, Cosine, DataSplit, DualHNeRVConfig, Embed, from_dict, load_config, to_dict
from tests.imports import modules_loaded_by, within

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
        ("clip.amp=fp8", "clip.amp"),
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


def test_parsed_values_are_typed_attributes_and_stay_strings_in_dicts():
    cfg = load_config(TINY, ["data.data_split=2_3_4", "model.embed=pe_1.5_8", "train.lr_schedule=cosine_0.2_2_0.05"])
    assert cfg.data.split == DataSplit(2, 3, 4)
    assert cfg.model.embed_spec == Embed(1.5, 8)
    assert cfg.train.schedule == Cosine(0.2, 2.0, 0.05)
    d = to_dict(cfg)
    assert (d["data"]["data_split"], d["model"]["embed"], d["train"]["lr_schedule"]) == (
        "2_3_4", "pe_1.5_8", "cosine_0.2_2_0.05")
    assert "split" not in d["data"] and "embed_spec" not in d["model"] and "schedule" not in d["train"]
    assert from_dict(d).train.schedule == cfg.train.schedule


def test_cascade_schedule_constant_is_none():
    assert load_config("configs/cascade_tiny.yaml", ["train.lr_schedule=constant"]).train.schedule is None
    cfg = load_config("configs/cascade_tiny.yaml", ["train.lr_schedule=cosine_0.1_1_0.1"])
    assert cfg.train.schedule == Cosine(0.1, 1.0, 0.1)
    with pytest.raises(ConfigError, match=r"train\.lr_schedule"):
        load_config("configs/cascade_tiny.yaml", ["train.lr_schedule=step"])


def test_config_name_lists_match_their_torch_side_owners():
    # config keeps torch-free copies so that loading a config imports no torch module
    from hnerv_fast.config import common, dual
    from hnerv_fast.models import blocks
    from hnerv_fast.ops import PIXEL_LOSSES, _backends

    assert dual.PIXEL_LOSSES == PIXEL_LOSSES
    assert common.OPS_BACKENDS == _backends.BACKENDS
    assert set(dual.ACTIVATIONS) == set(blocks._ACTIVATIONS)


def test_config_imports_no_torch_and_no_train_models_logging():
    loaded = modules_loaded_by("hnerv_fast.config")
    bad = within(loaded, "torch", "hnerv_fast.train", "hnerv_fast.logging", "hnerv_fast.models", "hnerv_fast.data")
    assert not bad, bad


@pytest.mark.parametrize("content, message", [
    (b"- train\n- model\n", "must be a YAML mapping of sections"),
    (b"just a string\n", "must be a YAML mapping of sections"),
    (b"\x80\x81\xfe\xff binary", "is not a text YAML file"),
])
def test_config_file_that_is_not_a_mapping(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_config_file_that_cannot_be_read(tmp_path, monkeypatch):
    path = tmp_path / "locked.yaml"
    path.write_text("train:\n  epochs: 2\n")

    def denied(self, *args, **kwargs):  # the tests run as root, where file modes do not stop a read
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(path), "read_text", denied)
    with pytest.raises(ConfigError, match=r"locked\.yaml cannot be read: Permission denied"):
        load_config(path)
