"""hnerv_fast.ops — fused losses, metrics and gradient norms (a library of its own).

    patch_psnr(pred, target) -> Tensor[N]
    pixel_loss(pred, target, kind) -> Tensor[N]          kind in PIXEL_LOSSES
    grouped_grad_norms(groups, max_norm=None) -> Tensor[1 + len(groups)]
    set_backend("auto" | "reference" | "cpp" | "cuda" | "triton"); get_backend()

Plain-torch definitions: ``hnerv_fast.ops.reference``. Backend choice: ``hnerv_fast.ops._backends``.
Nothing here imports from the rest of hnerv_fast.
"""
from ._backends import available_backends, get_backend, set_backend
from .grad_norm import grouped_grad_norms
from .pixel_loss import pixel_loss
from .psnr import patch_psnr
from .reference import PIXEL_LOSSES

__all__ = [
    "patch_psnr",
    "pixel_loss",
    "grouped_grad_norms",
    "set_backend",
    "get_backend",
    "available_backends",
    "PIXEL_LOSSES",
]
