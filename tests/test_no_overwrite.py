"""Nothing is lost: re-running a finished training command without --resume must not overwrite its checkpoints.

Both trainers write into folders without a timestamp in the checkpoint names (dual: output_dir/exp_id/param_str;
cascade: output.checkpoint_dir), so the same command always aims at the same files. A run that is not resuming
stops with one line (exit code 2) before computing or writing anything; output.overwrite=true lets it train;
--resume still continues the run, and says "nothing to train" (exit 0, nothing written) once it is finished."""
from __future__ import annotations

from pathlib import Path

import pytest

from hnerv_fast.config import load_config
from hnerv_fast.errors import UserError
from hnerv_fast.train import checkpoint as ckpt
from hnerv_fast.train.__main__ import main
from hnerv_fast.train.tasks import cascade_run
from hnerv_fast.train.tasks.dual_hnerv import run_dir
from tests.event_files import load_events

DUAL = "configs/dual_hnerv_tiny.yaml"
CASCADE = "configs/cascade_tiny.yaml"
# small variants of the tiny configs (as test_interrupt.py / test_train_cascade.py MICRO use them)
DUAL_SMALL = ("train.progress=false", "train.compile=none", "train.epochs=3", "loss.pixel_loss_warmup_epochs=1",
              "train.eval_freq=1", "model.embed=pe_1.25_8", "model.fc_dim=16", "model.lower_width=8")
CASCADE_SMALL = ("train.progress=false", "data.num_cases=6", "train.epochs=3", "train.val_samples=1",
                 "diffusion.ddim_steps=2", "train.stages=[stage_16]", "train.conditioning=ground_truth")


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (checkpoints, config.yaml, event files) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _nothing_to_train(code: int, capsys, folder: Path, before: dict[str, bytes], *patterns: str) -> None:
    """A --resume with no epoch left: exit 0, one line on stdout, not a file added or changed (no event file)."""
    assert code == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nothing to train: ") and not captured.err, captured
    for pattern in patterns:
        assert pattern in lines[0], lines[0]
    assert _files(folder) == before


def _refused(code: int, capsys, *patterns: str) -> str:
    assert code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for pattern in patterns:
        assert pattern in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------- dual
def test_dual_rerun_is_refused_overwrite_trains_and_resume_continues(tmp_path, clip_cache, capsys):
    args = ["--config", DUAL, f"output.output_dir={tmp_path}/out", f"clip.cache_dir={clip_cache}", *DUAL_SMALL]
    assert main([*args, "train.stop_after=2"]) == 0
    folder = run_dir(load_config(DUAL, args[2:]))
    assert ckpt.load(folder / "latest.pt")["epoch"] == 2 and (folder / "best.pt").is_file()
    before = _files(folder)
    capsys.readouterr()

    # the same command again (no --resume): one line, exit 2, not a byte changed, no CLIP targets computed
    fresh_cache = tmp_path / "fresh_clip_cache"
    line = _refused(main([*args[:3], f"clip.cache_dir={fresh_cache}", *args[4:], "train.stop_after=2"]), capsys,
                    f"{folder} already holds checkpoints (latest.pt, epoch 2, and 1 more)", "--resume",
                    "output.overwrite=true")
    assert line.startswith("error: ")
    assert _files(folder) == before
    assert not fresh_cache.exists()
    # resuming with the same stop_after: nothing left in this invocation
    _nothing_to_train(main([*args, "train.stop_after=2", "--resume"]), capsys, folder, before,
                      f"{folder / 'latest.pt'} is at epoch 2 and train.stop_after=2")

    # --resume still continues it
    assert main([*args, "--resume"]) == 0
    assert ckpt.load(folder / "latest.pt")["epoch"] == 3
    finished = _files(folder)
    capsys.readouterr()
    _refused(main(args), capsys, "(latest.pt, epoch 3, and 1 more)")  # the finished run's command
    assert _files(folder) == finished
    _nothing_to_train(main([*args, "--resume"]), capsys, folder, finished,  # the finished run, resumed
                      "is at epoch 3 of train.epochs=3; to train longer, raise train.epochs and pass --resume")

    # output.overwrite=true with bad data: the earlier run is kept
    _refused(main([*args, "output.overwrite=true", "data.source=folder", f"data.path={tmp_path}/missing"]), capsys,
             "missing")
    assert _files(folder) == finished

    # output.overwrite=true: trains again into the same folder, in place of the earlier run (one event file:
    # TensorBoard would draw the earlier run's epochs 1-3 and this run's as one zigzag curve)
    written = (folder / "latest.pt").stat().st_mtime_ns
    assert len(list((folder / "tensorboard").glob("events.out.tfevents.*"))) == 2  # the run + its resume
    assert main([*args, "output.overwrite=true"]) == 0
    assert ckpt.load(folder / "latest.pt")["epoch"] == 3 and (folder / "latest.pt").stat().st_mtime_ns > written
    assert "output.overwrite=true: removed 4 files of the earlier run (best.pt, event files, latest.pt)" in (
        capsys.readouterr().out)
    assert len(list((folder / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert [e.step for e in load_events(folder / "tensorboard").Scalars("Train/PSNR")] == [1, 2, 3]

    # what "nothing to train" suggests: more epochs, resumed from the path (train.epochs names the run folder)
    assert main([*args, "train.epochs=4", "--resume", str(folder / "latest.pt")]) == 0
    assert ckpt.load(run_dir(load_config(DUAL, [*args[2:], "train.epochs=4"])) / "latest.pt")["epoch"] == 4


def test_dual_fresh_folder_and_other_folders_are_not_refused(tmp_path, monkeypatch):
    from hnerv_fast.train.tasks import dual_hnerv_run

    cfg = load_config(DUAL, [f"output.output_dir={tmp_path}", "output.param_str=run"])
    folder = run_dir(cfg)
    dual_hnerv_run.refuse_overwrite(folder)  # no folder yet
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("x")  # a run that stopped before its first checkpoint
    (folder / "tensorboard").mkdir()
    dual_hnerv_run.refuse_overwrite(folder)
    (folder / "best.pt").write_bytes(b"not a checkpoint")  # unreadable: still counts, no epoch in the message
    with pytest.raises(ckpt.RunExistsError, match=r"already holds checkpoints \(best\.pt\): continue"):
        dual_hnerv_run.refuse_overwrite(folder)
    assert issubclass(ckpt.RunExistsError, UserError)


# ------------------------------------------------------------------------------------------- cascade
def test_cascade_rerun_is_refused_overwrite_trains_and_resume_continues(tmp_path, capsys):
    out = tmp_path / "ckpt"
    args = ["--config", CASCADE, f"output.checkpoint_dir={out}", *CASCADE_SMALL]
    assert main([*args, "train.stop_after=2"]) == 0
    assert sorted(p.name for p in out.glob("*.pt")) == ["stage_16_best.pt", "stage_16_epoch_2.pt"]
    before = _files(out)
    capsys.readouterr()

    # the same command again: refused, nothing written (no second timestamped TensorBoard folder either)
    _refused(main([*args, "train.stop_after=2"]), capsys, f"{out} already holds checkpoints (stage_16_",
             "epoch 2, and 1 more)", "--resume", "output.overwrite=true")
    assert _files(out) == before

    # --resume (no path: the newest checkpoint) still continues it
    assert main([*args, "--resume"]) == 0
    assert ckpt.load(out / "stage_16_final.pt")["epoch"] == 3
    finished = _files(out)
    capsys.readouterr()
    _refused(main(args), capsys, "(stage_16_final.pt, epoch 3, and 2 more)")
    assert _files(out) == finished
    _nothing_to_train(main([*args, "--resume"]), capsys, out, finished,  # the last stage to train is finished
                      f"{out / 'stage_16_final.pt'} is at epoch 3 of train.epochs=3")
    _nothing_to_train(main([*args, "stages.stage_16.epochs=3", "--resume"]), capsys, out, finished,
                      "of stages.stage_16.epochs=3; to train longer, raise stages.stage_16.epochs")
    # a stage's schedule may change on resume (above), its architecture may not
    _refused(main([*args, "stages.stage_16.width=32", "--resume"]), capsys, "cannot resume from", "stages.stage_16 was")
    assert _files(out) == finished

    # output.overwrite=true: trains again into the same folder, in place of the earlier run's checkpoints
    written = (out / "stage_16_final.pt").stat().st_mtime_ns
    (out / "stage_16_epoch_9.pt").write_bytes((out / "stage_16_final.pt").read_bytes())  # of a longer run
    assert main([*args, "output.overwrite=true", "output.run_name=again", "train.save_every=2"]) == 0
    assert (out / "stage_16_final.pt").stat().st_mtime_ns > written
    assert sorted(p.name for p in out.glob("*.pt")) == ["stage_16_best.pt", "stage_16_epoch_2.pt",
                                                        "stage_16_final.pt"]
    # a fixed run name: the same TensorBoard folder, whose earlier event files go too
    assert main([*args, "output.overwrite=true", "output.run_name=again"]) == 0
    assert len(list((out / "tensorboard" / "again").glob("events.out.tfevents.*"))) == 1

    # what "nothing to train" suggests: a longer stage, resumed
    assert main([*args, "stages.stage_16.epochs=4", "--resume"]) == 0
    assert ckpt.load(out / "stage_16_final.pt")["epoch"] == 4


def test_cascade_refuses_only_the_stages_it_trains(tmp_path):
    """A later stage may be trained on its own next to the earlier stages' checkpoints (generated
    conditioning reads {stage}_final.pt there); other files do not count."""
    (tmp_path / "stage_16_final.pt").write_bytes(b"x")
    (tmp_path / "stage_16_notes.pt").write_bytes(b"x")
    (tmp_path / "stage_32_backup.pt").write_bytes(b"x")
    cascade_run.refuse_overwrite(tmp_path, ["stage_32"])
    cascade_run.refuse_overwrite(tmp_path / "missing", ["stage_16", "stage_32"])
    with pytest.raises(ckpt.RunExistsError, match=r"\(stage_16_final\.pt\): continue it with --resume"):
        cascade_run.refuse_overwrite(tmp_path, ["stage_16", "stage_32"])
    (tmp_path / "stage_32_epoch_5.pt").write_bytes(b"x")
    with pytest.raises(ckpt.RunExistsError, match=r"stage_32_epoch_5\.pt"):
        cascade_run.refuse_overwrite(tmp_path, ["stage_32"])


def test_overwrite_is_a_typed_key_of_both_trainers():
    from hnerv_fast.config import ConfigError

    assert load_config(DUAL).output.overwrite is False and load_config(CASCADE).output.overwrite is False
    assert load_config(DUAL, ["output.overwrite=true"]).output.overwrite is True
    assert load_config(CASCADE, ["output.overwrite=true"]).output.overwrite is True
    with pytest.raises(ConfigError, match="output.overwrite"):
        load_config(CASCADE, ["output.overwrite=maybe"])
