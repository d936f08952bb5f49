"""python -m hnerv_fast.compress: quantisation within half a step, what the bit depth costs in PSNR, file sizes,
files that decode accepts, and one-line errors (exit 2) for bad, truncated or corrupt input."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hnerv_fast import compress as compress_cli
from hnerv_fast import decode as decode_cli
from hnerv_fast.data.patches import PatchGrid, to_patches
from hnerv_fast.data.video import load_frames
from hnerv_fast.inference.compressed import FORMAT_VERSION, decode_bytes, encode_model, is_compressed
from hnerv_fast.inference.dual import load_trained_dual
from hnerv_fast.inference.quantize import dequantize, quantize
from hnerv_fast.ops import patch_psnr

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tiny_dual_run) -> Path:
    return tiny_dual_run[1] / "latest.pt"


@pytest.fixture(scope="module")
def weights(checkpoint) -> dict:
    return torch.load(checkpoint, weights_only=True)


@pytest.fixture(scope="module")
def reports(checkpoint, tmp_path_factory) -> dict:
    """The tiny run compressed per channel at 8, 6 and 4 bits, and at 8 bits without the CLIP head."""
    tmp = tmp_path_factory.mktemp("compress")
    runs = {}
    for bits, clip in ((8, True), (6, True), (4, True), (8, False)):
        out = tmp / f"tiny_{bits}{'' if clip else '_noclip'}.hnvc"
        runs[bits, clip] = compress_cli.compress(checkpoint, out, bits=bits, per="channel", keep_clip_head=clip,
                                                 device="cpu")
    return runs


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ------------------------------------------------------------------------------------------------ quantisation
@pytest.mark.parametrize("per", ["channel", "tensor"])
def test_dequantised_weights_are_within_half_a_step(weights, per):
    for name, w in weights["model_state_dict"].items():
        if w.dim() < 2:
            continue
        q = quantize(w, 8, per)
        assert q.channels == (w.shape[0] if per == "channel" else 1)
        assert q.symbols.min() >= 0 and q.symbols.max() <= 255
        step = torch.from_numpy(q.step.astype(np.float32)).view(-1, *[1] * (w.dim() - 1))
        err = (dequantize(q) - w).abs()
        assert bool((err <= step / 2 * (1 + 1e-5) + 1e-7).all()), name
        assert float(err.max()) > 0.1 * float(step.min())  # really quantised, not passed through


@pytest.mark.parametrize("weight", [
    torch.full((3, 4), 0.3),  # constant channels
    torch.linspace(-1e-6, 1e-6, 12).view(3, 4),  # a range far below float16's normal numbers
    torch.tensor([[7e4, -9e4], [1.0, 2.0]]),  # beyond float16: the grid falls back to float32
])
def test_quantisation_edge_cases_stay_within_half_a_step(weight):
    for per in ("channel", "tensor"):
        q = quantize(weight, 4, per)
        step = torch.from_numpy(q.step.astype(np.float32)).view(-1, 1)
        assert bool((q.step > 0).all()) and np.isfinite(q.step).all() and np.isfinite(q.lo).all()
        err = (dequantize(q) - weight).abs()
        float32_ulp = weight.abs().view(q.channels, -1) * 2 ** -23  # the restored value is a float32
        assert bool((err.view(q.channels, -1) <= step / 2 * (1 + 1e-6) + float32_ulp).all()), (per, err, step)


def test_the_grid_covers_the_lowest_weights_at_16_bits():
    """At 16 bits a step is far finer than float16's resolution of the grid's start: `lo` must be rounded down
    (outward), or each channel's lowest weights fall below the grid and lose more than half a step."""
    w = 0.1 * torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    for per in ("channel", "tensor"):
        q = quantize(w, 16, per)
        assert q.lo.dtype == np.float16
        step = torch.from_numpy(q.step.astype(np.float32)).view(-1, 1)
        err = (dequantize(q) - w).abs().view(q.channels, -1)
        float32_ulp = w.abs().view(q.channels, -1) * 2 ** -23
        assert bool((err <= step / 2 * (1 + 1e-6) + float32_ulp).all()), per


def test_file_round_trip_restores_the_quantised_weights_exactly(weights):
    state = weights["model_state_dict"]
    data, stats = encode_model(state, config=weights["config"], video=weights["video"], epoch=weights["epoch"],
                               bits=8, granularity="channel")
    decoded = decode_bytes(data, Path("mem"))
    assert decoded["video"] == weights["video"] and decoded["config"] == weights["config"]
    assert decoded["compression"] == {"bits": 8, "granularity": "channel", "clip_head": True}
    for name, w in state.items():
        restored = decoded["model_state_dict"][name]
        if w.dim() < 2:  # biases: float16
            assert torch.equal(restored, w.half().float()), name
        else:
            assert torch.equal(restored, dequantize(quantize(w, 8, "channel"))), name
    # the range coder spends within 0.1 % of the symbols' empirical entropy
    assert stats.entropy_bytes <= stats.stream_bytes < 1.001 * stats.entropy_bytes + 64
    assert stats.file_bytes == len(data)


def test_a_symbol_far_rarer_than_the_commonest_still_round_trips():
    """Frequencies are scaled to 16 bits: a symbol seen once next to one seen 200,000 times must keep a non-zero
    frequency, or the range coder cannot code it (one outlier weight in a large, flat tensor)."""
    flat = torch.zeros(2, 100_000)
    flat[0, 0] = 1.0
    state = {"decoder.weight": flat}
    data, _ = encode_model(state, config={"task": "dual_hnerv"}, video={"num_frames": 1}, epoch=1, bits=8,
                           granularity="tensor")
    restored = decode_bytes(data, Path("mem"))["model_state_dict"]["decoder.weight"]
    assert torch.equal(restored, dequantize(quantize(flat, 8, "tensor"))) and restored[0, 0] > 0.99


# ------------------------------------------------------------------------------------------------ the command
def test_psnr_drop_is_tiny_at_8_bits_and_grows_as_bits_fall(reports):
    before = reports[8, True]["metrics"]["original"]["psnr"]
    after = {bits: reports[bits, True]["metrics"]["compressed"]["psnr"] for bits in (8, 6, 4)}
    assert before - after[8] < 0.1, (before, after)
    assert after[8] > after[6] > after[4], after
    assert before - after[4] > 0.1  # 4 bits do cost something: the measurement sees the quantisation


def test_sizes_and_bits_per_pixel(reports):
    r8, r6, r4, no_clip = reports[8, True], reports[6, True], reports[4, True], reports[8, False]
    fp32 = r8["fp32_bytes"]
    assert fp32 == 4 * 417_374  # the tiny model's parameters
    assert fp32 > r8["file_bytes"] > r6["file_bytes"] > r4["file_bytes"]
    assert r8["file_bytes"] < fp32 / 3.5  # 8 bits of 32, entropy coded
    assert no_clip["file_bytes"] < r8["file_bytes"]
    for r in (r8, r6, r4, no_clip):
        assert Path(r["out"]).stat().st_size == r["file_bytes"]
        assert r["bpp"]["compressed"] == pytest.approx(8 * r["file_bytes"] / (40 * 64 * 128))
        assert r["ms_ssim_scales"] == 3  # 64 x 128 frames: 64 -> 32 -> 16 px hold the 11-px window, 8 px does not
        assert 0 < r["metrics"]["compressed"]["ms_ssim"] <= 1


def test_decode_accepts_the_file_and_renders_what_compress_measured(reports, tiny_dual_run, tmp_path):
    cfg = tiny_dual_run[0]
    r = reports[6, True]
    out = tmp_path / "png"
    assert decode_cli.main(["--checkpoint", r["out"], "--out", str(out)]) == 0
    decoded = torch.stack([torch.from_numpy(np.array(Image.open(out / f"frame_{i:05d}.png"))).permute(2, 0, 1)
                           for i in range(40)])
    d = cfg.data
    truth = load_frames(d.source, d.path, num_frames=d.num_frames, height=d.height, width=d.width, seed=d.seed)
    grid = PatchGrid(d.patch_rows, d.patch_cols)
    psnr = patch_psnr(to_patches(decoded.float() / 255, grid), to_patches(truth.float() / 255, grid))
    assert float(psnr.view(40, -1).mean(1).mean()) == pytest.approx(r["metrics"]["compressed"]["psnr"], abs=0.05)


def test_without_the_clip_head_frames_are_the_same_and_embeddings_zero(reports):
    with_clip = load_trained_dual(reports[8, True]["out"], torch.device("cpu"))
    without = load_trained_dual(reports[8, False]["out"], torch.device("cpu"))
    coords = with_clip.coords(torch.tensor([0.0, 12.5, 39.0]))
    (rgb_a, emb_a), (rgb_b, emb_b) = with_clip.predict(coords), without.predict(coords)
    assert torch.equal(rgb_a, rgb_b)
    assert torch.allclose(emb_a.norm(dim=1), torch.ones(len(coords)), atol=1e-2)  # unit norm, up to bf16
    assert float(emb_b.abs().max()) == 0
    assert with_clip.has_clip_head and not without.has_clip_head


def test_json_report_and_table(checkpoint, tmp_path, capsys):
    out, report = tmp_path / "m.hnvc", tmp_path / "r.json"
    assert compress_cli.main(["--checkpoint", str(checkpoint), "--out", str(out), "--bits", "5", "--per", "tensor",
                              "--json", str(report), "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["bits"] == 5 and data["per"] == "tensor" and data["file_bytes"] == out.stat().st_size
    assert f"{data['file_bytes']:,}" in table and "MS-SSIM (3 scales)" in table and "frame PSNR (dB)" in table
    assert is_compressed(out) and not is_compressed(checkpoint)


# ------------------------------------------------------------------------------------------------ errors
def rebuilt(data: bytes, edit) -> bytes:
    """``data`` with ``edit(header, payload)`` applied (both editable) and lengths and file checksum redone:
    a file whose bytes are intact but whose content is not what the writer coded."""
    fixed = struct.Struct("<8sHIQI")
    magic, version, header_len, _, _ = fixed.unpack_from(data)
    header = json.loads(zlib.decompress(data[fixed.size:fixed.size + header_len]))
    payload = bytearray(data[fixed.size + header_len:])
    edit(header, payload)
    header_blob = zlib.compress(json.dumps(header).encode())
    body = header_blob + bytes(payload)
    return fixed.pack(magic, version, len(header_blob), len(payload), zlib.crc32(body)) + body


def first_quantised(header: dict) -> dict:
    return next(t for t in header["tensors"] if t["storage"] == "quantised")


def rare_first_symbol(header: dict, payload: bytearray) -> None:
    """Another histogram for the same coded bytes: what a coder that models probabilities differently reads."""
    offset = first_quantised(header)["blobs"]["freqs"][0]
    payload[offset:offset + 2] = (1).to_bytes(2, "little")


def wrong_symbol_checksum(header: dict, payload: bytearray) -> None:
    first_quantised(header)["symbols_crc32"] ^= 1


def test_truncated_or_corrupt_files_exit_2_with_one_line(reports, tmp_path, capsys):
    data = Path(reports[4, True]["out"]).read_bytes()
    cases = {
        "truncated": (data[:-100], "is truncated"),
        "flipped": (data[:5000] + bytes([data[5000] ^ 0x40]) + data[5001:], "is corrupt (checksum mismatch)"),
        "header only": (data[:10], "bad or missing header"),
        "newer": (data[:8] + (FORMAT_VERSION + 1).to_bytes(2, "little") + data[10:], "compressed-format version"),
        "other model": (rebuilt(data, rare_first_symbol), "do not decode (written by an incompatible entropy coder?)"),
        "other symbols": (rebuilt(data, wrong_symbol_checksum), "do not decode (written by an incompatible"),
    }
    for name, (blob, message) in cases.items():
        path = tmp_path / f"{name}.hnvc"
        path.write_bytes(blob)
        assert decode_cli.main(["--checkpoint", str(path), "--out", str(tmp_path / "o")]) == 2, name
        assert message in one_error_line(capsys), name
    assert not (tmp_path / "o").exists()


def test_bad_arguments_exit_2_with_one_line(checkpoint, reports, tmp_path, capsys):
    out = str(tmp_path / "m.hnvc")
    assert compress_cli.main(["--checkpoint", str(checkpoint), "--out", out, "--bits", "1"]) == 2
    assert "--bits must be in 2..16" in one_error_line(capsys)
    assert compress_cli.main(["--checkpoint", reports[8, True]["out"], "--out", out]) == 2
    assert "already compressed" in one_error_line(capsys)
    assert compress_cli.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path)]) == 2
    assert "is a folder" in one_error_line(capsys)
    other = tmp_path / "latest.pt"  # another checkpoint of the run: not overwritten
    other.write_bytes(Path(checkpoint).read_bytes())
    assert compress_cli.main(["--checkpoint", str(checkpoint), "--out", str(other)]) == 2
    assert "is not a compressed model" in one_error_line(capsys)
    assert other.read_bytes() == Path(checkpoint).read_bytes()
    assert compress_cli.main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", out]) == 2
    assert "checkpoint not found" in one_error_line(capsys)
    cascade = tmp_path / "stage_32_final.pt"
    torch.save({"config": {"task": "cascade"}, "model_state_dict": {}}, cascade)
    assert compress_cli.main(["--checkpoint", str(cascade), "--out", out]) == 2
    assert "'cascade' checkpoint" in one_error_line(capsys)
    assert not Path(out).exists()


def test_the_commands_load_no_trainer_or_logging_module(checkpoint, tmp_path):
    code = ("import sys\nfrom hnerv_fast import compress, decode\n"
            f"assert compress.main(['--checkpoint', {str(checkpoint)!r}, '--out', {str(tmp_path / 'm.hnvc')!r}]) == 0\n"
            f"assert decode.main(['--checkpoint', {str(tmp_path / 'm.hnvc')!r}, '--out', {str(tmp_path / 'f')!r}, "
            "'--frames', '0:2']) == 0\n"
            "print('loaded:', *(m for m in sys.modules if m.startswith(('hnerv_fast.train', 'hnerv_fast.logging'))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "loaded:", proc.stdout


def test_cli_help_through_python_dash_m():
    proc = subprocess.run([sys.executable, "-m", "hnerv_fast.compress", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "--no-clip-head" in proc.stdout and "--per {channel,tensor}" in proc.stdout
