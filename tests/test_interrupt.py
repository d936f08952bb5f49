"""Ctrl-C during training: a real SIGINT to a running tiny dual training. The process stops (no hang, not
reported as finished: exit code 130 and one `interrupted: ...` line naming the run folder, no traceback) and
every epoch the trainer reported before the interrupt has its scalars on disk, in order. (That the writer
drains a long queue on an exception is tested with a slow writer thread in test_async_writer.py: here the
queue is nearly empty when the signal arrives.) A SIGINT during a checkpoint save waits for the save's end.)"""
from __future__ import annotations

import importlib.abc
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hnerv_fast.config import load_config
from hnerv_fast.train.interrupts import deferred_sigint
from hnerv_fast.train.tasks.dual_hnerv import run_dir
from tests.hot_loop import dual_engine
from tests.event_files import load_events

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_sigint_keeps_every_reported_epoch(tmp_path):
    overrides = [f"output.output_dir={tmp_path}/out", f"clip.cache_dir={tmp_path}/clip", "train.progress=false",
                 "train.epochs=200", "train.eval_freq=1000", "model.embed=pe_1.25_8", "model.fc_dim=16",
                 "model.lower_width=8", "train.compile=none"]
    proc = subprocess.Popen([sys.executable, "-u", "-m", "hnerv_fast.train", "--config", "configs/dual_hnerv_tiny.yaml",
                             *overrides], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reported = []
    deadline = time.monotonic() + 240
    try:
        for line in proc.stdout:  # epoch lines are printed on the writer thread, after the values are written
            m = re.match(r"epoch (\d+)/200", line)
            if m:
                reported.append(int(m.group(1)))
            if len(reported) >= 3 or time.monotonic() > deadline:
                break
        assert len(reported) >= 3, "the training printed fewer than 3 epochs"
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    cfg = load_config("configs/dual_hnerv_tiny.yaml", overrides)
    assert proc.returncode == 130, rest  # interrupted, not finished
    assert "Traceback" not in rest and rest.strip().splitlines()[-1] == (
        f"interrupted: checkpoints written so far are in {run_dir(cfg)}; continue with --resume"), rest
    steps = [e.step for e in load_events(run_dir(cfg) / "tensorboard").Scalars("Train/PSNR")]
    assert steps[: len(reported)] == reported and steps == list(range(1, len(steps) + 1)), (steps, reported)


@pytest.fixture
def default_sigint_handler():
    """The handler a plain `python -m hnerv_fast.train` has (a test runner may install its own)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_sigint_in_a_deferred_block_is_raised_after_the_block(default_sigint_handler):
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_sigint():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs on the main thread between bytecodes: here, inside the block
            finished.append(True)
    assert finished == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with deferred_sigint():  # no signal: nothing raised
        pass


def test_sigint_during_a_checkpoint_save_writes_every_file_then_stops(tmp_path, default_sigint_handler):
    task, engine = dual_engine(tmp_path, torch.device("cpu"))
    extra = task.checkpoint_extra

    def interrupted_extra():  # Ctrl-C while the checkpoint's state is being built
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        return extra()

    task.checkpoint_extra = interrupted_extra
    with pytest.raises(KeyboardInterrupt):
        engine.save(["latest.pt", "best.pt"], 1)
    for name in ("latest.pt", "best.pt"):
        assert torch.load(tmp_path / "ckpt" / name, weights_only=False)["epoch"] == 1


def test_ctrl_c_while_the_trainer_imports_is_one_line(monkeypatch, capsys):
    """Ctrl-C in the seconds `python -m hnerv_fast.train` spends importing torch: `interrupted`, exit 130."""
    from hnerv_fast.train.__main__ import main

    class InterruptedImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "hnerv_fast.train.trainer":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "hnerv_fast.train.trainer")
    monkeypatch.setattr(sys, "meta_path", [InterruptedImport(), *sys.meta_path])
    assert main(["--config", "configs/dual_hnerv_tiny.yaml"]) == 130
    assert capsys.readouterr().err == "interrupted\n"
