"""CLIP target embedding on a cache miss: the encoder in fp32 vs bf16 autocast (clip.amp), same patches.

The dual default config's video is 120 frames of 128x256 cut into 8 patches of 64x64 (960 patches); a cold
run embeds them all once. Timed here on the first PATCHES of them with the default ViT-B-32 and the tiny
configs' ViT-S-32 (random init: the cost of the real weights), a fresh cache folder each round, so every
round is a cache miss (model build included, as on a real miss). bf16 runs only where the CPU has native
bf16 (what clip.amp=auto picks); on other CPUs it is skipped.

Run: .venv/bin/python -m pytest benchmarks/test_clip_targets_bench.py --benchmark-only -s -p no:cacheprovider
"""
from __future__ import annotations

import itertools

import pytest
import torch

from benchmarks.ratios import record_ratio
from hnerv_fast.data.clip_targets import clip_patch_targets
from hnerv_fast.precision import cpu_has_native_bf16

PATCHES = 256


@pytest.fixture(scope="module")
def patches():
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (PATCHES, 3, 64, 64), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize("model", ["ViT-B-32", "ViT-S-32"])
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_clip_targets_cold(benchmark, patches, tmp_path, model, amp):
    if amp == "bf16" and not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16: clip.amp=auto keeps fp32")
    folders = (tmp_path / str(i) for i in itertools.count())
    benchmark.pedantic(lambda: clip_patch_targets(patches, model_name=model, pretrained=None,
                                                  cache_dir=next(folders), amp=amp),
                       rounds=3, iterations=1, warmup_rounds=1)
    record_ratio(f"CLIP targets {model}, {PATCHES} patches", f"amp={amp}", benchmark)
