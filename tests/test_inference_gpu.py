"""The commands that use a trained dual-head model, on a CUDA device: the same numbers as on the CPU (up to
TF32 convolutions), so a GPU user's evaluation, decoded frames, compressed file and search agree with the CPU's.
Skipped without a device; `make gpu-check` runs it (marker `gpu`)."""
from __future__ import annotations

import pytest
import torch

from hnerv_fast import precision
from hnerv_fast.compress import compress
from hnerv_fast.decode import decode
from hnerv_fast.evaluate import evaluate
from hnerv_fast.inference.dual import load_trained_dual
from hnerv_fast.search import search

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")]


def test_frames_and_evaluation_on_cuda_match_the_cpu(tiny_dual_run, clip_cache, tmp_path, monkeypatch):
    # CLIP targets in float32 on both: `clip.amp=auto` is bf16 on a CPU with native bf16 (the GPU host's
    # may have it), float32 on CUDA, and bf16 targets alone move the mean similarity by ~1e-3
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    checkpoint = tiny_dual_run[1] / "latest.pt"
    cpu = load_trained_dual(checkpoint, torch.device("cpu"))
    gpu = load_trained_dual(checkpoint, torch.device("cuda"))
    times = torch.tensor([0.0, 7.5, 39.0])
    torch.testing.assert_close(gpu.frames(times).cpu(), cpu.frames(times), atol=5e-3, rtol=0)
    on = {dev: evaluate(checkpoint, tmp_path / dev, device=dev, clip_cache=clip_cache)["splits"] for dev in ("cpu", "cuda")}
    for split in ("train", "val"):
        assert on["cuda"][split]["frame_psnr_mean"] == pytest.approx(on["cpu"][split]["frame_psnr_mean"], abs=0.05)
        assert on["cuda"][split]["clip_sim_mean"] == pytest.approx(on["cpu"][split]["clip_sim_mean"], abs=2e-3)


def test_decode_compress_search_run_on_cuda(tiny_dual_run, tmp_path):
    checkpoint = tiny_dual_run[1] / "latest.pt"
    times, _ = decode(checkpoint, tmp_path / "frames", frames="0:8", device="cuda")  # PNGs: no `av` needed
    assert len(times) == 8 and len(list((tmp_path / "frames").glob("*.png"))) == 8
    report = compress(checkpoint, tmp_path / "m.hnvc", bits=8, device="cuda")
    before, after = report["metrics"]["original"]["psnr"], report["metrics"]["compressed"]["psnr"]
    assert after == pytest.approx(before, abs=0.1)
    hits = search(checkpoint, text="a red car", top_k=3, cache_dir=tmp_path / "cache", device="cuda")
    assert len(hits) == 3 and hits[0].score >= hits[-1].score
