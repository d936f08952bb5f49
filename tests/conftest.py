"""Fixtures shared by several test modules: one tiny dual-head training run serves them all."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hnerv_fast.config import load_config
from hnerv_fast.train.trainer import run
from tests.event_files import load_events

TINY = "configs/dual_hnerv_tiny.yaml"


@pytest.fixture(scope="session", autouse=True)
def float32_convolutions_in_float32():
    """cuDNN runs float32 convolutions in TF32 (10-bit mantissa) by default on A100/H100: the reference's SSIM
    blur would then drift past the float32 tolerances that the GPU tests hold the fused ops to."""
    allowed = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = allowed


@pytest.fixture(scope="session")
def clip_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("clip_cache")


def overrides(tmp: Path, clip_cache: Path, *extra: str) -> list[str]:
    return [f"output.output_dir={tmp}/out", f"clip.cache_dir={clip_cache}", "train.progress=false", *extra]


@pytest.fixture(scope="session")
def tiny_dual_run(tmp_path_factory, clip_cache):
    """The tiny config exactly as `make demo` runs it, into a temp folder: (config, run folder, its events)."""
    tmp = tmp_path_factory.mktemp("tiny")
    cfg = load_config(TINY, overrides(tmp, clip_cache))
    out = run(cfg)
    return cfg, out, load_events(out / "tensorboard")
