"""CPU runs keep freed activation blocks in the heap (hnerv_fast/host_memory.py): a step that allocates and
frees the same few-megabyte tensors stops page-faulting them in again, and a user's own glibc settings win."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")

# Ten 4 MiB tensors allocated and freed per "step"; the page faults of one step after a warm-up, first with
# glibc's documented start values held fixed (128 KiB mmap and trim thresholds; left alone, glibc moves them
# by the history of the process, which is what makes the step's cost vary from run to run), then after
# keep_freed_blocks().
PROBE = """
import ctypes, resource, torch
from hnerv_fast import host_memory
def faults_per_step():
    def step():
        blocks = [torch.ones(2**20) for _ in range(10)]
        del blocks
    for _ in range(4):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
libc = ctypes.CDLL("libc.so.6")
libc.mallopt(host_memory.M_MMAP_THRESHOLD, 128 * 1024)
libc.mallopt(host_memory.M_TRIM_THRESHOLD, 128 * 1024)
start = faults_per_step()
applied = host_memory.keep_freed_blocks()
print(applied, start, faults_per_step())
"""


def _probe(**env) -> tuple[bool, float, float]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **env}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    applied, start, kept = out.stdout.split()
    return applied == "True", float(start), float(kept)


def test_freed_blocks_are_reused_without_page_faults():
    applied, start_faults, kept_faults = _probe()
    assert applied
    pages_per_step = 10 * 4 * 2**20 / 4096
    assert start_faults > 0.9 * pages_per_step  # every block is mapped anew and faulted in, every step
    assert kept_faults < 0.05 * pages_per_step


def test_the_users_own_glibc_settings_are_kept():
    applied, _, _ = _probe(MALLOC_TRIM_THRESHOLD_="65536")
    assert not applied


def test_cpu_runs_apply_it(monkeypatch):
    from hnerv_fast import host_memory
    from hnerv_fast.config import load_config
    from hnerv_fast.train import trainer

    class Stop(Exception):
        pass

    def stop(*args):
        raise Stop

    calls = []
    monkeypatch.setattr(host_memory, "keep_freed_blocks", lambda: calls.append(1) or True)
    monkeypatch.setitem(trainer.BUILDERS, "cascade", stop)  # the run ends where the task would be built
    with pytest.raises(Stop):
        trainer.run(load_config("configs/cascade_tiny.yaml", ["train.device=cpu"]))
    assert calls == [1]
