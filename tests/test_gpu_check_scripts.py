"""`make gpu-check` runs on a lent GPU only, where a mistake in its scripts costs device time: what of them
can run on CPU runs here. The op-bandwidth rows (benchmarks/gpu_ops_bandwidth.py) run with the CPU backends,
small shapes and a stand-in timer, and every row's accuracy column must show agreement with the reference;
scripts/gpu_check.sh runs up to its no-GPU exit, past the extension probe."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_ops_bandwidth as script
from hnerv_fast import ops

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs the whole check")
@pytest.mark.skipif(importlib.util.find_spec("hnerv_fast._C_cuda") is None, reason="CUDA extension not built")
def test_gpu_check_finds_a_built_extension_then_stops_without_a_gpu(tmp_path):
    """The probe must see an extension built beforehand (scripts/gpu_prebuild.sh), or the device would spend
    minutes rebuilding it (or lose the cuda backend where it has no nvcc)."""
    env = dict(os.environ, PY=sys.executable, WHEELS="", PARTS="")
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    summary = (tmp_path / "summary.txt").read_text()
    assert proc.returncode == 2 and "no CUDA device visible" in summary, proc.stdout + proc.stderr
    stamp = ROOT / "hnerv_fast" / "_C_prebuilt.sha"  # left by scripts/gpu_prebuild.sh (never in a clean clone)
    stale = stamp.exists() and stamp.read_text() != subprocess.run(
        ["bash", "scripts/ext_sources_hash.sh"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert ("extension: prebuilt from other sources" if stale else "extension: imports") in summary, summary


@pytest.fixture
def cpu_script(monkeypatch):
    calls = []

    def one_call_ms(fn, budget_s=0.25):  # the real timer needs CUDA events; the rows need only a time
        calls.append(fn())
        return 1.0

    monkeypatch.setattr(script, "timeit_ms", one_call_ms)
    monkeypatch.setattr(script, "SHAPES", [(3, 3, 20, 24)])
    monkeypatch.setattr(script, "NORM_TOTALS", (5_000,))
    yield script.Table(copy_gbs=1.0), [b for b in ("cpp", "reference") if b in ops.available_backends("cpu")], calls
    ops.set_backend("auto")


def _rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("OPS|")]


def test_image_rows_for_every_backend_dtype_and_op(cpu_script, capsys):
    table, backends, calls = cpu_script
    pm = pytest.importorskip("pytorch_msssim")
    script.bench_images(table, torch.device("cpu"), backends, pm)
    rows = _rows(capsys.readouterr().out)
    assert not [r for r in rows if "ERROR" in r], rows
    for backend in backends:
        for tag in ("f32", "bf16/f32"):
            mine = [r for r in rows if f" {backend} {tag} " in r]
            assert [r.split()[1] for r in mine] == ["psnr", "fusion6", "fusion6"], mine
            psnr_err = float(re.search(r"max\|dPSNR\| (\S+) dB", mine[0]).group(1))
            loss_err, grad_err = map(float, re.search(r"rel err loss (\S+) grad (\S+)", mine[2]).groups())
            grad_tol = 1e-4 if tag == "f32" else 8e-3  # a bf16 prediction gets a bf16 gradient (8-bit mantissa)
            assert psnr_err < 1e-3 and loss_err < 1e-4 and grad_err < grad_tol, mine
    assert sum("pytorch-msssim" in r for r in rows) == 2 and calls


def test_norm_rows_agree_with_foreach(cpu_script, capsys):
    table, backends, _ = cpu_script
    script.bench_norms(table, torch.device("cpu"), backends)
    rows = _rows(capsys.readouterr().out)
    assert [r.split()[4] for r in rows] == ["foreach", *backends], rows
    for row in rows[1:]:
        assert float(re.search(r"rel err (\S+)", row).group(1)) < 1e-5, row


def test_a_backend_that_falls_back_is_an_error_row(cpu_script, capsys):
    """`use` refuses a silent fallback: the row says ERROR and names the backend, the other rows still come."""
    table, _, _ = cpu_script
    with pytest.warns(RuntimeWarning, match="falling back"):
        script.bench_norms(table, torch.device("cpu"), ["cuda", "reference"])
    rows = _rows(capsys.readouterr().out)
    assert any("cuda: ERROR RuntimeError: backend cuda fell back" in r for r in rows), rows
    assert any(r.split()[4] == "reference" for r in rows), rows


def test_step_profile_rows_on_cpu(monkeypatch, capsys):
    """benchmarks/gpu_step_profile.py on CPU (tiny config, eager): a wall-time row, then host rows; no kernels."""
    from benchmarks import gpu_step_profile as profile_script

    monkeypatch.setattr(profile_script, "CONFIG", "configs/dual_hnerv_tiny.yaml")
    monkeypatch.setattr(profile_script, "WARMUP", 1)
    monkeypatch.setattr(profile_script, "STEPS", 2)
    assert profile_script.main((("none", "none", False),), ["train.batch_size=4"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("PROF|")]
    summary = next(r for r in rows if r[1] == "none/none" and r[2] == "wall")
    assert float(summary[3]) > 0 and float(summary[7]) == 0  # no device on this machine
    host = [r for r in rows if r[1:3] == ["none/none", "host"]]
    assert len(host) == profile_script.TOP and not [r for r in rows if r[2] == "kernel"]
    assert any("Optimizer.step" in " ".join(r) for r in host), host
