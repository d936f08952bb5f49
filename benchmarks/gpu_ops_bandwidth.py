"""Fused ops on a GPU: cuda vs triton vs reference (and the pytorch-msssim formulation), as a share of the
device's measured copy bandwidth. Timed with CUDA events; every backend of a shape is timed in the same run.

    python -m benchmarks.gpu_ops_bandwidth        (needs a CUDA device; part of `make gpu-check`)

Rows: patch PSNR, Fusion6 forward, Fusion6 forward+backward, grouped gradient norms (vs torch._foreach_norm)
at the training shapes 256x3x80x160 and 64x3x320x320, fp32 and bf16 prediction with an fp32 target.
GB/s counts the bytes an ideal fused kernel must move (see BYTES_PER_PIXEL), so "% copy" is how close an
op gets to a plain device-to-device copy of the same traffic. Each line starts with "OPS|".
"""
from __future__ import annotations

import statistics
import sys
import traceback

import torch

from benchmarks.inputs import foreach_norms, log_uniform_groups
from hnerv_fast import ops
from hnerv_fast.ops import _backends, grouped_grad_norms, patch_psnr, pixel_loss, reference, set_backend

SHAPES = [(256, 3, 80, 160), (64, 3, 320, 320)]
NORM_TOTALS = (1_200_000, 12_000_000, 120_000_000)  # gradient elements in the grouped-norm rows
# Ideal traffic per pixel: psnr reads pred + target; Fusion6 forward reads both and writes 3 fp32 coefficient
# maps; forward+backward also reads them back with both images and writes the gradient. bf16 pred: 2 B less
# per pred read/write.
BYTES_PER_PIXEL = {
    ("psnr", torch.float32): 8, ("psnr", torch.bfloat16): 6,
    ("fusion6 fwd", torch.float32): 20, ("fusion6 fwd", torch.bfloat16): 18,
    ("fusion6 fwd+bwd", torch.float32): 44, ("fusion6 fwd+bwd", torch.bfloat16): 38,
}


def timeit_ms(fn, budget_s: float = 0.25) -> float:
    """Median per-call time of `fn` in ms from CUDA events; several calls per sample hide launch gaps."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    once = max(start.elapsed_time(end), 1e-3)
    reps = max(1, min(20, int(1.0 / once)))
    samples = []
    for _ in range(int(max(3, min(25, budget_s * 1e3 / (once * reps))))):
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / reps)
    return statistics.median(samples)


def copy_bandwidth_gbs(device: torch.device) -> float:
    a = torch.empty(1 << 28, dtype=torch.uint8, device=device)  # 256 MiB, several times the L2
    b = torch.empty_like(a)
    ms = timeit_ms(lambda: b.copy_(a))
    return 2 * a.numel() / ms / 1e6


def use(backend: str, device: torch.device) -> None:
    set_backend(backend)
    got = _backends.resolve(device)
    if got != backend:
        raise RuntimeError(f"backend {backend} fell back to {got}: {_backends.load_error(backend)}")


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


def fusion6_fwd_bwd(x: torch.Tensor, y: torch.Tensor):
    xr = x.detach().requires_grad_()
    out = pixel_loss(xr, y, "Fusion6")
    out.sum().backward()
    return out, xr.grad


def msssim_fusion6_fwd_bwd(pm, x: torch.Tensor, y: torch.Tensor):
    """The formulation the seed trainer uses: 0.7*L1 + 0.3*(1 - pytorch_msssim.ssim), autograd."""
    xr = x.detach().requires_grad_()
    xf = xr.float()
    out = 0.7 * (xf - y).abs().mean((1, 2, 3)) + 0.3 * (1 - pm.ssim(xf, y, data_range=1.0, size_average=False))
    out.sum().backward()
    return out, xr.grad


class Table:
    def __init__(self, copy_gbs: float):
        self.copy_gbs = copy_gbs

    def row(self, op: str, shape: str, who: str, ms: float, nbytes: float, note: str = "") -> None:
        gbs = nbytes / ms / 1e6
        print(f"OPS| {op:<17} {shape:<15} {who:<15} {ms:9.3f} ms {gbs:7.0f} GB/s {100 * gbs / self.copy_gbs:5.1f}% copy"
              f"  {note}", flush=True)


def guarded(label: str, fn) -> None:
    try:
        fn()
    except Exception as exc:  # one failing backend must not hide the others' numbers
        traceback.print_exc()
        print(f"OPS| {label}: ERROR {type(exc).__name__}: {' '.join(str(exc).split())[:240]}", flush=True)


def bench_images(table: Table, device: torch.device, backends: list[str], pm) -> None:
    for shape in SHAPES:
        g = torch.Generator(device=device).manual_seed(0)
        y = torch.rand(shape, device=device, generator=g)
        x32 = (y + 0.1 * torch.randn(shape, device=device, generator=g)).clamp_(0, 1)
        px, name = x32.numel(), "x".join(map(str, shape))
        for dtype in (torch.float32, torch.bfloat16):
            x = x32.to(dtype)
            tag = "f32" if dtype == torch.float32 else "bf16/f32"
            ref_psnr = reference.psnr(x, y)
            xr = x.detach().float().requires_grad_()  # a new leaf: x32 itself must not start requiring grad
            ref_loss = reference.pixel_loss(xr, y, "Fusion6")
            ref_loss.sum().backward()
            ref_loss, ref_grad = ref_loss.detach(), xr.grad
            if pm is not None:
                guarded(f"{name} pytorch-msssim", lambda: table.row(
                    "fusion6 fwd+bwd", name, f"pytorch-msssim {tag}",
                    timeit_ms(lambda: msssim_fusion6_fwd_bwd(pm, x, y)), px * BYTES_PER_PIXEL[("fusion6 fwd+bwd", dtype)]))
            for backend in backends:
                def body():
                    use(backend, device)
                    who = f"{backend} {tag}"
                    table.row("psnr", name, who, timeit_ms(lambda: patch_psnr(x, y)),
                              px * BYTES_PER_PIXEL[("psnr", dtype)],
                              f"max|dPSNR| {(patch_psnr(x, y) - ref_psnr).abs().max().item():.1e} dB")
                    # with a grad-requiring input, as in training: the forward also stores the coefficient maps
                    table.row("fusion6 fwd", name, who,
                              timeit_ms(lambda: pixel_loss(x.detach().requires_grad_(), y, "Fusion6")),
                              px * BYTES_PER_PIXEL[("fusion6 fwd", dtype)])
                    out, grad = fusion6_fwd_bwd(x, y)
                    table.row("fusion6 fwd+bwd", name, who, timeit_ms(lambda: fusion6_fwd_bwd(x, y)),
                              px * BYTES_PER_PIXEL[("fusion6 fwd+bwd", dtype)],
                              f"rel err loss {rel_err(out, ref_loss):.1e} grad {rel_err(grad.float(), ref_grad):.1e}")
                guarded(f"{name} {backend} {tag}", body)


def bench_norms(table: Table, device: torch.device, backends: list[str]) -> None:
    """250 gradients with log-uniform sizes in 3 groups (the dual model's shape of problem), 3 totals."""
    for total in NORM_TOTALS:
        groups = log_uniform_groups(total, device)
        nbytes, name = 4 * sum(t.numel() for ts in groups.values() for t in ts), f"{total / 1e6:g}M/250t"
        ref = foreach_norms(groups)
        table.row("grad norms", name, "foreach", timeit_ms(lambda: foreach_norms(groups)), nbytes)
        for backend in backends:
            def body():
                use(backend, device)
                table.row("grad norms", name, backend, timeit_ms(lambda: grouped_grad_norms(groups)), nbytes,
                          f"rel err {rel_err(grouped_grad_norms(groups), ref):.1e}")
            guarded(f"norms {name} {backend}", body)


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_ops_bandwidth: no CUDA device", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    # the reference's conv-based SSIM in true float32 (cuDNN's TF32 default would put ~1e-3 into the
    # error columns, which are meant to measure the fused kernels); as tests/conftest.py does
    torch.backends.cudnn.allow_tf32 = False
    backends = [b for b in ("cuda", "triton", "reference") if b in ops.available_backends("cuda")]
    try:
        import pytorch_msssim as pm
    except ImportError:
        pm = None
    table = Table(copy_bandwidth_gbs(device))
    print(f"OPS| {torch.cuda.get_device_name(device)}: copy bandwidth {table.copy_gbs:.0f} GB/s (read + write); "
          f"backends {backends}; pytorch-msssim {'yes' if pm else 'not installed'}", flush=True)
    bench_images(table, device, backends, pm)
    bench_norms(table, device, backends)
    set_backend("auto")
    return 0


if __name__ == "__main__":
    sys.exit(main())
