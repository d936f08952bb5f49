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

from hnerv_fast.errors import UserError
from hnerv_fast.health_rules import HealthThresholds


class ConfigError(UserError, ValueError):
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
    compile: str = "auto"  # auto (GPU: default; CPU: default for runs of >= 1500 steps) | none | default | max-autotune | reduce-overhead
    amp: str = "auto"  # auto | none | bf16 | fp16 (fp16: GPU + GradScaler); see train/precision.py
    seed: int = 1
    deterministic: bool = False
    drop_last: bool = True  # static shapes: drop the last partial batch, else pad it with a zero-weight mask
    grad_clip: Optional[float] = None
    stop_after: Optional[int] = None  # end this invocation after that epoch (schedule still spans `epochs`); resume later
    log_every_steps: int = 1
    progress: bool = True
    # optimizer step = grad_accum_steps micro-batches of batch_size per process (torchrun: x world_size);
    # losses are divided by it, metrics averaged over the micro-batches, lr/steps/grad norms per optimizer step
    grad_accum_steps: int = 1
    dist_timeout_s: int = 1800  # torchrun: a collective waiting longer than this fails the job (dead/stuck rank)


COMPILE_MODES = ("auto", "none", "default", "max-autotune", "reduce-overhead")
AMP_MODES = ("auto", "none", "bf16", "fp16")
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
    data_split: str = "9_9_10"  # i%10<9 train, i%10>=9 validation (see README)
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
    health: HealthThresholds = field(default_factory=HealthThresholds)  # warnings printed + logged as text


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
    except ValueError as exc:  # a section's own __post_init__ check (e.g. health thresholds)
        raise ConfigError(f"config: {exc}") from None
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
    _check(train.grad_accum_steps >= 1, f"{prefix}.grad_accum_steps", f"must be >= 1, got {train.grad_accum_steps}")
    _check(train.dist_timeout_s >= 1, f"{prefix}.dist_timeout_s", f"must be >= 1, got {train.dist_timeout_s}")
    _check(train.stop_after is None or 1 <= train.stop_after <= train.epochs, f"{prefix}.stop_after",
           f"must be between 1 and {prefix}.epochs ({train.epochs})")
    _check(
        train.device == "auto" or re.fullmatch(r"cpu|cuda(:\d+)?", train.device) is not None,
        f"{prefix}.device",
        f"{train.device!r} is not auto, cpu, cuda or cuda:N",
    )


EMBED_RE = re.compile(r"pe_([0-9.]+)_(\d+)")
SCHEDULE_RE = re.compile(r"cosine_([0-9.]+)_([0-9.]+)_([0-9.]+)")


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
    from hnerv_fast.data.patches import parse_data_split  # leaf modules: safe to import here
    from hnerv_fast.data.video import DataError
    from hnerv_fast.ops import PIXEL_LOSSES

    validate_engine(cfg.train)
    d, m, loss, t = cfg.data, cfg.model, cfg.loss, cfg.train
    _check(d.source in ("synthetic", "folder", "video"), "data.source", f"{d.source!r} not in synthetic/folder/video")
    _check(d.source == "synthetic" or bool(d.path), "data.path", f"required for data.source={d.source}")
    _check(d.resize is None or len(d.resize) == 2, "data.resize", "must be [H, W]")
    try:
        parse_data_split(d.data_split)
    except DataError as exc:
        raise ConfigError(str(exc)) from None
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


# ============================================================================================
# ---- cascade (Hybrid ViT X-ray -> CT cascade; read by hnerv_fast/train/tasks/cascade*.py) ----
# ============================================================================================
from typing import Dict  # noqa: E402  (kept inside this section)

CASCADE_SOURCES = ("phantoms", "folder")
CASCADE_CONDITIONING = ("generated", "ground_truth")
WANDB_MODES = ("disabled", "offline", "online")
STAGE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class CascadeDataConfig:
    source: str = "phantoms"  # phantoms (built-in synthetic heads) | folder (.npy/.nii/.nii.gz + X-rays)
    root: Optional[str] = None  # folder source: the CT folder (see hnerv_fast/data/ct_folder.py)
    num_cases: int = 64  # phantoms: cases generated (train + val)
    val_fraction: float = 0.2  # share of the cases held out for validation (split by case, seeded)
    xray_size: int = 512
    views: List[str] = field(default_factory=lambda: ["frontal", "lateral"])  # 1-2 of frontal, lateral
    seed: int = 0  # phantom generation and folder train/val split
    supersample: int = 2  # phantoms: k^3 sub-samples per voxel (partial-volume voxels); 1 = faster


@dataclass
class StageSettings:
    """One cascade stage; the stage's key in `stages` is its name (tags, checkpoint file names)."""

    size: int = 64  # volume edge S (S^3 voxels)
    width: int = 256  # transformer width (voxel_dim)
    depth: int = 4
    heads: int = 4
    patch: int = 4  # 3D patch edge; tokens = (size / patch)^3
    mlp_ratio: float = 4.0
    encoder_channels: int = 32
    lift_channels: int = 8
    cross_attention: bool = False
    grad_checkpointing: bool = False
    epochs: Optional[int] = None  # null = train.epochs
    batch_size: Optional[int] = None  # null = train.batch_size
    lr: Optional[float] = None  # null = train.lr


@dataclass
class CascadeTrainConfig(EngineConfig):
    epochs: int = 100
    batch_size: int = 4
    lr: float = 1e-4
    amp: str = "fp16"  # GradScaler mixed precision on GPU (bf16: no scaler); fp32 on CPU (auto/bf16: bf16)
    grad_clip: Optional[float] = 1.0
    log_every_steps: int = 50
    # stop_after (EngineConfig): ends this invocation after that epoch of the stage being trained
    # (later stages are not started; a {stage}_epoch_{N}.pt is written to resume from)
    stages: List[str] = field(default_factory=list)  # stage names to train, in cascade order; [] = all
    weight_decay: float = 0.01  # AdamW
    lr_schedule: str = "constant"  # constant | cosine_<up_ratio>_<up_pow>_<min_lr> (per stage)
    save_every: int = 5  # {stage}_epoch_{N}.pt every N epochs
    # Conditioning of stage N > 1 on stage N-1's volume:
    #   generated (default): stage N-1 (its {stage}_final.pt) DDIM-samples the volume of every case
    #     once (cached for the whole stage), as at inference -> no train/test mismatch;
    #   ground_truth: the ground-truth volume at stage N-1's size (teacher forcing; cheaper).
    conditioning: str = "generated"
    val_samples: int = 2  # validation cases DDIM-sampled and shown as images (0 = none)
    sample_every: int = 1  # epochs between validation images
    val_draws: int = 4  # fixed (t, noise) draws per validation case (stratified t, seeded)


@dataclass
class DiffusionConfig:
    timesteps: int = 1000  # cosine schedule
    physics_weight: float = 0.1  # total = diffusion + physics_weight * physics
    physics_at: str = "xray"  # xray (DRR resized to the X-ray, published) | volume (at the DRR's own size)
    ddim_steps: int = 20  # DDIM steps for validation images and generated conditioning


@dataclass
class WandbConfig:
    mode: str = "disabled"  # disabled | offline | online (needs the optional `wandb` package)
    project: str = "hybrid_vit_cascade"
    entity: Optional[str] = None


@dataclass
class CascadeOutputConfig:
    checkpoint_dir: str = "checkpoints"  # {stage}_best/_epoch_{N}/_final.pt; logs in tensorboard/<run_name>/
    run_name: Optional[str] = None  # null = cascade-<YYYYmmdd-HHMMSS> (on resume: the checkpoint's run name)


@dataclass
class CascadeConfig:
    task: str = "cascade"
    data: CascadeDataConfig = field(default_factory=CascadeDataConfig)
    stages: Dict[str, StageSettings] = field(default_factory=dict)  # defined in the YAML (configs/cascade_*.yaml)
    train: CascadeTrainConfig = field(default_factory=CascadeTrainConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)
    output: CascadeOutputConfig = field(default_factory=CascadeOutputConfig)
    health: HealthThresholds = field(default_factory=HealthThresholds)  # warnings printed + logged as text

    # ------------------------------------------------------------------ derived (not config keys)
    def cascade_order(self) -> List[str]:
        """All stage names, coarse to fine (by size): stage k is conditioned on stage k-1."""
        return sorted(self.stages, key=lambda name: self.stages[name].size)

    def stages_to_train(self) -> List[str]:
        return list(self.train.stages) or self.cascade_order()

    def stage_engine(self, name: str) -> "CascadeTrainConfig":
        """train.* with the stage's epochs / batch_size / lr filled in (what the Engine of that stage reads)."""
        import dataclasses

        s = self.stages[name]
        epochs = s.epochs if s.epochs is not None else self.train.epochs
        stop = self.train.stop_after
        return dataclasses.replace(
            self.train, epochs=epochs,
            batch_size=s.batch_size if s.batch_size is not None else self.train.batch_size,
            lr=s.lr if s.lr is not None else self.train.lr,
            stop_after=None if stop is None else min(stop, epochs),
        )

    def validate(self) -> None:
        import dataclasses

        from hnerv_fast.models.drr import VIEWS  # plain-torch leaf module

        t, d, diff = self.train, self.data, self.diffusion
        validate_engine(dataclasses.replace(t, stop_after=None))
        _check(t.stop_after is None or t.stop_after >= 1, "train.stop_after", "must be >= 1")
        _check(d.source in CASCADE_SOURCES, "data.source", f"{d.source!r} not in {CASCADE_SOURCES}")
        _check(d.source != "folder" or bool(d.root), "data.root", "required for data.source=folder")
        _check(d.source != "phantoms" or d.num_cases >= 2, "data.num_cases",
               f"needs >= 2 (train + validation), got {d.num_cases}")
        _check(0.0 < d.val_fraction < 1.0, "data.val_fraction", f"must be in (0, 1), got {d.val_fraction}")
        _check(d.xray_size >= 1, "data.xray_size", f"must be >= 1, got {d.xray_size}")
        _check(d.supersample >= 1, "data.supersample", f"must be >= 1, got {d.supersample}")
        _check(1 <= len(d.views) <= len(VIEWS) and len(set(d.views)) == len(d.views)
               and all(v in VIEWS for v in d.views), "data.views",
               f"{list(d.views)} must be 1-{len(VIEWS)} distinct names from {list(VIEWS)}")
        _check(bool(self.stages), "stages", "no stage defined (see configs/cascade_default.yaml)")
        sizes: dict[int, str] = {}
        for name, s in self.stages.items():
            key = f"stages.{name}"
            _check(STAGE_NAME_RE.fullmatch(name) is not None, key, "stage names may hold letters, digits, _ . -")
            for f in ("size", "width", "depth", "heads", "patch", "encoder_channels", "lift_channels"):
                _check(getattr(s, f) >= 1, f"{key}.{f}", f"must be >= 1, got {getattr(s, f)}")
            _check(s.size % s.patch == 0, f"{key}.patch", f"size {s.size} is not divisible by patch {s.patch}")
            _check(s.width % s.heads == 0, f"{key}.heads", f"width {s.width} is not divisible by heads {s.heads}")
            _check(s.mlp_ratio > 0, f"{key}.mlp_ratio", "must be > 0")
            _check(s.epochs is None or s.epochs >= 1, f"{key}.epochs", f"must be >= 1, got {s.epochs}")
            _check(s.batch_size is None or s.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
            _check(s.lr is None or s.lr > 0, f"{key}.lr", f"must be > 0, got {s.lr}")
            _check(s.size not in sizes, f"{key}.size", f"{s.size} is also the size of stage {sizes.get(s.size)!r}")
            sizes[s.size] = name
        order = self.cascade_order()
        for name in t.stages:
            _check(name in self.stages, "train.stages", f"unknown stage {name!r}; defined stages: {order}")
        _check(len(set(t.stages)) == len(t.stages), "train.stages", f"{list(t.stages)} repeats a stage")
        _check(list(t.stages) == [n for n in order if n in t.stages], "train.stages",
               f"{list(t.stages)} must follow the cascade order (coarse to fine) {order}")
        _check(t.conditioning in CASCADE_CONDITIONING, "train.conditioning",
               f"{t.conditioning!r} not in {CASCADE_CONDITIONING}")
        _check(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(t.grad_clip is None or t.grad_clip > 0, "train.grad_clip", "must be > 0 or null")
        _check(t.save_every >= 1, "train.save_every", "must be >= 1")
        _check(t.val_samples >= 0, "train.val_samples", "must be >= 0")
        _check(t.sample_every >= 1, "train.sample_every", "must be >= 1")
        _check(t.val_draws >= 1, "train.val_draws", "must be >= 1")
        if t.lr_schedule != "constant":
            parse_schedule(t.lr_schedule)
        _check(diff.timesteps >= 2, "diffusion.timesteps", f"must be >= 2, got {diff.timesteps}")
        _check(diff.ddim_steps >= 1, "diffusion.ddim_steps", "must be >= 1")
        _check(diff.physics_weight >= 0, "diffusion.physics_weight", "must be >= 0")
        _check(diff.physics_at in ("xray", "volume"), "diffusion.physics_at", f"{diff.physics_at!r} not in xray/volume")
        _check(self.wandb.mode in WANDB_MODES, "wandb.mode", f"{self.wandb.mode!r} not in {WANDB_MODES}")
        _check(self.ops.backend in OPS_BACKENDS, "ops.backend", f"{self.ops.backend!r} not in {OPS_BACKENDS}")
        _check(self.output.run_name is None or (bool(self.output.run_name) and "/" not in self.output.run_name),
               "output.run_name", "must be a non-empty folder name without '/'")


TASK_SCHEMAS["cascade"] = CascadeConfig
# ---- end cascade ----------------------------------------------------------------------------
