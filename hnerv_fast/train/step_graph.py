"""The whole optimizer step as one CUDA graph (`train.graph_step`, and `train.compile=auto` on one GPU).

torch.compile's CUDA graphs (`train.compile=reduce-overhead`) capture forward and backward; the rest of a step
(gradient norms and clipping, the non-finite-step bookkeeping, the fused optimizer update, zeroing the
gradients) stays a few dozen eager launches. Here one replay runs it all: on an H200 the dual default step took
1.8 ms so against 3.1 ms with reduce-overhead in the same run (benchmarks/RESULTS_gpu.md).

Each step signature (micro-batch count, shapes and host-side fields) runs `WARMUP` times eagerly on a side
stream first, so nothing is created lazily inside the capture (optimizer state, the gradient-norm table,
compiled code, library workspaces); the next step with that signature is captured with copies of its
micro-batches as the graph's static inputs, and it and every later one copy their batch tensors in and replay.
Everything else the step reads must keep its address from step to step, which the engine guarantees:
parameters and gradients (made before the first step, zeroed in place), optimizer state, and the learning-rate,
flag and counter tensors (updated in place). Outputs are copied out: the next replay overwrites them.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Callable

import torch

WARMUP = 3


def signature(micro_batches) -> tuple:
    """What a captured graph is specific to: per micro-batch, each field's shape (tensors) or value."""
    return tuple(tuple(tuple(v.shape) if isinstance(v, torch.Tensor) else v
                       for v in (getattr(b, f.name) for f in dataclasses.fields(b)))
                 for b in micro_batches)


def _tensor_fields(batch) -> list[str]:
    return [f.name for f in dataclasses.fields(batch) if isinstance(getattr(batch, f.name), torch.Tensor)]


class StepGraph:
    """Calls `step(*micro_batches) -> tuple of tensors` as CUDA graph replays, one graph per signature.

    `optimizer`: its param groups are marked capturable only while a step is captured (torch refuses to capture
    an optimizer step otherwise, and warns about every uncaptured step while the flag is set)."""

    def __init__(self, step: Callable[..., tuple[torch.Tensor, ...]], optimizer: torch.optim.Optimizer):
        self.step = step
        self.optimizer = optimizer
        self.side = torch.cuda.Stream()
        self.warm = Counter()
        # signature -> (static batches, their tensor fields, outputs, graph)
        self.graphs: dict[tuple, tuple[list, list[str], tuple[torch.Tensor, ...], torch.cuda.CUDAGraph]] = {}

    def __call__(self, *micro_batches) -> tuple[torch.Tensor, ...]:
        key = signature(micro_batches)
        entry = self.graphs.get(key)
        if entry is None:
            if self.warm[key] < WARMUP:
                self.warm[key] += 1
                return self._eager(micro_batches)
            entry = self.graphs[key] = self._capture(micro_batches)
        static, fields, outputs, graph = entry
        for s, b in zip(static, micro_batches):
            for name in fields:
                getattr(s, name).copy_(getattr(b, name), non_blocking=True)
        graph.replay()
        return tuple(o.clone() for o in outputs)

    def _eager(self, micro_batches) -> tuple[torch.Tensor, ...]:
        main = torch.cuda.current_stream()
        self.side.wait_stream(main)
        with torch.cuda.stream(self.side):
            outputs = self.step(*micro_batches)
        main.wait_stream(self.side)
        for o in outputs:  # made on the side stream, used and freed on the main one
            o.record_stream(main)
        return outputs

    def _capture(self, micro_batches):
        fields = _tensor_fields(micro_batches[0])  # the same in every micro-batch of one signature
        static = [dataclasses.replace(b, **{n: getattr(b, n).clone() for n in fields}) for b in micro_batches]
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        flags = [group.get("capturable", False) for group in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["capturable"] = True
        try:
            # thread_local: the logger's thread may touch CUDA while this thread captures
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                outputs = self.step(*static)
        finally:
            for group, flag in zip(self.optimizer.param_groups, flags):
                group["capturable"] = flag
        return static, fields, outputs, graph
