"""The cascade's plateau schedule (train.lr_schedule=plateau_<factor>_<patience>, the default, as the published
trainer's ReduceLROnPlateau(factor=0.5, patience=5) on the validation loss): the same rule as torch's
scheduler, and its adjustments show on {stage}/learning_rate."""
from __future__ import annotations

import math

import pytest
import torch

from hnerv_fast.config import ConfigError, Plateau, load_config
from hnerv_fast.train.schedule import PlateauSchedule
from hnerv_fast.train.trainer import run
from tests.event_files import load_events, scalar_series

LOSSES = [1.0, 0.9, 0.95, 0.91, 0.9, 0.8999999, 0.85, 0.86, 0.87, 0.88, 0.89, 0.9, 0.84, 0.85, 0.86]


@pytest.mark.parametrize("factor, patience", [(0.5, 0), (0.5, 2), (0.1, 3)])
def test_the_rule_is_torchs_reduce_lr_on_plateau(factor, patience):
    ours = PlateauSchedule(factor, patience)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=factor, patience=patience)
    for loss in LOSSES:
        ours.step(loss)
        theirs.step(loss)
        assert math.isclose(ours.multiplier, opt.param_groups[0]["lr"], rel_tol=1e-12), loss


def test_parsed_and_checked_once():
    cfg = load_config("configs/cascade_tiny.yaml", ["train.lr_schedule=plateau_0.5_5"])
    assert cfg.train.schedule == Plateau(0.5, 5)
    assert load_config("configs/cascade_default.yaml").train.schedule == Plateau(0.5, 5)
    with pytest.raises(ConfigError, match="train.lr_schedule"):
        load_config("configs/cascade_tiny.yaml", ["train.lr_schedule=plateau_1.5_5"])


def test_learning_rate_tag_follows_the_validation_loss(tmp_path):
    """patience 0: every epoch whose val loss is not a new best halves the next epoch's lr."""
    cfg = load_config("configs/cascade_tiny.yaml", [
        f"output.checkpoint_dir={tmp_path}", "output.run_name=p", "train.epochs=4", "train.stages=[stage_16]",
        "train.lr_schedule=plateau_0.5_0", "train.val_samples=0", "train.progress=false", "train.lr=0.05"])
    run(cfg)
    events = load_events(tmp_path / "tensorboard" / "p")
    val = [v for _, v in scalar_series(events, "stage_16/val_loss")]
    lrs = [v for _, v in scalar_series(events, "stage_16/learning_rate")]
    replay = PlateauSchedule(0.5, 0)
    expected = []
    for loss in val:
        expected.append(0.05 * replay.multiplier)
        replay.step(loss)
    assert lrs == pytest.approx(expected, rel=1e-6)
    assert len(set(expected)) > 1, (val, lrs)  # the run did reduce the lr


def test_a_resumed_run_continues_the_plateau_schedule(tmp_path):
    """The schedule's state (best loss, patience count, current factor) is in the checkpoint: a run stopped
    after epoch 2 and resumed logs the uninterrupted run's learning rates."""
    common = ["train.epochs=5", "train.stages=[stage_16]", "train.lr_schedule=plateau_0.5_0", "train.val_samples=0",
              "train.progress=false", "train.lr=0.05", "train.deterministic=true", "output.run_name=p"]
    run(load_config("configs/cascade_tiny.yaml", [f"output.checkpoint_dir={tmp_path}/a", *common]))
    stopped = load_config("configs/cascade_tiny.yaml", [f"output.checkpoint_dir={tmp_path}/b", *common])
    run(load_config("configs/cascade_tiny.yaml",
                    [f"output.checkpoint_dir={tmp_path}/b", *common, "train.stop_after=2"]))
    run(stopped, resume="latest")
    straight, resumed = (scalar_series(load_events(tmp_path / r / "tensorboard" / "p"), "stage_16/learning_rate")
                         for r in ("a", "b"))
    assert [s for s, _ in resumed] == [s for s, _ in straight] == [1, 2, 3, 4, 5]
    assert [v for _, v in resumed] == pytest.approx([v for _, v in straight], rel=1e-6)
    assert straight[2][1] < 0.05, straight  # the premise: the state saved at epoch 2 had already reduced the lr
