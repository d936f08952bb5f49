"""During the pixel-only warmup the CLIP head gets no Adam steps (the published trainer gives it no optimizer
state until the warmup ends), so its first real updates get Adam's full bias correction."""
from __future__ import annotations

import torch

from tests.hot_loop import dual_engine

CPU = torch.device("cpu")


def _steps(engine, params) -> set[float]:
    return {float(engine.optimizer.state[p]["step"]) for p in params}


def test_the_clip_head_counts_only_the_steps_after_the_warmup(tmp_path):
    task, engine = dual_engine(tmp_path, CPU, "train.amp=none", "train.compile=none",
                               "loss.pixel_loss_warmup_epochs=1")
    warmup = task.train_batches(1)[:3]
    task.begin_epoch(1)  # warmup: pixel loss only
    for batch in warmup:
        engine.train_step(batch)
    clip_head = list(task.model.clip_head.parameters())
    assert _steps(engine, clip_head) == {0.0}
    assert all(torch.count_nonzero(engine.optimizer.state[p]["exp_avg"]) == 0 for p in clip_head)
    task.begin_epoch(2)  # CLIP loss on
    for batch in task.train_batches(2)[:2]:
        engine.train_step(batch)
    assert _steps(engine, clip_head) == {2.0}
    assert _steps(engine, task.model.param_groups()["decoder"]) == {5.0}
