"""The one place that composes a training run: device, seeds, ops backend, the task's plan (registry entry),
config.yaml, the writer (or a NullWriter off rank 0) with its mirrors, and the fit loop.

Under torchrun (WORLD_SIZE > 1) the run happens inside a process group (train/distributed.py); bad input
(`UserError`) is reported by rank 0 only, as one line, and every rank exits with code 2; a run stopped by
`train.max_bad_steps` non-finite steps in a row exits with code 3. Ctrl-C during a run raises `Interrupted`,
which names the checkpoint folder (the CLI prints it as one line and exits with code 130)."""
from __future__ import annotations

from pathlib import Path

from hnerv_fast import host_memory
from hnerv_fast.atomic import check_creatable, write_bytes_atomic
from hnerv_fast.config import load_config, to_yaml
from hnerv_fast.errors import UserError, report
from hnerv_fast.logging.async_writer import AsyncSummaryWriter
from hnerv_fast.logging.null_writer import NullWriter
from hnerv_fast.ops import set_backend
from hnerv_fast.train import distributed
from hnerv_fast.train.engine import TrainingDiverged, pick_device, seed_everything
from hnerv_fast.train.registry import BUILDERS


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says where the checkpoints written so far are."""


def run(cfg, resume: str | None = None) -> Path:
    """Trains `cfg` (resuming from a checkpoint path, or "latest"); returns the checkpoint folder."""
    device = pick_device(cfg.train.device)
    if device.type == "cpu":
        host_memory.keep_freed_blocks()  # a CPU step's activations stay in the heap between steps
    with distributed.process_group(device, cfg.train.dist_timeout_s), distributed.rank0_reports((UserError,)):
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        set_backend(cfg.ops.backend)
        plan = BUILDERS[cfg.task](cfg, device, resume)
        main = distributed.is_main()  # rank 0 alone writes config, logs and checkpoints
        if plan.done:  # e.g. --resume of a finished run: no event file, config.yaml or checkpoint is touched
            if main:
                print(plan.done)
            return plan.checkpoint_dir
        check_output_folders(plan)
        replaced = plan.replaced() if main else []
        mirrors = []
        try:
            with AsyncSummaryWriter(str(plan.logdir)) if main else NullWriter() as writer:
                fits = plan.fits(writer)
                engine = next(fits)  # data, CLIP targets, resume: bad input fails before anything is written
                remove_replaced(replaced)
                if main:
                    write_config(plan.cfg, plan.config_dir)
                    mirrors = plan.mirrors()
                    for mirror in mirrors:
                        writer.add_mirror(mirror)
                writer.add_custom_scalars(plan.layout)
                while engine is not None:
                    engine.fit()
                    engine = next(fits, None)
        except KeyboardInterrupt:  # the writer has drained (its __exit__) by now
            raise Interrupted(_where_to_continue(plan.checkpoint_dir)) from None
        finally:
            for mirror in mirrors:  # after the writer drained into them
                mirror.close()
        if main:
            print(f"done: checkpoints in {plan.checkpoint_dir}\nTensorBoard logs: {plan.logdir}\n"
                  f"  view with: tensorboard --logdir {plan.view_dir or plan.logdir}")
        return plan.checkpoint_dir


def _where_to_continue(checkpoint_dir: Path) -> str:
    if any(checkpoint_dir.glob("*.pt")):  # what --resume would look for
        return f"checkpoints written so far are in {checkpoint_dir}; continue with --resume"
    return f"before the first checkpoint ({checkpoint_dir} holds none): nothing to resume, run the command again"


def run_from_args(config: str, overrides: list[str], resume: str | None) -> int:
    try:
        with distributed.rank0_reports((UserError,)):
            run(load_config(config, overrides), resume)
    except (UserError, TrainingDiverged) as exc:
        where = "" if distributed.is_main() else f" (rank {distributed.rank()})"
        report(exc, where)  # the first line: e.g. torch's unpickling errors run to several
        return 3 if isinstance(exc, TrainingDiverged) else 2
    return 0


def check_output_folders(plan) -> None:
    """An unusable output folder fails now, not after the data and CLIP targets (rank 0, which writes, looks)."""
    def check() -> None:
        for folder in (plan.checkpoint_dir, plan.logdir, plan.config_dir):
            check_creatable(folder)

    distributed.check_on_main(check)


def remove_replaced(paths: list[Path]) -> None:
    """output.overwrite=true: the earlier run's files go (the run's own new event file is not among them)."""
    for path in paths:
        path.unlink(missing_ok=True)
    if paths:
        print(f"output.overwrite=true: removed {len(paths)} files of the earlier run "
              f"({', '.join(sorted({p.name if p.suffix == '.pt' else 'event files' for p in paths}))})")


def write_config(cfg, folder: Path) -> Path:
    """The resolved config next to the logs (checkpoints carry it too)."""
    return write_bytes_atomic(to_yaml(cfg).encode(), folder / "config.yaml")
