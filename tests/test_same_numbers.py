"""The same config gives the same numbers: short tiny runs of both trainers against numbers recorded before a
refactor (tests/golden/short_runs.json). A change that alters the model, the data, a loss, the schedule or what
is logged under a tag fails here; a pure restructuring does not.

Runs are fp32 (the CLIP targets too), eager and deterministic, so the numbers do not depend on the CPU's bf16 support.
Refresh the file only for an intended change of the numbers: HNERV_UPDATE_GOLDEN=1 pytest tests/test_same_numbers.py
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from hnerv_fast.config import load_config
from hnerv_fast.train.trainer import run
from tests.event_files import load_events

GOLDEN = Path(__file__).parent / "golden" / "short_runs.json"
FP32_EAGER = ["train.amp=none", "train.compile=none", "train.deterministic=true", "train.progress=false"]
RUNS = {
    "dual_hnerv_tiny": ("configs/dual_hnerv_tiny.yaml", [
        "train.epochs=4", "train.eval_freq=2", "train.params_every=2", "loss.pixel_loss_warmup_epochs=2",
        "clip.amp=none"]),
    "cascade_tiny": ("configs/cascade_tiny.yaml", ["train.epochs=2", "train.val_samples=0"]),
}
# Numbers that measure time or memory, not the training
UNTIMED = ("Perf/", "epoch_time")


def _final_scalars(logdir: Path) -> dict[str, float]:
    events = load_events(logdir)
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]
            if not any(part in tag for part in UNTIMED)}


def _logdir(name: str, tmp: Path) -> Path:
    config, overrides = RUNS[name]
    place = ([f"output.output_dir={tmp}", f"clip.cache_dir={tmp}/clip"] if name.startswith("dual")
             else [f"output.checkpoint_dir={tmp}", "output.run_name=golden"])
    out = run(load_config(config, [*FP32_EAGER, *overrides, *place]))
    return out / "tensorboard" if name.startswith("dual") else tmp / "tensorboard" / "golden"


@pytest.mark.parametrize("name", list(RUNS))
def test_short_run_gives_the_recorded_numbers(name, tmp_path):
    got = _final_scalars(_logdir(name, tmp_path))
    recorded = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("HNERV_UPDATE_GOLDEN") == "1":
        recorded[name] = got
        GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    want = recorded[name]
    assert sorted(got) == sorted(want), f"tags differ: missing {sorted(set(want) - set(got))}, new {sorted(set(got) - set(want))}"
    # oneDNN picks other kernels on another CPU or torch version (summation order; torch 2.11 moved a cascade
    # step's physics loss by 0.21 %): loose enough for that, far tighter than any change of the model or loss
    wrong = {tag: (got[tag], want[tag]) for tag in want
             if not math.isclose(got[tag], want[tag], rel_tol=5e-3, abs_tol=1e-5)}
    assert not wrong, f"changed numbers (got, recorded): {wrong}"
