"""Bad output paths, a misplaced --resume and Ctrl-C give one `error: ...` / `interrupted: ...` line on stderr
and a non-zero exit code, never a traceback."""
from __future__ import annotations

import errno

import pytest

from hnerv_fast.atomic import save_atomic, write_atomic, write_bytes_atomic
from hnerv_fast.data import clip_targets
from hnerv_fast.errors import UserError
from hnerv_fast.train import engine
from hnerv_fast.train.__main__ import main

TINY = "configs/dual_hnerv_tiny.yaml"


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


def stderr_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("write", [lambda p: write_bytes_atomic(b"x", p), lambda p: save_atomic({"x": 1}, p)])
def test_atomic_write_under_a_file_names_the_path(a_file, write):
    target = a_file / "sub" / "latest.pt"
    with pytest.raises(UserError, match=rf"cannot write {target}: Not a directory") as info:
        write(target)
    assert isinstance(info.value, OSError)  # callers that caught the OSError still do


def test_failed_write_names_the_path_and_leaves_no_temp_file(tmp_path):
    def disk_full(handle):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match=rf"^cannot write {tmp_path / 'x.pt'}: No space left on device$"):
        write_atomic(tmp_path / "x.pt", disk_full)
    assert not list(tmp_path.iterdir())


def train(tmp_path, clip_cache, *extra: str, resume: list[str] = ()) -> int:
    return main(["--config", TINY, f"output.output_dir={tmp_path}/out", f"clip.cache_dir={clip_cache}",
                 "train.progress=false", "train.epochs=1", "loss.pixel_loss_warmup_epochs=0", *extra, *resume])


def no_encoder(*args, **kwargs):
    raise AssertionError("the CLIP encoder ran before the output folders were checked")


def test_output_dir_is_a_file_fails_before_embedding(tmp_path, a_file, capsys, monkeypatch):
    monkeypatch.setattr(clip_targets, "load_clip_image_encoder", no_encoder)
    assert train(tmp_path, tmp_path / "fresh_clip", f"output.output_dir={a_file}") == 2
    assert stderr_line(capsys).startswith(f"error: cannot write {a_file}/")
    assert not (tmp_path / "fresh_clip").exists()


def test_clip_cache_dir_is_a_file_fails_before_embedding(tmp_path, a_file, capsys, monkeypatch):
    monkeypatch.setattr(clip_targets, "load_clip_image_encoder", no_encoder)
    assert train(tmp_path, a_file) == 2
    assert stderr_line(capsys).startswith(f"error: cannot write {a_file}/clip_")


def test_resume_swallowing_an_override_says_where_resume_goes(tmp_path, clip_cache, capsys):
    assert train(tmp_path, clip_cache, resume=["--resume", "train.stop_after=12"]) == 2
    line = stderr_line(capsys)
    assert line.startswith("error: --resume train.stop_after=12:") and "after the overrides" in line, line


def test_resume_path_with_equals_sign_is_still_a_path(tmp_path, clip_cache, capsys):
    bad = tmp_path / "lr=0.1.pt"
    bad.write_bytes(b"not a checkpoint")
    assert train(tmp_path, clip_cache, resume=["--resume", str(bad)]) == 2
    line = stderr_line(capsys)
    assert str(bad) in line and "after the overrides" not in line, line


@pytest.mark.parametrize("saved", [False, True])
def test_ctrl_c_during_fit_is_one_line_naming_the_checkpoints(tmp_path, clip_cache, capsys, monkeypatch, saved):
    """With a checkpoint written it says where and to resume; before the first one, that there is nothing to
    resume (the advice would fail: --resume finds no checkpoint)."""
    def interrupted_fit(self):
        if saved:
            self.save(["latest.pt"], 1)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.Engine, "fit", interrupted_fit)
    try:
        code = train(tmp_path, clip_cache)
    except KeyboardInterrupt:  # would stop the whole pytest session
        pytest.fail("Ctrl-C escaped main() as a traceback")
    assert code == 130
    line = stderr_line(capsys)
    assert line.startswith("interrupted: ") and f"{tmp_path}/out/" in line, line
    assert ("continue with --resume" in line) == saved and ("nothing to resume" in line) != saved, line
