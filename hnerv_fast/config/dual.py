"""Dual-head patch HNeRV sections (read by hnerv_fast/train/tasks/dual_hnerv*.py) and their validation.

String settings (`data.data_split`, `model.embed`, `train.lr_schedule`) keep their YAML form in the fields
(config.yaml and checkpoints store them as written); their parsed values are cached properties, computed
by `validate()` (so a bad string fails at load time) and read by the task.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import List, NamedTuple, Optional

from hnerv_fast.config.common import (AMP_MODES, ConfigError, Cosine, EngineConfig, OpsConfig, check,
                                     parse_schedule, validate_engine)
from hnerv_fast.config.health import HealthThresholds

from hnerv_fast.names import ACTIVATIONS, OUT_ACTIVATIONS
from hnerv_fast.names import VIDEO_SOURCES as DATA_SOURCES

# A copy of ops/reference.py PIXEL_LOSSES (the ops library imports nothing else of the package; loading a
# config imports no torch); tests/test_config.py checks that they agree.
PIXEL_LOSSES = ("L1", "L2", "SSIM", "MS-SSIM") + tuple(f"Fusion{i}" for i in range(1, 13))


class DataSplit(NamedTuple):
    """Parsed `a_b_c`: frame position i trains when i % c < a, validates when i % c >= b (data/patches.py)."""

    a: int
    b: int
    c: int


def parse_data_split(data_split: str) -> DataSplit:
    """`"a_b_c"` with `1 <= a <= b <= c`; ConfigError (a ValueError) naming data.data_split."""
    parts = str(data_split).split("_")
    try:
        if len(parts) != 3:
            raise ValueError
        a, b, c = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(
            f"data.data_split must be 'a_b_c' with three ints (e.g. '9_10_10'), got {data_split!r}"
        ) from None
    if c <= 0:
        raise ConfigError(f"data.data_split {data_split!r}: c must be > 0")
    if a <= 0:
        raise ConfigError(f"data.data_split {data_split!r}: a must be >= 1 (a=0 gives no training frames)")
    if a > b:
        raise ConfigError(f"data.data_split {data_split!r}: need a <= b, got a={a} > b={b}")
    if b > c:
        raise ConfigError(f"data.data_split {data_split!r}: need b <= c, got b={b} > c={c}")
    return DataSplit(a, b, c)


class Embed(NamedTuple):
    """Parsed `pe_<base>_<levels>` (the positional encoding of models/blocks.py)."""

    base: float
    levels: int


EMBED_RE = re.compile(r"pe_([0-9.]+)_(\d+)")


def parse_embed(text: str) -> Embed:
    m = EMBED_RE.fullmatch(text)
    check(m is not None, "model.embed", f"{text!r} is not of the form pe_<base>_<levels> (e.g. pe_1.25_80)")
    return Embed(float(m.group(1)), int(m.group(2)))


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

    @cached_property
    def split(self) -> DataSplit:
        return parse_data_split(self.data_split)


@dataclass
class ClipConfig:
    model: str = "ViT-B-32"
    pretrained: Optional[str] = None  # open_clip hub tag, local checkpoint path, or null = random init
    cache_dir: str = "output/clip_cache"
    batch_size: int = 64
    # precision of the encoder computing the targets: auto = bf16 where the CPU has native bf16 (cosine to the
    # fp32 targets > 0.9999), fp32 elsewhere (GPUs included); none = fp32; bf16 (hnerv_fast/precision.py)
    amp: str = "auto"


@dataclass
class HNeRVModelConfig:
    """The `model` section, which is also the architecture DualHNeRV (models/hnerv_dual.py) is built from."""

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

    @cached_property
    def embed_spec(self) -> Embed:
        return parse_embed(self.embed)

    # The decoder's shape, read by models/hnerv_dual.py (this section is the model's spec; the CLIP width
    # comes from the targets)
    def output_size(self) -> tuple[int, int]:
        """The decoded patch (h, w): fc_hw times the product of the strides."""
        scale = math.prod(self.dec_strds)
        return self.fc_hw[0] * scale, self.fc_hw[1] * scale

    def widths(self) -> list[int]:
        """Channel width after each block: shrinks by `reduce` per stage, floored at lower_width."""
        widths, ngf = [], self.fc_dim
        for _ in self.dec_strds:
            ngf = int(max(round(ngf / self.reduce), self.lower_width))
            widths.append(ngf)
        return widths

    def kernels(self) -> list[int]:
        """Kernel size grows by 2 per stage from ks_min, capped at ks_max (HNeRV's decoder)."""
        return [min(self.ks_min + 2 * i, self.ks_max) for i in range(len(self.dec_strds))]


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
    # also evaluate at epochs E - k: the published trainer evaluates at E-4, E-2 and E
    eval_final_offsets: List[int] = field(default_factory=lambda: [0, 2, 4])
    params_every: int = 10
    eval_images: int = 2  # frames shown as predicted-vs-target images at each eval

    @cached_property
    def schedule(self) -> Cosine:
        return parse_schedule(self.lr_schedule)


@dataclass
class DualOutputConfig:
    output_dir: str = "output/patch_dual"
    exp_id: str = "default"
    param_str: Optional[str] = None  # null = built from the main hyper-parameters
    # a fresh run (no --resume) refuses a run folder that already holds latest.pt / best.pt, unless true
    overwrite: bool = False


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

    def validate(self) -> None:
        validate_engine(self.train)
        d, m, loss, t = self.data, self.model, self.loss, self.train
        check(d.source in DATA_SOURCES, "data.source", f"{d.source!r} not in synthetic/folder/video")
        check(d.source == "synthetic" or bool(d.path), "data.path", f"required for data.source={d.source}")
        check(d.resize is None or len(d.resize) == 2, "data.resize", "must be [H, W]")
        _ = (d.split, m.embed_spec, t.schedule)  # parsed once, here: bad strings fail at load time
        check(len(m.fc_hw) == 2, "model.fc_hw", "must be [h, w]")
        check(len(m.dec_strds) >= 1 and all(s >= 1 for s in m.dec_strds), "model.dec_strds", "needs strides >= 1")
        check(m.act in ACTIVATIONS, "model.act", f"{m.act!r} not in {sorted(ACTIVATIONS)}")
        check(m.out_act in OUT_ACTIVATIONS, "model.out_act", f"{m.out_act!r} not in tanh/sigmoid/none")
        check(loss.pixel in PIXEL_LOSSES, "loss.pixel", f"{loss.pixel!r} not in {list(PIXEL_LOSSES)}")
        check(loss.clip_weight >= 0, "loss.clip_weight", "must be >= 0")
        check(
            0 <= loss.pixel_loss_warmup_epochs <= t.epochs,
            "loss.pixel_loss_warmup_epochs",
            f"{loss.pixel_loss_warmup_epochs} must be between 0 and train.epochs ({t.epochs})",
        )
        check(t.eval_freq >= 1, "train.eval_freq", "must be >= 1")
        check(all(k >= 0 for k in t.eval_final_offsets), "train.eval_final_offsets",
              f"must be >= 0, got {list(t.eval_final_offsets)}")
        check(t.params_every >= 1, "train.params_every", "must be >= 1")
        check(self.clip.amp in AMP_MODES, "clip.amp", f"{self.clip.amp!r} not in {AMP_MODES}")
        self.ops.validate()
