"""train.amp: which precision runs where, and a bf16 step on CPU keeps fp32 losses and metrics."""
from __future__ import annotations

import pytest
import torch

from hnerv_fast.config import ConfigError, load_config
from hnerv_fast import precision
from hnerv_fast.train.engine import Engine
from hnerv_fast.train.tasks.dual_hnerv import DualHNeRVTask

CPU, GPU = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "none")])
def test_auto_uses_bf16_only_on_cpus_with_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.resolve_amp("auto", CPU) == expected
    assert precision.resolve_amp("fp16", CPU) == expected  # no fast fp16 on a CPU: as auto
    assert precision.resolve_amp("auto", GPU) == "none"  # GPU bf16 not measured yet: explicit only


def test_explicit_settings():
    assert precision.resolve_amp("bf16", CPU) == "bf16"
    assert precision.resolve_amp("fp16", GPU) == "fp16"
    assert precision.resolve_amp("none", GPU) == "none"


def test_bad_amp_value_is_a_config_error():
    with pytest.raises(ConfigError, match="train.amp"):
        load_config("configs/dual_hnerv_tiny.yaml", ["train.amp=int8"])


def test_bf16_step_on_cpu_runs_the_decoder_in_bf16_and_keeps_losses_fp32(tmp_path):
    cfg = load_config("configs/dual_hnerv_tiny.yaml", [
        f"clip.cache_dir={tmp_path}/clip", "train.progress=false", "train.amp=bf16", "train.compile=none",
        "loss.pixel_loss_warmup_epochs=0"])
    task = DualHNeRVTask(cfg, CPU)
    engine = Engine(task, cfg.train, CPU, tmp_path / "ckpt")
    seen, images = [], []
    task.model.blocks.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    task.model.register_forward_hook(lambda module, args, out: images.append(out[0].dtype))
    task.begin_epoch(1)
    batches = task.train_batches(1)
    first, _ = engine.train_step(batches[0])
    for batch in batches[1:]:
        metrics, norms = engine.train_step(batch)
    assert seen and set(seen) == {torch.bfloat16}
    assert set(images) == {torch.float32}  # the output activation runs in float32 (models/hnerv_dual.py)
    assert metrics.dtype == torch.float32 and norms.dtype == torch.float32
    assert torch.isfinite(metrics).all() and torch.isfinite(norms).all()
    assert all(p.dtype == torch.float32 for p in task.model.parameters())  # master weights stay fp32
    assert metrics[0] > first[0]  # PSNR improves over the epoch: the bf16 gradients train the model


def test_compile_auto_on_cpu_only_for_runs_that_pay_it_back():
    from hnerv_fast.train.engine import CPU_COMPILE_MIN_STEPS, resolve_compile_mode, wants_graph_step

    assert resolve_compile_mode("auto", CPU, CPU_COMPILE_MIN_STEPS - 1) == "none"
    assert resolve_compile_mode("auto", CPU, CPU_COMPILE_MIN_STEPS) == "default"
    assert resolve_compile_mode("auto", GPU, 1) == "default"
    assert resolve_compile_mode("none", CPU, 10**6) == "none"
    assert resolve_compile_mode("reduce-overhead", GPU, 1) == "reduce-overhead"
    # compile=auto on one GPU also captures the whole step; not under DDP (never run on several GPUs), not on CPU
    assert wants_graph_step(False, "auto", GPU, world_size=1)
    assert not wants_graph_step(False, "auto", GPU, world_size=2)
    assert not wants_graph_step(False, "auto", CPU, world_size=1)
    assert not wants_graph_step(False, "reduce-overhead", GPU, world_size=1)
    assert wants_graph_step(True, "none", GPU, world_size=1)


def test_long_cpu_runs_compile_and_short_ones_do_not(tmp_path):
    from hnerv_fast.train.tasks.dual_hnerv import DualHNeRVTask as Task

    for config, overrides, expected in (("configs/dual_hnerv_tiny.yaml", [], "none"),
                                        ("configs/dual_hnerv_tiny.yaml", ["train.epochs=200"], "default")):
        cfg = load_config(config, [f"clip.cache_dir={tmp_path}/clip", "train.progress=false", *overrides])
        engine = Engine(Task(cfg, CPU), cfg.train, CPU, tmp_path / "ckpt")  # compiles lazily: cheap here
        assert engine.compile_mode == expected, (overrides, engine.compile_mode)
