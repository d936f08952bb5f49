"""Data-parallel training with torchrun (2 CPU processes, gloo) for both trainers, gradient
accumulation, and clean failure of a multi-process job.

Equivalence: N ranks with per-rank batch B train on the same samples per step as one process with
batch N*B (and the cascade draws the same t / noise), so the logged epoch metrics match a single
process up to float rounding."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hnerv_fast.config import load_config
from hnerv_fast.logging.layouts import CascadeTags
from hnerv_fast.logging.layouts import DualTags as T
from hnerv_fast.train import checkpoint as ckpt
from hnerv_fast.train import distributed
from hnerv_fast.train.engine import epoch_batches
from hnerv_fast.train.trainer import run
from tests.event_files import load_events, scalar_series

ROOT = Path(__file__).resolve().parents[1]
DUAL = "configs/dual_hnerv_tiny.yaml"
CASCADE = "configs/cascade_tiny.yaml"
TIMEOUT = 240  # seconds for one torchrun job on 2 shared cores

# 3 epochs (the DDP runs stop after 2 and a single process resumes the 3rd); every tag family is due
DUAL_COMMON = ("train.progress=false", "train.epochs=3", "loss.pixel_loss_warmup_epochs=1", "train.eval_freq=1",
               "train.params_every=1", "output.param_str=run")
# 10 cases -> 8 train / 2 val; both stages, generated conditioning (stage 2 DDIM-samples stage 1)
CASCADE_COMMON = ("train.progress=false", "data.num_cases=10", "train.epochs=2", "train.val_samples=1",
                  "train.sample_every=1", "train.save_every=1", "diffusion.ddim_steps=2", "train.log_every_steps=1",
                  "output.run_name=run")
DUAL_EPOCH_TAGS = (T.TRAIN_PSNR, T.PIXEL_LOSS, T.CLIP_LOSS, T.TOTAL_LOSS, T.GRAD_TOTAL, T.GRAD_RGB, T.GRAD_CLIP,
                   T.GRAD_DECODER, T.LR, "Eval/Frame/train_psnr", "Eval/Frame/val_psnr", "Eval/Frame/val_clip_sim")


def torchrun(args: list[str], env: dict | None = None, script: str = "-m hnerv_fast.train") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *script.split(), *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("WORLD_SIZE", None)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, env=full_env)


@pytest.fixture(autouse=True)
def one_thread():
    """In-process runs use one intra-op thread, like each torchrun rank (OMP_NUM_THREADS=1); on 2 shared
    cores the tiny models also run several times faster so (benchmarks/RESULTS.md, "Data-parallel scaling")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def values(acc, tag: str) -> list[float]:
    return [v for _, v in scalar_series(acc, tag)]


def event_files(logdir: Path) -> list[Path]:
    return sorted(logdir.glob("events.out.tfevents.*"))


# ------------------------------------------------------------------------------ unit: sharding
def test_shards_partition_the_single_process_batches():
    """2 ranks x B (and B with 2 accumulation steps) cover exactly the samples of 1 x 2B, step by step."""
    n, seed, epoch = 37, 3, 2
    for drop_last in (True, False):
        single = epoch_batches(n, 8, epoch, seed, drop_last, "cpu")
        ranks = [epoch_batches(n, 4, epoch, seed, drop_last, "cpu", rank=r, world_size=2) for r in range(2)]
        accum = epoch_batches(n, 4, epoch, seed, drop_last, "cpu", grad_accum_steps=2)
        assert len(ranks[0]) == len(ranks[1]) == len(single) and len(accum) == 2 * len(single)
        for i, one in enumerate(single):
            for parts in ([ranks[0][i], ranks[1][i]], accum[2 * i:2 * i + 2]):
                assert [b.ids.tolist() for b in parts] == [one.ids[:4].tolist(), one.ids[4:].tolist()]
                # weighted mean = sum(w x) / denom; averaged over the two parts = the 1 x 2B weighted mean
                assert sum(float(b.weight.sum() / b.denom) for b in parts) / 2 == pytest.approx(1.0)
                assert all(float(b.denom) == float(one.weight.sum()) / 2 for b in parts)
            assert [(b.offset, b.global_size) for b in (ranks[0][i], ranks[1][i])] == [(0, 8), (4, 8)]
        assert drop_last or float(single[-1].weight.sum()) == 37 % 8
        # real samples only (Perf/* samples/s): padding rows are not counted
        for batches in (single, ranks[0], accum):
            assert sum(b.samples for b in batches) == (32 if drop_last else 37)


def test_single_process_helpers_are_noops():
    assert (distributed.world_size(), distributed.rank(), distributed.is_main(), distributed.enabled()) == (1, 0, True, False)
    x = torch.arange(3.0)
    assert distributed.all_reduce_mean_(x) is x and x.tolist() == [0.0, 1.0, 2.0]
    assert distributed.broadcast_object("name") == "name"
    assert distributed.wrap_model(torch.nn.Linear(2, 2), torch.device("cpu")) is None


# ------------------------------------------------------------------------------ dual HNeRV
@pytest.fixture(scope="module")
def dual_single(tmp_path_factory, clip_cache):
    """One process, batch 32, 3 epochs (also fills the CLIP cache the torchrun ranks then read)."""
    out = tmp_path_factory.mktemp("dual_single")
    cfg = load_config(DUAL, [*DUAL_COMMON, "train.batch_size=32", f"output.output_dir={out}",
                             f"clip.cache_dir={clip_cache}"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: the autouse fixture does not cover it
    try:
        folder = run(cfg)
    finally:
        torch.set_num_threads(threads)
    return load_events(folder / "tensorboard")


def test_dual_ddp_matches_single_process_and_resumes_in_one(tmp_path, clip_cache, dual_single):
    out = tmp_path / "ddp"
    args = ["--config", DUAL, *DUAL_COMMON, "train.batch_size=16", "train.stop_after=2",
            f"output.output_dir={out}", f"clip.cache_dir={clip_cache}"]
    started = time.perf_counter()
    proc = torchrun(args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"torchrun 2 x dual: {time.perf_counter() - started:.1f}s")
    folder = out / "tiny" / "run"
    assert proc.stdout.count("eval epoch 2:") == 1  # only rank 0 prints
    logdir = folder / "tensorboard"
    assert len(event_files(logdir)) == 1  # only rank 0 writes TensorBoard
    assert (folder / "config.yaml").is_file() and ckpt.load(folder / "latest.pt")["epoch"] == 2
    acc = load_events(logdir)
    tags = acc.Tags()
    missing = [t for t in T.SCALARS if t not in tags["scalars"]]
    assert not missing, missing
    assert all(t in tags["histograms"] for t in T.HISTOGRAMS)
    assert any(t.startswith(T.IMAGES_PREFIX + "/") for t in tags["images"])
    # 288 training patches / (2 ranks x 16) = 9 optimizer steps per epoch, as with 1 x 32
    assert [s for s, _ in scalar_series(acc, T.BATCH_TOTAL)] == list(range(1, 19))
    for tag in DUAL_EPOCH_TAGS:
        assert values(acc, tag) == pytest.approx(values(dual_single, tag)[:2], rel=2e-3, abs=1e-5), tag

    # a single process (batch 32 = the DDP global batch) resumes the DDP checkpoint for epoch 3
    cfg = load_config(DUAL, [*DUAL_COMMON, "train.batch_size=32", f"output.output_dir={out}",
                             f"clip.cache_dir={clip_cache}"])
    run(cfg, resume="latest")
    assert ckpt.load(folder / "latest.pt")["epoch"] == 3
    acc = load_events(logdir)
    assert [s for s, _ in scalar_series(acc, T.TRAIN_PSNR)] == [1, 2, 3]
    for tag in DUAL_EPOCH_TAGS:
        assert values(acc, tag) == pytest.approx(values(dual_single, tag), rel=2e-3, abs=1e-5), tag


def test_grad_accumulation_matches_the_large_batch(tmp_path, clip_cache, dual_single):
    cfg = load_config(DUAL, [*DUAL_COMMON, "train.batch_size=16", "train.grad_accum_steps=2",
                             f"output.output_dir={tmp_path}", f"clip.cache_dir={clip_cache}"])
    acc = load_events(run(cfg) / "tensorboard")
    assert [s for s, _ in scalar_series(acc, T.BATCH_TOTAL)] == list(range(1, 28))  # 9 optimizer steps/epoch
    for tag in (*DUAL_EPOCH_TAGS, T.BATCH_TOTAL, T.BATCH_PSNR):
        assert values(acc, tag) == pytest.approx(values(dual_single, tag), rel=2e-3, abs=1e-5), tag


def test_grad_accum_steps_is_validated():
    from hnerv_fast.config import ConfigError

    with pytest.raises(ConfigError, match=r"train\.grad_accum_steps"):
        load_config(DUAL, ["train.grad_accum_steps=0"])


# ---------------------------------------------------------------------------------- cascade
def test_cascade_ddp_matches_single_process_and_resumes_in_one(tmp_path):
    single = tmp_path / "single"
    run(load_config(CASCADE, [*CASCADE_COMMON, "train.batch_size=4", f"output.checkpoint_dir={single}"]))
    ddp = tmp_path / "ddp"
    proc = torchrun(["--config", CASCADE, *CASCADE_COMMON, "train.batch_size=2", f"output.checkpoint_dir={ddp}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("done: checkpoints") == 1
    stages = ["stage_16", "stage_32"]
    logdir = ddp / "tensorboard" / "run"
    assert len(event_files(logdir)) == 1
    acc, ref = load_events(logdir), load_events(single / "tensorboard" / "run")
    expected = {CascadeTags.tag(s, n) for s in stages for n in CascadeTags.STEP + CascadeTags.EPOCH + CascadeTags.PERF
                + (CascadeTags.SKIPPED_STEPS,) + CascadeTags.SAMPLE_QUALITY}
    assert set(acc.Tags()["scalars"]) == expected
    assert len(acc.Tags()["images"]) == len(stages)
    for stage in stages:
        for name in CascadeTags.STEP:  # per-step tags: rank 0's shard (not reduced), same steps
            tag = CascadeTags.tag(stage, name)
            assert [s for s, _ in scalar_series(acc, tag)] == [s for s, _ in scalar_series(ref, tag)] == [1, 2, 3, 4]
        for name in CascadeTags.EPOCH:  # epoch tags: means over all ranks
            tag = CascadeTags.tag(stage, name)
            if name != "epoch_time":
                # The gradients agree to ~1e-7 (test_cascade_ddp_gradient_is_the_global_batch_gradient), but
                # AdamW (lr 2e-3) turns rounding in tiny gradient entries into lr-sized steps: relative noise
                # of 1e-7 on the gradients moves the tiny physics term (~0.02) by ~3% after two steps.
                rel = 0.1 if name.endswith("physics") else 1e-2
                assert values(acc, tag) == pytest.approx(values(ref, tag), rel=rel, abs=1e-5), tag
    assert sorted(p.name for p in ddp.glob("*.pt")) == sorted(p.name for p in single.glob("*.pt"))

    # resume the DDP run's stage_16 epoch-1 checkpoint in one process (batch 4): same end point
    resumed = tmp_path / "resumed"
    shutil.copytree(ddp, resumed, ignore=shutil.ignore_patterns("tensorboard"))
    run(load_config(CASCADE, [*CASCADE_COMMON, "train.batch_size=4", f"output.checkpoint_dir={resumed}"]),
        resume=str(resumed / "stage_16_epoch_1.pt"))
    for stage in stages:
        a, b = ckpt.load(single / f"{stage}_final.pt"), ckpt.load(resumed / f"{stage}_final.pt")
        assert b["epoch"] == 2 and b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-2), stage


def test_cascade_ddp_gradient_is_the_global_batch_gradient(tmp_path):
    """2 ranks x 2 cases give the gradient and step metrics of 1 x 4: same samples, same t and noise
    (drawn for the global batch and sliced per rank), DDP averaging."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "tests/ddp_grad_probe.py", "4", f"{tmp_path}/single.pt"], cwd=ROOT, check=True,
                   timeout=TIMEOUT, env=env)
    proc = torchrun([f"{tmp_path}/ddp.pt"], script="tests/ddp_grad_probe.py 2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref, got = torch.load(tmp_path / "single.pt"), torch.load(tmp_path / "ddp.pt")
    assert float((got["grad"] - ref["grad"]).norm() / ref["grad"].norm()) < 1e-5
    torch.testing.assert_close(got["metrics"], ref["metrics"], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------- failures
def test_one_failing_rank_ends_the_job(tmp_path, clip_cache, dual_single):
    started = time.perf_counter()
    proc = torchrun(["--config", DUAL, *DUAL_COMMON, "train.batch_size=16", f"output.output_dir={tmp_path}",
                     f"clip.cache_dir={clip_cache}"], env={"FAIL_RANK": "1", "FAIL_AT_STEP": "3"},
                    script="tests/ddp_failing_rank.py")
    elapsed = time.perf_counter() - started
    assert proc.returncode != 0
    assert "injected failure on rank 1 at step 3" in proc.stdout + proc.stderr
    assert elapsed < TIMEOUT
    assert not list(tmp_path.rglob("*.pt"))


def test_config_error_under_torchrun_is_one_clean_line(tmp_path):
    proc = torchrun(["--config", DUAL, "train.epochz=2", f"output.output_dir={tmp_path}"])
    assert proc.returncode != 0
    assert proc.stderr.count("error: train.epochz") == 1, proc.stderr  # rank 0 reports, rank 1 is stopped first
    assert "error (rank 1)" not in proc.stderr
    assert "hnerv_fast/" not in proc.stderr  # no traceback of ours (torchrun prints its own failure summary)
    assert not list(tmp_path.rglob("*"))
