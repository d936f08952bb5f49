"""Typed configuration: dataclasses per section, YAML + dotted `key=value` overrides via OmegaConf.

Every trainer has one root dataclass (`DualHNeRVConfig`, `CascadeConfig`); `load_config` picks it by
the YAML's `task` key, merges the file and the overrides into the structured schema (so unknown keys
and wrong types fail with the key's name), then `validate()` checks settings that types cannot.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A bad configuration; the message names the offending key."""


# --------------------------------------------------------------------------------------------- shared
@dataclass
class OpsConfig:
    backend: str = "auto"  # auto | reference | cpp | cuda | triton


@dataclass
class EngineConfig:
    """Loop settings every trainer shares (read by train/engine.py)."""

    epochs: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: str = "auto"  # auto (default on GPU, none on CPU) | none | default | max-autotune | reduce-overhead
    amp: str = "none"  # none | bf16 | fp16 (autocast on GPU; fp16 adds a GradScaler)
    seed: int = 1
    deterministic: bool = False
    drop_last: bool = True  # static shapes: drop the last partial batch, else pad it with a zero-weight mask
    grad_clip: Optional[float] = None
    stop_after: Optional[int] = None  # end this invocation after that epoch (schedule still spans `epochs`); resume later
    log_every_steps: int = 1
    progress: bool = True


COMPILE_MODES = ("auto", "none", "default", "max-autotune", "reduce-overhead")
AMP_MODES = ("none", "bf16", "fp16")
OPS_BACKENDS = ("auto", "reference", "cpp", "cuda", "triton")


# -------------------------------------------------------------------------------------- dual HNeRV
@dataclass
class VideoDataConfig:
    source: str = "synthetic"  # synthetic | folder | video
    path: Optional[str] = None
    num_frames: int = 40  # synthetic only
    height: int = 64  # synthetic only
    width: int = 128  # synthetic only
    max_frames: Optional[int] = None
    resize: Optional[List[int]] = None  # [H, W] after loading
    data_split: str = "9_10_10"
    shuffle: bool = False
    seed: int = 0
    patch_rows: int = 2
    patch_cols: int = 4


@dataclass
class ClipConfig:
    model: str = "ViT-B-32"
    pretrained: Optional[str] = None  # open_clip hub tag, local checkpoint path, or null = random init
    cache_dir: str = "output/clip_cache"
    batch_size: int = 64


@dataclass
class HNeRVModelConfig:
    embed: str = "pe_1.25_80"
    fc_dim: int = 96
    fc_hw: List[int] = field(default_factory=lambda: [4, 4])
    dec_strds: List[int] = field(default_factory=lambda: [2, 2, 2])
    ks_min: int = 1
    ks_max: int = 5
    reduce: float = 1.2
    lower_width: int = 32
    act: str = "gelu"
    out_act: str = "tanh"  # tanh | sigmoid | none


@dataclass
class DualLossConfig:
    pixel: str = "Fusion6"
    clip_weight: float = 0.1
    pixel_loss_warmup_epochs: int = 50


@dataclass
class DualTrainConfig(EngineConfig):
    lr_schedule: str = "cosine_0.1_1_0.1"
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eval_freq: int = 10
    eval_last_epochs: int = 1
    params_every: int = 10
    eval_images: int = 2  # frames shown as predicted-vs-target images at each eval


@dataclass
class DualOutputConfig:
    output_dir: str = "output/patch_dual"
    exp_id: str = "default"
    param_str: Optional[str] = None  # null = built from the main hyper-parameters


@dataclass
class DualHNeRVConfig:
    task: str = "dual_hnerv"
    data: VideoDataConfig = field(default_factory=VideoDataConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    model: HNeRVModelConfig = field(default_factory=HNeRVModelConfig)
    loss: DualLossConfig = field(default_factory=DualLossConfig)
    train: DualTrainConfig = field(default_factory=DualTrainConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)
    output: DualOutputConfig = field(default_factory=DualOutputConfig)


TASK_SCHEMAS: dict[str, type] = {"dual_hnerv": DualHNeRVConfig}


# ------------------------------------------------------------------------------------------ loading
def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), task: str | None = None):
    """YAML file + dotted overrides -> validated root dataclass instance."""
    file_cfg = OmegaConf.create()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        file_cfg = OmegaConf.create(_yaml_load(path.read_text(), str(path)) or {})
    cli_cfg = OmegaConf.create()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"bad override {item!r}: expected key=value (e.g. train.epochs=20)")
        try:
            OmegaConf.update(cli_cfg, key, _yaml_load(value, item), force_add=True)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{key}: {_first_line(exc)}") from None
    name = task or cli_cfg.get("task") or file_cfg.get("task") or "dual_hnerv"
    if name not in TASK_SCHEMAS:
        raise ConfigError(f"task: unknown task {name!r}; choose one of {sorted(TASK_SCHEMAS)}")
    schema = OmegaConf.structured(TASK_SCHEMAS[name])
    try:
        merged = OmegaConf.merge(schema, file_cfg, cli_cfg)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"{key or 'config'}: {_first_line(exc)}") from None
    validate(cfg)
    return cfg


def _yaml_loader() -> type:
    """YAML 1.1 reads `9_10_10` as the integer 91010; our values (splits, schedules) use underscores,
    so numbers with underscores stay strings."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers
                if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    integer = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")
    decimal = re.compile(r"^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
                         r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:int", integer, list("-+0123456789"))
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", decimal, list("-+0123456789."))
    return Loader


def _yaml_load(text: str, where: str):
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse YAML in {where}: {exc}") from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]


def to_dict(cfg: Any) -> dict:
    """Plain dict (for YAML dumps and checkpoints, which must load with weights_only=True)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_dict(data: dict):
    """Inverse of to_dict (used when resuming from a checkpoint)."""
    name = data.get("task", "dual_hnerv")
    merged = OmegaConf.merge(OmegaConf.structured(TASK_SCHEMAS[name]), data)
    return OmegaConf.to_object(merged)


# ------------------------------------------------------------------------------------- validation
def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def validate_engine(train: EngineConfig, prefix: str = "train") -> None:
    _check(train.epochs >= 1, f"{prefix}.epochs", f"must be >= 1, got {train.epochs}")
    _check(train.batch_size >= 1, f"{prefix}.batch_size", f"must be >= 1, got {train.batch_size}")
    _check(train.lr > 0, f"{prefix}.lr", f"must be > 0, got {train.lr}")
    _check(train.compile in COMPILE_MODES, f"{prefix}.compile", f"{train.compile!r} not in {COMPILE_MODES}")
    _check(train.amp in AMP_MODES, f"{prefix}.amp", f"{train.amp!r} not in {AMP_MODES}")
    _check(train.log_every_steps >= 1, f"{prefix}.log_every_steps", "must be >= 1")
    _check(train.stop_after is None or 1 <= train.stop_after <= train.epochs, f"{prefix}.stop_after",
           f"must be between 1 and {prefix}.epochs ({train.epochs})")
    _check(
        train.device == "auto" or re.fullmatch(r"cpu|cuda(:\d+)?", train.device) is not None,
        f"{prefix}.device",
        f"{train.device!r} is not auto, cpu, cuda or cuda:N",
    )


SPLIT_RE = re.compile(r"(\d+)_(\d+)_(\d+)")
EMBED_RE = re.compile(r"pe_([0-9.]+)_(\d+)")
SCHEDULE_RE = re.compile(r"cosine_([0-9.]+)_([0-9.]+)_([0-9.]+)")


def parse_split(text: str) -> tuple[int, int, int]:
    m = SPLIT_RE.fullmatch(text)
    _check(m is not None, "data.data_split", f"{text!r} is not of the form a_b_c (e.g. 9_10_10)")
    a, b, c = (int(g) for g in m.groups())
    _check(0 < c and a <= b <= c, "data.data_split", f"{text!r} needs 0 <= a <= b <= c and c > 0")
    return a, b, c


def parse_embed(text: str) -> tuple[float, int]:
    m = EMBED_RE.fullmatch(text)
    _check(m is not None, "model.embed", f"{text!r} is not of the form pe_<base>_<levels> (e.g. pe_1.25_80)")
    return float(m.group(1)), int(m.group(2))


def parse_schedule(text: str) -> tuple[float, float, float]:
    m = SCHEDULE_RE.fullmatch(text)
    _check(m is not None, "train.lr_schedule", f"{text!r} is not cosine_<up_ratio>_<up_pow>_<min_lr>")
    up_ratio, up_pow, min_lr = (float(g) for g in m.groups())
    _check(0 <= up_ratio < 1, "train.lr_schedule", f"up_ratio {up_ratio} must be in [0, 1)")
    return up_ratio, up_pow, min_lr


def validate(cfg: Any) -> None:
    if isinstance(cfg, DualHNeRVConfig):
        validate_dual(cfg)
    elif hasattr(cfg, "validate"):
        cfg.validate()


def validate_dual(cfg: DualHNeRVConfig) -> None:
    from hnerv_fast.ops import PIXEL_LOSSES  # ops is a leaf library: safe to import here

    validate_engine(cfg.train)
    d, m, loss, t = cfg.data, cfg.model, cfg.loss, cfg.train
    _check(d.source in ("synthetic", "folder", "video"), "data.source", f"{d.source!r} not in synthetic/folder/video")
    _check(d.source == "synthetic" or bool(d.path), "data.path", f"required for data.source={d.source}")
    _check(d.resize is None or len(d.resize) == 2, "data.resize", "must be [H, W]")
    parse_split(d.data_split)
    parse_embed(m.embed)
    parse_schedule(t.lr_schedule)
    _check(len(m.fc_hw) == 2, "model.fc_hw", "must be [h, w]")
    _check(len(m.dec_strds) >= 1 and all(s >= 1 for s in m.dec_strds), "model.dec_strds", "needs strides >= 1")
    _check(m.act in ACTIVATIONS, "model.act", f"{m.act!r} not in {sorted(ACTIVATIONS)}")
    _check(m.out_act in ("tanh", "sigmoid", "none"), "model.out_act", f"{m.out_act!r} not in tanh/sigmoid/none")
    _check(loss.pixel in PIXEL_LOSSES, "loss.pixel", f"{loss.pixel!r} not in {list(PIXEL_LOSSES)}")
    _check(loss.clip_weight >= 0, "loss.clip_weight", "must be >= 0")
    _check(
        0 <= loss.pixel_loss_warmup_epochs <= t.epochs,
        "loss.pixel_loss_warmup_epochs",
        f"{loss.pixel_loss_warmup_epochs} must be between 0 and train.epochs ({t.epochs})",
    )
    _check(t.eval_freq >= 1, "train.eval_freq", "must be >= 1")
    _check(t.params_every >= 1, "train.params_every", "must be >= 1")
    _check(cfg.ops.backend in OPS_BACKENDS, "ops.backend", f"{cfg.ops.backend!r} not in {OPS_BACKENDS}")


ACTIVATIONS = ("gelu", "relu", "silu", "leaky_relu")
