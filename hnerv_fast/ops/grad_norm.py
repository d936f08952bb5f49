"""grouped_grad_norms: L2 norms of groups of tensors (gradients) in one multi-tensor launch.

The fast backends register ``<ns>::grouped_norms(Tensor[] tensors, int[] groups, int num_groups)
-> Tensor[1 + num_groups]`` (float32: [total, group_0, ...]): one parallel pass / one kernel launch
over a table of (pointer, size, group) chunks, per-group sums of squares, then square roots. No
backward (norms of gradients are not differentiated); inputs are read as detached values.

On CUDA (both the cuda and the triton backend) the chunk table lives on the device, cached per
exact signature (address, numel, dtype and group of every tensor, num_groups, device; a small
LRU). Gradients keep their storage across steps, so after the first call a step makes no
host-to-device copy and no pinned allocation, and the call can be captured in a CUDA graph. A
miss while capturing is correct too: the copy is recorded from a pinned buffer the entry keeps,
and entries a graph reads are never evicted.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor

from . import _backends, reference


def _grouped_norms_fake(tensors: List[Tensor], groups: List[int], num_groups: int) -> Tensor:
    return tensors[0].new_empty((1 + num_groups,), dtype=torch.float32)


def register_grouped_norms_op(qualname: str) -> None:
    torch.library.register_fake(qualname, _grouped_norms_fake)


if _backends._load_cpp():
    register_grouped_norms_op("hnerv_fast::grouped_norms")


def grouped_grad_norms(groups: Dict[str, List[Optional[Tensor]]], max_norm: Optional[float] = None, *,
                       device: Optional[torch.device] = None) -> Tensor:
    """[total_norm, norm(group_1), norm(group_2), ...] in dict order, float32.

    ``groups`` maps a name to a list of tensors (usually ``p.grad``; None entries are skipped; an
    empty group has norm 0). With ``max_norm`` all tensors are also scaled in place by
    min(1, max_norm / (total + 1e-6)) (gradient clipping). Nothing is synchronised with the host.
    The result is on ``device`` when given, else on the tensors' device, else (every entry None)
    on the CPU: pass the training device so an all-None step still yields a device tensor.
    """
    tensors: List[Tensor] = []
    gids: List[int] = []
    for gi, ts in enumerate(groups.values()):
        for t in ts:
            if t is not None:
                tensors.append(t.detach() if t.requires_grad else t)
                gids.append(gi)
    if not tensors:
        return torch.zeros(1 + len(groups), dtype=torch.float32, device=device)
    backend = _backends.resolve(tensors[0].device)
    if backend == "reference":
        out = reference.grouped_grad_norms(groups, max_norm)
    else:
        ops = torch.ops.hnerv_fast_triton if backend == "triton" else torch.ops.hnerv_fast
        out = ops.grouped_norms(tensors, gids, len(groups))
        if max_norm is not None:
            coef = torch.clamp(max_norm / (out[0] + 1e-6), max=1.0)
            torch._foreach_mul_(tensors, coef)
    return out if device is None else out.to(device)
