import stat

import pytest
import torch

from hnerv_fast import atomic

from hnerv_fast.train import checkpoint as ckpt


def test_atomic_save_and_weights_only_load(tmp_path):
    state = {"w": torch.arange(4.0), "epoch": 3, "config": {"a": [1, 2]}, "rng": ckpt.rng_state()}
    path = ckpt.save_atomic(state, tmp_path / "x" / "latest.pt")
    loaded = ckpt.load(path)
    assert loaded["epoch"] == 3 and loaded["config"] == {"a": [1, 2]}
    assert torch.equal(loaded["w"], state["w"])
    assert list(path.parent.iterdir()) == [path]  # no temp file left


def test_failed_save_leaves_old_file_intact(tmp_path):
    path = ckpt.save_atomic({"v": 1}, tmp_path / "latest.pt")

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ckpt.save_atomic({"v": Unpicklable()}, path)
    assert ckpt.load(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="cannot read"):
        ckpt.load(bad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rng_state_restores_from_a_checkpoint_loaded_onto_cuda(tmp_path):
    """Resuming on a GPU loads the checkpoint with map_location=cuda: its RNG states arrive as CUDA tensors."""
    ckpt.save_atomic({"rng": ckpt.rng_state()}, tmp_path / "c.pt")
    want = torch.rand(4), torch.rand(4, device="cuda")
    state = ckpt.load(tmp_path / "c.pt", map_location="cuda")["rng"]
    assert state["torch"].is_cuda
    ckpt.set_rng_state(state)
    assert torch.equal(torch.rand(4), want[0]) and torch.equal(torch.rand(4, device="cuda"), want[1])


def test_written_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    """A checkpoint is as readable as any other output (config.yaml, PNGs): 0666 less the umask."""
    path = ckpt.save_atomic({"a": torch.ones(1)}, tmp_path / "c.pt")
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~atomic._UMASK
