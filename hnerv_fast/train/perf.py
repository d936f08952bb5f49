"""Speed and memory of one epoch's training steps (the Perf/* tags), with no host sync in the steps.

GPU: CUDA events are recorded on the device's stream before the first and after the last step; the
elapsed time is read by callables that the async writer calls on its own thread (it waits on the end
event there), so neither the steps nor the epoch boundary wait for the GPU. Peak memory is the caching
allocator's high-water mark, reset when the epoch starts.
CPU: `perf_counter` around the steps; peak memory is the process's peak resident set size so far
(`ru_maxrss`: the OS keeps no per-epoch figure).
The epoch's training time (`seconds`, the cascade's `{stage}/epoch_time` and the printed epoch line) is the
same measurement: on GPU a host clock would read only how long the launches took to queue.
"""
from __future__ import annotations

import resource
import time
from typing import Callable

import torch

from hnerv_fast.logging.layouts import PerfTags as P

MIB = float(1 << 20)


class EpochMeter:
    """Started when the epoch's steps begin; `stop` gives {Perf tag: value or callable} for the logger and
    sets `seconds`, the steps' time (a number, or on GPU a callable for the writer thread)."""

    seconds: float | Callable[[], float]

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record(torch.cuda.current_stream(device))
        else:
            self._started = time.perf_counter()

    def stop(self, steps: int, samples: int) -> dict[str, float | Callable[[], float]]:
        """Values for `steps` optimizer steps that trained on `samples` samples (all ranks together)."""
        if self.device.type != "cuda":
            self.seconds = seconds = time.perf_counter() - self._started
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
            return {P.STEP_TIME_MS: 1000.0 * seconds / steps, P.SAMPLES_PER_S: samples / seconds,
                    P.PEAK_MEMORY_MIB: peak}
        start, end = self._start, torch.cuda.Event(enable_timing=True)
        end.record(torch.cuda.current_stream(self.device))

        def elapsed_ms() -> float:  # on the writer thread
            end.synchronize()
            return start.elapsed_time(end)

        self.seconds = lambda: elapsed_ms() / 1000.0
        return {P.STEP_TIME_MS: lambda: elapsed_ms() / steps,
                P.SAMPLES_PER_S: lambda: 1000.0 * samples / elapsed_ms(),
                P.PEAK_MEMORY_MIB: torch.cuda.max_memory_allocated(self.device) / MIB}
