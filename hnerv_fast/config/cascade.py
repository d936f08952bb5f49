"""Hybrid ViT X-ray -> CT cascade sections (read by hnerv_fast/train/tasks/cascade*.py) and their validation."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Dict, List, NamedTuple, Optional, Union

from hnerv_fast.config.common import Cosine, EngineConfig, OpsConfig, check, parse_schedule, validate_engine
from hnerv_fast.config.health import HealthThresholds
from hnerv_fast.names import VIEWS

CASCADE_SOURCES = ("phantoms", "folder")
CASCADE_CONDITIONING = ("generated", "ground_truth")
WANDB_MODES = ("disabled", "offline", "online")
STAGE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
PLATEAU_RE = re.compile(r"plateau_([0-9.]+)_(\d+)")


class Plateau(NamedTuple):
    """Parsed `plateau_<factor>_<patience>`: the lr is multiplied by `factor` once the validation loss has not
    improved for more than `patience` epochs (train/schedule.py PlateauSchedule)."""

    factor: float
    patience: int


def parse_plateau(text: str) -> Plateau:
    m = PLATEAU_RE.fullmatch(text)
    check(m is not None, "train.lr_schedule", f"{text!r} is not plateau_<factor>_<patience>")
    plateau = Plateau(float(m.group(1)), int(m.group(2)))
    check(0 < plateau.factor < 1, "train.lr_schedule", f"plateau factor {plateau.factor} must be in (0, 1)")
    return plateau


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


def check_views(views, key: str) -> None:
    check(1 <= len(views) <= len(VIEWS) and len(set(views)) == len(views) and all(v in VIEWS for v in views),
          key, f"{list(views)} must be 1-{len(VIEWS)} distinct names from {list(VIEWS)}")


@dataclass
class StageConfig:
    """One entry of `stages` (its key is the stage's name: tags, checkpoint file names): the stage's network,
    which models/cascade.py CascadeStage is built from, and its per-stage training overrides."""

    size: int = 64  # volume edge S (S^3 voxels)
    width: int = 256  # transformer width
    depth: int = 4  # AdaLN transformer blocks
    heads: int = 4  # attention heads (width % heads == 0)
    patch: int = 4  # 3D patch edge p (size % p == 0); tokens = (size / patch)^3
    mlp_ratio: float = 4.0
    encoder_channels: int = 32  # width of the 2D X-ray conv encoder
    lift_channels: int = 8  # channels of the lifted 3D X-ray feature volume
    cross_attention: bool = False  # volume tokens also attend to X-ray tokens in every block
    grad_checkpointing: bool = False  # recompute the blocks in backward (memory for 128^3 / 256^3)
    epochs: Optional[int] = None  # null = train.epochs
    batch_size: Optional[int] = None  # null = train.batch_size
    lr: Optional[float] = None  # null = train.lr

    @property
    def grid(self) -> int:
        """Patch grid edge G = size / patch."""
        return self.size // self.patch

    @property
    def num_tokens(self) -> int:
        return self.grid ** 3

    def validate(self, key: str) -> None:
        """``key``: where the section sits (``stages.<name>``), for the messages."""
        for f in ("size", "width", "depth", "heads", "patch", "encoder_channels", "lift_channels"):
            v = getattr(self, f)
            check(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"{key}.{f}", f"must be >= 1, got {v!r}")
        check(self.size % self.patch == 0, f"{key}.patch", f"size {self.size} is not divisible by patch {self.patch}")
        check(self.width % self.heads == 0, f"{key}.heads", f"width {self.width} is not divisible by heads {self.heads}")
        check(self.mlp_ratio > 0, f"{key}.mlp_ratio", "must be > 0")
        check(self.epochs is None or self.epochs >= 1, f"{key}.epochs", f"must be >= 1, got {self.epochs}")
        check(self.batch_size is None or self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        check(self.lr is None or self.lr > 0, f"{key}.lr", f"must be > 0, got {self.lr}")


@dataclass
class CascadeTrainConfig(EngineConfig):
    epochs: int = 100
    batch_size: int = 4
    lr: float = 1e-4
    amp: str = "fp16"  # GradScaler mixed precision on GPU (bf16: no scaler); on CPU as auto (bf16 where native)
    grad_clip: Optional[float] = 1.0
    log_every_steps: int = 50
    # stop_after (EngineConfig): ends this invocation after that epoch of the stage being trained
    # (later stages are not started; a {stage}_epoch_{N}.pt is written to resume from)
    stages: List[str] = field(default_factory=list)  # stage names to train, in cascade order; [] = all
    weight_decay: float = 0.01  # AdamW
    # plateau_<factor>_<patience> (default, as the published trainer: ReduceLROnPlateau(factor=0.5, patience=5)
    # on the validation loss) | cosine_<up_ratio>_<up_pow>_<min_lr> | constant; per stage
    lr_schedule: str = "plateau_0.5_5"
    save_every: int = 5  # {stage}_epoch_{N}.pt every N epochs
    # Conditioning of stage N > 1 on stage N-1's volume:
    #   generated (default): stage N-1 (its {stage}_final.pt) DDIM-samples the volume of every case
    #     once (cached for the whole stage), as at inference -> no train/test mismatch;
    #   ground_truth: the ground-truth volume at stage N-1's size (teacher forcing; cheaper).
    conditioning: str = "generated"
    val_samples: int = 2  # validation cases DDIM-sampled and shown as images (0 = none)
    sample_every: int = 1  # epochs between validation images
    val_draws: int = 4  # fixed (t, noise) draws per validation case (stratified t, seeded)

    @cached_property
    def schedule(self) -> Union[Cosine, Plateau, None]:
        """The parsed lr_schedule; None = constant."""
        if self.lr_schedule == "constant":
            return None
        if self.lr_schedule.startswith("plateau"):
            return parse_plateau(self.lr_schedule)
        return parse_schedule(self.lr_schedule)


@dataclass
class DiffusionConfig:
    timesteps: int = 1000  # cosine schedule
    physics_weight: float = 0.3  # total = diffusion + physics_weight * physics (0.3: the published trainer's value)
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
    # a fresh run (no --resume) refuses a checkpoint_dir that already holds {stage}_*.pt of a stage it
    # trains, unless true
    overwrite: bool = False


@dataclass
class CascadeConfig:
    task: str = "cascade"
    data: CascadeDataConfig = field(default_factory=CascadeDataConfig)
    stages: Dict[str, StageConfig] = field(default_factory=dict)  # defined in the YAML (configs/cascade_*.yaml)
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

    def stage_train(self, name: str) -> CascadeTrainConfig:
        """train.* with the stage's epochs / batch_size / lr filled in (what the Engine of that stage reads)."""
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
        t, d, diff = self.train, self.data, self.diffusion
        validate_engine(t, check_stop_after=False)
        check(t.stop_after is None or t.stop_after >= 1, "train.stop_after", "must be >= 1")
        check(d.source in CASCADE_SOURCES, "data.source", f"{d.source!r} not in {CASCADE_SOURCES}")
        check(d.source != "folder" or bool(d.root), "data.root", "required for data.source=folder")
        check(d.source != "phantoms" or d.num_cases >= 2, "data.num_cases",
              f"needs >= 2 (train + validation), got {d.num_cases}")
        check(0.0 < d.val_fraction < 1.0, "data.val_fraction", f"must be in (0, 1), got {d.val_fraction}")
        check(d.xray_size >= 1, "data.xray_size", f"must be >= 1, got {d.xray_size}")
        check(d.supersample >= 1, "data.supersample", f"must be >= 1, got {d.supersample}")
        check_views(d.views, "data.views")
        self._validate_stages()
        check(t.conditioning in CASCADE_CONDITIONING, "train.conditioning",
              f"{t.conditioning!r} not in {CASCADE_CONDITIONING}")
        check(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        check(t.grad_clip is None or t.grad_clip > 0, "train.grad_clip", "must be > 0 or null")
        check(t.save_every >= 1, "train.save_every", "must be >= 1")
        check(t.val_samples >= 0, "train.val_samples", "must be >= 0")
        check(t.sample_every >= 1, "train.sample_every", "must be >= 1")
        check(t.val_draws >= 1, "train.val_draws", "must be >= 1")
        _ = t.schedule  # parsed once, here: a bad string fails at load time
        check(diff.timesteps >= 2, "diffusion.timesteps", f"must be >= 2, got {diff.timesteps}")
        check(diff.ddim_steps >= 1, "diffusion.ddim_steps", "must be >= 1")
        check(diff.physics_weight >= 0, "diffusion.physics_weight", "must be >= 0")
        check(diff.physics_at in ("xray", "volume"), "diffusion.physics_at", f"{diff.physics_at!r} not in xray/volume")
        check(self.wandb.mode in WANDB_MODES, "wandb.mode", f"{self.wandb.mode!r} not in {WANDB_MODES}")
        self.ops.validate()
        check(self.output.run_name is None or (bool(self.output.run_name) and "/" not in self.output.run_name),
              "output.run_name", "must be a non-empty folder name without '/'")

    def _validate_stages(self) -> None:
        t = self.train
        check(bool(self.stages), "stages", "no stage defined (see configs/cascade_default.yaml)")
        sizes: dict[int, str] = {}
        for name, s in self.stages.items():
            key = f"stages.{name}"
            check(STAGE_NAME_RE.fullmatch(name) is not None, key, "stage names may hold letters, digits, _ . -")
            s.validate(key)
            check(s.size not in sizes, f"{key}.size", f"{s.size} is also the size of stage {sizes.get(s.size)!r}")
            sizes[s.size] = name
        order = self.cascade_order()
        for name in t.stages:
            check(name in self.stages, "train.stages", f"unknown stage {name!r}; defined stages: {order}")
        check(len(set(t.stages)) == len(t.stages), "train.stages", f"{list(t.stages)} repeats a stage")
        check(list(t.stages) == [n for n in order if n in t.stages], "train.stages",
              f"{list(t.stages)} must follow the cascade order (coarse to fine) {order}")
