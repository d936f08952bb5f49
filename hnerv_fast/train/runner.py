"""Builds a run from a config: device, seeds, ops backend, logger, task, engine; reports bad input cleanly.

Under torchrun (WORLD_SIZE > 1) the run happens inside a process group (train/distributed.py); bad
input is reported by rank 0 only (every rank exits with code 2)."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

from hnerv_fast.config import ConfigError, load_config, to_yaml
from hnerv_fast.train import checkpoint as ckpt
from hnerv_fast.train import distributed

# task name -> "module:function" taking (cfg, resume) and returning the run folder
RUNNERS = {
    "dual_hnerv": "hnerv_fast.train.tasks.dual_hnerv_run:run",
    "cascade": "hnerv_fast.train.tasks.cascade_run:run",
}


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (config, data, checkpoints): one clear line, exit code 2."""
    from hnerv_fast.data.clip_targets import ClipCheckpointError
    from hnerv_fast.data.ct_folder import CTFolderError
    from hnerv_fast.data.video import DataError

    return ConfigError, DataError, ClipCheckpointError, CTFolderError, ckpt.CheckpointError, FileNotFoundError


def run(cfg, resume: str | None = None) -> Path:
    from hnerv_fast.train.engine import pick_device

    module, function = RUNNERS[cfg.task].split(":")
    with distributed.process_group(pick_device(cfg.train.device), cfg.train.dist_timeout_s), \
            distributed.rank0_reports(user_errors()):
        return getattr(importlib.import_module(module), function)(cfg, resume)


def run_from_args(config: str, overrides: list[str], resume: str | None) -> int:
    errors = user_errors()
    try:
        with distributed.rank0_reports(errors):
            cfg = load_config(config, overrides)
            run(cfg, resume)
    except errors as exc:
        where = "" if distributed.is_main() else f" (rank {distributed.rank()})"
        print(f"error{where}: {exc}", file=sys.stderr)
        return 2
    return 0


def write_config(cfg, folder: Path) -> Path:
    """The resolved config next to the logs (checkpoints carry it too)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(to_yaml(cfg))
    tmp.replace(path)
    return path
