"""End-to-end Hybrid ViT cascade runs: the TensorBoard contract read back from event files, checkpoint
files and contents, exact resume across stages, bad input, W&B fallback, and that the tiny config learns."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hnerv_fast.config import CascadeConfig, ConfigError, load_config
from hnerv_fast.logging.layouts import CascadeTags as T
from hnerv_fast.train import checkpoint as ckpt
from hnerv_fast.train.trainer import run, run_from_args
from tests.event_files import custom_scalar_layout, load_events, scalar_series

TINY = "configs/cascade_tiny.yaml"
DEFAULT = "configs/cascade_default.yaml"
ROOT = Path(__file__).resolve().parents[1]
STAGES = ["stage_16", "stage_32"]


def overrides(out: Path, *extra: str) -> list[str]:
    return [f"output.checkpoint_dir={out}", "train.progress=false", *extra]


# small, fast variant for resume / error tests: 6 cases (5 train, 1 val), 1 step per epoch
MICRO = ("data.num_cases=6", "train.epochs=3", "train.val_samples=1", "diffusion.ddim_steps=2", "train.log_every_steps=1")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny config exactly as shipped, into a temp folder."""
    out = tmp_path_factory.mktemp("cascade_tiny")
    cfg = load_config(TINY, overrides(out, "output.run_name=tiny"))
    run(cfg)
    return cfg, out, load_events(out / "tensorboard" / "tiny")


def series(acc, stage: str, name: str) -> list[tuple[int, float]]:
    return scalar_series(acc, T.tag(stage, name))


def steps_per_epoch(cfg: CascadeConfig, stage: str) -> int:
    d = cfg.data
    n_train = d.num_cases - min(max(1, round(d.val_fraction * d.num_cases)), d.num_cases - 1)
    return n_train // min(cfg.stage_train(stage).batch_size, n_train)


# ------------------------------------------------------------------------------- tag contract
def test_exactly_the_contract_tags_per_stage(tiny_run):
    cfg, _, acc = tiny_run
    assert cfg.cascade_order() == STAGES
    expected = {T.tag(s, n) for s in STAGES for n in T.STEP + T.EPOCH + T.PERF + (T.SKIPPED_STEPS,) + T.SAMPLE_QUALITY}
    assert set(acc.Tags()["scalars"]) == expected


def test_cadence_steps_and_epochs(tiny_run):
    cfg, _, acc = tiny_run
    for stage in STAGES:
        e = cfg.stage_train(stage)
        total = e.epochs * steps_per_epoch(cfg, stage)
        every = e.log_every_steps
        assert every > 1 and total >= 2 * every  # the cadence is actually exercised
        for name in T.STEP:
            assert [s for s, _ in series(acc, stage, name)] == list(range(every, total + 1, every)), (stage, name)
        for name in T.EPOCH:
            assert [s for s, _ in series(acc, stage, name)] == list(range(1, e.epochs + 1)), (stage, name)


def test_loss_identities_lr_and_time(tiny_run):
    cfg, _, acc = tiny_run
    w = cfg.diffusion.physics_weight
    for stage in STAGES:
        for prefix, suffix in (("train_", ""), ("val_", ""), ("train_", "_step")):
            total = [v for _, v in series(acc, stage, f"{prefix}loss{suffix}")]
            diff = [v for _, v in series(acc, stage, f"{prefix}diffusion{suffix}")]
            phys = [v for _, v in series(acc, stage, f"{prefix}physics{suffix}")]
            np.testing.assert_allclose(total, np.add(diff, np.multiply(w, phys)), rtol=1e-5, atol=1e-6)
            assert all(p > 0 for p in phys)
        assert [v for _, v in series(acc, stage, "learning_rate")] == pytest.approx([cfg.stage_train(stage).lr] * 8)
        assert all(v > 0 for _, v in series(acc, stage, "epoch_time"))


def test_sample_images_and_layout(tiny_run):
    cfg, _, acc = tiny_run
    t = cfg.train
    for stage in STAGES:
        tags = [g for g in acc.Tags()["images"] if g.startswith(T.tag(stage, T.IMAGES) + "/")]
        assert len(tags) == t.val_samples
        epochs = cfg.stage_train(stage).epochs
        for tag in tags:
            assert [im.step for im in acc.Images(tag)] == list(range(t.sample_every, epochs + 1, t.sample_every))
            assert acc.Images(tag)[0].width == 2 * cfg.stages[stage].size + 1  # GT | sample
    layout = custom_scalar_layout(acc)
    assert set(layout) == {"Losses", "Components", "Speed and schedule", "Sample quality", "Performance"}
    assert layout["Losses"] == [f"{s} train vs val" for s in STAGES]


def test_tiny_config_learns(tiny_run):
    _, _, acc = tiny_run
    for stage in STAGES:
        val = [v for _, v in series(acc, stage, "val_loss")]
        assert val[-1] < 0.9 * val[0], (stage, val)
        assert min(val[-3:]) < min(val[:3]), (stage, val)


# ---------------------------------------------------------------------------------- checkpoints
def test_checkpoint_files_and_contents(tiny_run):
    cfg, out, acc = tiny_run
    names = sorted(p.name for p in out.glob("*.pt"))
    expected = sorted(f"{s}_{k}.pt" for s in STAGES for k in ("best", "final", "epoch_4", "epoch_8"))
    assert names == expected
    assert not list(out.rglob("*.tmp"))
    for stage in STAGES:
        val = [v for _, v in series(acc, stage, "val_loss")]
        final = ckpt.load(out / f"{stage}_final.pt")
        assert set(final) >= {"model_state_dict", "optimizer_state_dict", "scaler_state_dict", "epoch", "val_loss",
                              "config", "stage"}
        assert final["stage"] == stage and final["epoch"] == 8
        assert final["config"]["stages"][stage]["size"] == cfg.stages[stage].size
        assert final["config"]["output"]["run_name"] == "tiny"
        assert final["val_loss"] == pytest.approx(val[-1], rel=1e-5)
        assert final["optimizer_state_dict"]["state"]  # AdamW moments are saved
        four = ckpt.load(out / f"{stage}_epoch_4.pt")
        assert four["epoch"] == 4 and four["val_loss"] == pytest.approx(val[3], rel=1e-5)
        best = ckpt.load(out / f"{stage}_best.pt")
        best_epoch = int(np.argmin(val)) + 1
        assert best["epoch"] == best_epoch and best["val_loss"] == pytest.approx(min(val), rel=1e-5)
        if best_epoch == 8:  # best and final are the same state then
            for key, value in final["model_state_dict"].items():
                assert torch.equal(value, best["model_state_dict"][key])


# ---------------------------------------------------------------------------------------- resume
def test_resume_mid_stage_continues_the_cascade_exactly(tmp_path):
    common = (*MICRO, "train.deterministic=true")
    straight = tmp_path / "straight"
    run(load_config(TINY, overrides(straight, *common, "output.run_name=s")))
    part = tmp_path / "part"
    run(load_config(TINY, overrides(part, *common, "train.stop_after=2")))
    assert sorted(p.name for p in part.glob("*.pt")) == ["stage_16_best.pt", "stage_16_epoch_2.pt"]
    assert ckpt.load(part / "stage_16_epoch_2.pt")["epoch"] == 2
    run_dirs = list((part / "tensorboard").iterdir())
    assert len(run_dirs) == 1 and run_dirs[0].name.startswith("cascade-")  # default run name: a timestamp
    # resume: epoch 3 of stage_16, then stage_32 (conditioned on stage_16_final.pt, generated again)
    code = run_from_args(TINY, overrides(part, *common), str(part / "stage_16_epoch_2.pt"))
    assert code == 0
    for stage in STAGES:
        a, b = ckpt.load(straight / f"{stage}_final.pt"), ckpt.load(part / f"{stage}_final.pt")
        assert a["epoch"] == b["epoch"] == 3
        assert a["model_state_dict"].keys() == b["model_state_dict"].keys()
        for key in a["model_state_dict"]:
            assert torch.equal(a["model_state_dict"][key], b["model_state_dict"][key]), (stage, key)
        assert a["val_loss"] == b["val_loss"]
    # the resumed run logs into the checkpoint's run folder and continues its numbering
    assert list((part / "tensorboard").iterdir()) == run_dirs
    acc = load_events(run_dirs[0])
    assert [s for s, _ in series(acc, "stage_16", "val_loss")] == [1, 2, 3]
    assert [s for s, _ in series(acc, "stage_16", "train_loss_step")] == [1, 2, 3]
    assert [s for s, _ in series(acc, "stage_32", "val_loss")] == [1, 2, 3]


def test_resume_latest_picks_newest_and_final_moves_on(tmp_path):
    out = tmp_path / "out"
    common = (*MICRO, "train.conditioning=ground_truth")
    run(load_config(TINY, overrides(out, *common, "train.stages=[stage_16]")))
    assert (out / "stage_16_final.pt").is_file() and not list(out.glob("stage_32_*"))
    # --resume (no path) from stage_16's final checkpoint: stage_16 is done, stage_32 is trained
    assert run_from_args(TINY, overrides(out, *common), "latest") == 0
    assert ckpt.load(out / "stage_32_final.pt")["epoch"] == 3


# -------------------------------------------------------------------------------------- bad input
def _assert_clean_failure(code: int, capsys, patterns: list[str], out: Path) -> None:
    assert code == 2
    err = capsys.readouterr().err
    for pattern in patterns:
        assert pattern in err, err
    assert "Traceback" not in err
    assert not list(out.rglob("*.pt")) if out.exists() else True


def test_unknown_stage_via_cli(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "hnerv_fast.train", "--config", TINY, "train.stages=[stage_99]",
         f"output.checkpoint_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "train.stages" in proc.stderr and "stage_99" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("*"))


def test_empty_data_folder(tmp_path, capsys):
    empty = tmp_path / "ct"
    empty.mkdir()
    out = tmp_path / "out"
    code = run_from_args(TINY, overrides(out, "data.source=folder", f"data.root={empty}"), None)
    _assert_clean_failure(code, capsys, [str(empty), "no volumes"], out)
    assert not out.exists()


def test_volume_xray_shape_mismatch(tmp_path, capsys):
    folder = tmp_path / "ct"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        np.save(folder / f"{name}.npy", rng.random((12, 24, 24)).astype(np.float32))
    np.save(folder / "b_frontal.npy", rng.random((24, 24)).astype(np.float32))
    np.save(folder / "b_lateral.npy", rng.random((24, 24)).astype(np.float32))  # must be H x D = 24 x 12
    out = tmp_path / "out"
    code = run_from_args(TINY, overrides(out, "data.source=folder", f"data.root={folder}", "data.val_fraction=0.34"), None)
    _assert_clean_failure(code, capsys, ["b_lateral.npy", "aspect"], out)


def test_later_stage_needs_earlier_weights(tmp_path, capsys):
    out = tmp_path / "out"
    code = run_from_args(TINY, overrides(out, *MICRO, "train.stages=[stage_32]"), None)
    _assert_clean_failure(code, capsys, ["stage_16_final.pt", "train.conditioning=ground_truth"], out)
    assert not out.exists()


def test_missing_resume_checkpoint(tmp_path, capsys):
    out = tmp_path / "out"
    code = run_from_args(TINY, overrides(out, *MICRO), str(tmp_path / "stage_16_epoch_9.pt"))
    _assert_clean_failure(code, capsys, ["checkpoint not found"], out)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"train\.stages.*stage_64"):
        load_config(TINY, ["train.stages=[stage_64]"])
    with pytest.raises(ConfigError, match=r"train\.stages.*order"):
        load_config(TINY, ["train.stages=[stage_32,stage_16]"])
    with pytest.raises(ConfigError, match=r"stages\.stage_32\.patch"):
        load_config(TINY, ["stages.stage_32.patch=5"])
    with pytest.raises(ConfigError, match=r"train\.conditioning"):
        load_config(TINY, ["train.conditioning=teacher"])
    with pytest.raises(ConfigError, match=r"data\.root"):
        load_config(TINY, ["data.source=folder"])
    with pytest.raises(ConfigError, match=r"wandb\.mode"):
        load_config(TINY, ["wandb.mode=cloud"])


def test_default_config_is_the_reference():
    cfg = load_config(DEFAULT)
    assert cfg.cascade_order() == ["stage_64", "stage_128", "stage_256"]
    s = cfg.stages
    assert [(s[n].width, s[n].depth, s[n].heads) for n in cfg.cascade_order()] == [(256, 4, 4), (384, 6, 6), (512, 8, 8)]
    t = cfg.train
    assert (t.lr, t.weight_decay, t.batch_size, t.grad_clip, t.save_every, t.log_every_steps) == (1e-4, 0.01, 4, 1.0, 5, 50)
    assert t.conditioning == "generated" and cfg.diffusion.timesteps == 1000 and cfg.data.xray_size == 512
    assert cfg.wandb.mode == "disabled" and cfg.output.checkpoint_dir == "checkpoints"
    tiny = load_config(TINY, ["stages.stage_32.epochs=5", "stages.stage_32.lr=0.01"])
    assert tiny.stage_train("stage_32").epochs == 5 and tiny.stage_train("stage_32").lr == 0.01
    assert tiny.stage_train("stage_16").epochs == tiny.train.epochs


# ------------------------------------------------------------------------------------ W&B (optional)
def test_wandb_missing_warns_once_and_trains(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    out = tmp_path / "out"
    cfg = load_config(TINY, overrides(out, *MICRO, "train.epochs=1", "train.stages=[stage_16]", "wandb.mode=offline"))
    with pytest.warns(UserWarning, match="wandb") as record:
        run(cfg)
    assert len([w for w in record if "wandb" in str(w.message)]) == 1
    assert (out / "stage_16_final.pt").is_file()


def test_wandb_mirror_axes():
    from hnerv_fast.logging.wandb_mirror import WandbMirror

    class FakeRun:
        def __init__(self):
            self.metrics, self.logged, self.finished = {}, [], False

        def define_metric(self, name, step_metric=None, hidden=False):
            self.metrics[name] = step_metric

        def log(self, values):
            self.logged.append(values)

        def finish(self):
            self.finished = True

    fake = FakeRun()
    mirror = WandbMirror(fake, ["stage_16"])
    assert fake.metrics["stage_16/train_loss_step"] == "stage_16/global_step"
    # every tag the stage writes has an axis: the per-step ones the step, all others the epoch
    for n in T.STEP + T.EPOCH + T.PERF + (T.SKIPPED_STEPS,) + T.SAMPLE_QUALITY:
        axis = "global_step" if n in T.STEP else "epoch"
        assert fake.metrics[f"stage_16/{n}"] == f"stage_16/{axis}", n
    mirror.log({"stage_16/train_loss_step": 0.5, "stage_16/train_physics_step": 0.1}, step=50)
    mirror.log({"stage_16/val_loss": 0.4, "stage_16/epoch_time": 1.0}, step=2)
    assert fake.logged[0]["stage_16/global_step"] == 50 and fake.logged[1]["stage_16/epoch"] == 2
    mirror.close()
    assert fake.finished


def test_health_warnings_are_printed_once_and_logged(tmp_path, capsys):
    # a factor just above 1 makes the diffusion-vs-physics balance rule fire on the first epoch
    out = tmp_path / "out"
    cfg = load_config(TINY, overrides(out, *MICRO, "train.stages=[stage_16]", "output.run_name=h",
                                      "health.diffusion_physics_factor=1.0001"))
    run(cfg)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[health]")]
    assert len(printed) == 1 and "stage_16/train_diffusion" in printed[0], printed
    assert "Health/warnings/text_summary" in load_events(out / "tensorboard" / "h").Tags()["tensors"]
