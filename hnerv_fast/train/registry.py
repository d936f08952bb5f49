"""The task registry: config `task` name -> its builder `build(cfg, device, resume) -> RunPlan` (train/plan.py).

Adding a model: a Task in train/tasks/, a builder next to it, one line here, and its config schema in config/.
"""
from __future__ import annotations

from hnerv_fast.train.tasks import cascade_run, dual_hnerv_run

BUILDERS = {
    "dual_hnerv": dual_hnerv_run.build,
    "cascade": cascade_run.build,
}
