"""Mixed precision of a run (`train.amp`), decided once per device; the step's autocast context.

    none  float32 everywhere
    bf16  bfloat16 autocast (CPU or GPU); no loss scaling needed
    fp16  float16 autocast + GradScaler on GPU; a CPU has no fast fp16 arithmetic, so there it runs as `auto`
          (the cascade's default: its CPU stage in bf16 holds its validation loss and sample quality,
          benchmarks/RESULTS.md)
    auto  CPU: bf16 where the processor has native bfloat16 arithmetic (AVX512-BF16 or AMX), float32
          elsewhere (emulated bf16 is slower than float32); GPU: float32 (the bf16 paths of the fused
          ops are not measured on a device yet: benchmarks/RESULTS_gpu.md)

Losses, PSNR and logged metrics stay float32 under autocast: the fused ops compute a bf16 prediction
against the unrounded float32 target in float32 (hnerv_fast/ops/psnr.py: kernel_pair).
"""
from __future__ import annotations

import contextlib

import torch


def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bfloat16 matrix/convolution work natively on this CPU."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def resolve_amp(amp: str, device: torch.device) -> str:
    """The precision that runs on `device` for the config value `amp`: "none", "bf16" or "fp16"."""
    if amp == "fp16" and device.type != "cuda":
        amp = "auto"
    if amp == "auto":
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "none"
    return amp


def autocast(amp: str, device: torch.device):
    """The autocast context of a resolved precision (see `resolve_amp`) on `device`."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
