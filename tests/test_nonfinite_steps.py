"""A step with a non-finite loss or gradient norm is skipped on the device (weights and optimizer state
untouched), counted per epoch (Train/skipped_steps, {stage}/skipped_steps), warned about once, and
`train.max_bad_steps` of them in a row stop the run with exit code 3, keeping the earlier checkpoints.
NaN is injected the way bad data arrives: a poisoned sample (its coordinates, its X-ray)."""
from __future__ import annotations

import math

import pytest
import torch

import hnerv_fast.train.tasks.dual_hnerv as dual
from hnerv_fast.config import load_config
from hnerv_fast.train import checkpoint as ckpt
from hnerv_fast.train.trainer import run, run_from_args
from tests.event_files import load_events, scalar_series
from tests.hot_loop import cascade_engine, dual_engine

CPU = torch.device("cpu")
TINY = "configs/dual_hnerv_tiny.yaml"


def _snapshot(engine):
    params = [p.detach().clone() for p in engine.task.model.parameters()]
    state = [{k: v.clone() for k, v in s.items()} for s in engine.optimizer.state.values()]  # every parameter's
    return params, state


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _poison_batch(task, batch):
    task.coords[task.split_ids["train"][batch.ids[0]]] = float("nan")


def test_a_nan_batch_changes_no_weight_and_no_optimizer_state(tmp_path):
    task, engine = dual_engine(tmp_path, CPU, "train.amp=none", "train.compile=none")
    task.begin_epoch(1)
    good, bad, after = task.train_batches(1)[:3]
    engine.train_step(good)  # optimizer state exists
    before = _snapshot(engine)
    _poison_batch(task, bad)
    engine.train_step(bad)
    params, state = _snapshot(engine)
    assert _same(before[0], params)
    assert all(_same(b.values(), s.values()) for b, s in zip(before[1], state, strict=True))  # moments, step counts
    assert engine.skipped.item() == 1 and engine.bad_run.item() == 1
    engine.train_step(after)  # a finite step updates again and ends the run of bad steps
    assert not torch.equal(before[0][0], next(engine.task.model.parameters()))
    assert engine.bad_run.item() == 0 and engine.worst_run.item() == 1


def test_the_cascade_skips_a_nan_xray_batch(tmp_path):
    task, engine = cascade_engine(tmp_path, CPU, "train.amp=none", "train.compile=none")
    task.begin_epoch(1)
    first, second = task.train_batches(1)[:2]
    engine.train_step(first)
    before = _snapshot(engine)
    task.data.xrays[task.data.train_rows[second.ids[0]]] = float("nan")
    engine.train_step(second)
    params, _ = _snapshot(engine)
    assert _same(before[0], params)
    assert engine.skipped.item() == 1


def test_skipped_steps_are_logged_per_epoch_and_warned_once(tmp_path, capsys, monkeypatch):
    """One poisoned sample: one bad step per epoch (9 steps), far below max_bad_steps; the run finishes."""
    original = dual.DualHNeRVTask.begin_epoch

    def poison_one_sample(self, epoch):
        original(self, epoch)
        self.coords[self.split_ids["train"][0]] = float("nan")

    monkeypatch.setattr(dual.DualHNeRVTask, "begin_epoch", poison_one_sample)
    out = run(load_config(TINY, [*_overrides(tmp_path), "train.epochs=2"]))
    events = load_events(out / "tensorboard")
    assert scalar_series(events, "Train/skipped_steps") == [(1, 1.0), (2, 1.0)]
    assert all(torch.isfinite(torch.tensor(v)) for _, v in scalar_series(events, "Train/Loss/total_loss"))
    # the epoch means are over the 8 steps taken, not the 9 run (the skipped step's NaN batch values excluded)
    per_batch = scalar_series(events, "Train_Batch/total_loss")
    for epoch, mean in scalar_series(events, "Train/Loss/total_loss"):
        taken = [v for s, v in per_batch if (epoch - 1) * 9 < s <= epoch * 9 and math.isfinite(v)]
        assert len(taken) == 8 and mean == pytest.approx(sum(taken) / 8, rel=1e-5), (epoch, taken)
    assert capsys.readouterr().out.count("optimizer step(s) skipped") == 1


def _overrides(tmp_path):
    return [f"output.output_dir={tmp_path}/out", f"clip.cache_dir={tmp_path}/clip", "train.progress=false",
            "train.compile=none", "loss.pixel_loss_warmup_epochs=1"]


def test_too_many_bad_steps_in_a_row_stop_the_run_with_exit_code_3(tmp_path, capsys, monkeypatch):
    """Every sample poisoned from epoch 2 on: epoch 1's checkpoint stays, epoch 2 stops the run (exit 3)."""
    original = dual.DualHNeRVTask.begin_epoch

    def poison_from_epoch_2(self, epoch):
        original(self, epoch)
        if epoch == 2:
            self.coords.fill_(float("nan"))

    monkeypatch.setattr(dual.DualHNeRVTask, "begin_epoch", poison_from_epoch_2)
    out = tmp_path / "out"
    code = run_from_args(TINY, [*_overrides(tmp_path), "train.epochs=3", "train.max_bad_steps=4"], None)
    assert code == 3
    err = capsys.readouterr().err
    assert "train.max_bad_steps=4" in err and "Traceback" not in err
    saved = sorted(p.name for p in out.rglob("*.pt"))
    assert saved and all("latest" in n or "epoch" in n or "best" in n for n in saved)
    latest = next(p for p in out.rglob("latest.pt"))
    assert ckpt.load(latest)["epoch"] == 1
