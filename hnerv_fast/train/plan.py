"""What a task's builder hands the trainer (train/trainer.py): where the run writes, and its fits.

A builder `build(cfg, device, resume) -> RunPlan` checks the config, loads what can fail on bad input that
does not need the writer (resume checkpoint, run name) and returns; the trainer then opens the writer and
pulls the fits one by one: `fits(writer)` builds each fit's task with the writer injected and yields its
Engine. The first is pulled before config.yaml is written, so bad data or a bad resume checkpoint leaves no
file behind; the next one only after the previous fit ended (a cascade stage may need the earlier stage's
trained weights), and the generator may stop early (train.stop_after).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator


@dataclass
class RunPlan:
    cfg: Any  # the resolved config, written to config_dir/config.yaml
    checkpoint_dir: Path
    logdir: Path  # TensorBoard event files
    config_dir: Path
    layout: Any  # custom_scalars layout
    fits: Callable[[Any], Iterator[Any]]  # writer -> Engines, built in turn
    mirrors: Callable[[], list] = field(default=list)  # rank 0's extra scalar sinks (e.g. W&B), closed at the end
    view_dir: Path | None = None  # what `tensorboard --logdir` should point at (default: logdir)
    done: str | None = None  # a resumed run with no epoch left: the trainer says this and writes nothing
    # output.overwrite=true: the earlier run's files this run replaces (its checkpoints, event files). Listed
    # before the writer opens, removed once the first fit is built (bad input keeps them), so TensorBoard
    # does not draw the two runs as one and a stale checkpoint is not resumed later.
    replaced: Callable[[], list[Path]] = field(default=list)
