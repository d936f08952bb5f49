import threading
import time

import pytest
import torch

from hnerv_fast.logging.async_writer import AsyncSummaryWriter
from tests.event_files import load_events, scalar_series


def test_everything_queued_is_written_on_close(tmp_path):
    acc_tensor = torch.zeros(())
    with AsyncSummaryWriter(str(tmp_path)) as writer:
        for step in range(200):
            acc_tensor += 1  # updated in place after queuing: the writer must have copied it
            writer.add_scalars(step, {"a/x": acc_tensor, "a/y": torch.tensor(2.0 * step), "a/z": 0.5})
        writer.add_histogram("h", torch.arange(10.0), 3)
        writer.add_image("img", torch.rand(3, 8, 8), 4)
        writer.add_text("t", "hello", 0)
    events = load_events(tmp_path)
    xs = scalar_series(events, "a/x")
    assert [s for s, _ in xs] == list(range(200))
    assert [v for _, v in xs] == [float(i + 1) for i in range(200)]
    assert scalar_series(events, "a/y")[-1] == (199, 398.0)
    assert scalar_series(events, "a/z")[0][1] == 0.5
    assert events.Histograms("h")[0].step == 3
    assert events.Images("img")[0].step == 4


def test_flushes_on_exception(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with AsyncSummaryWriter(str(tmp_path)) as writer:
            writer.add_scalars(1, {"x": torch.tensor(3.0)})
            raise KeyboardInterrupt
    assert scalar_series(load_events(tmp_path), "x") == [(1, 3.0)]


def test_latest_and_callback_run_on_writer_thread(tmp_path):
    seen = []
    with AsyncSummaryWriter(str(tmp_path)) as writer:
        writer.add_scalars(5, {"loss": torch.tensor(0.25)}, callback=lambda v: seen.append((threading.current_thread().name, v)))
        writer.flush()
        assert writer.latest["loss"] == 0.25
    assert seen == [("tensorboard-writer", {"loss": 0.25})]


def test_use_after_close_is_an_error(tmp_path):
    writer = AsyncSummaryWriter(str(tmp_path))
    writer.close()
    with pytest.raises(RuntimeError, match="after close"):
        writer.add_scalars(0, {"x": 1.0})


def test_writer_thread_errors_surface(tmp_path):
    with AsyncSummaryWriter(str(tmp_path)) as writer:
        writer.add_scalars(0, {"x": 1.0}, callback=lambda v: 1 / 0)
        with pytest.raises(RuntimeError, match="ZeroDivisionError"):
            writer.flush()


def test_main_loop_never_reads_device_values(tmp_path, monkeypatch):
    """add_scalars must not call .item()/.tolist() on the caller's thread (that would sync a GPU)."""
    main = threading.current_thread()
    calls = []
    original_item, original_tolist = torch.Tensor.item, torch.Tensor.tolist

    def spy(original):
        def wrapper(self, *a, **k):
            calls.append(threading.current_thread() is main)
            return original(self, *a, **k)
        return wrapper

    monkeypatch.setattr(torch.Tensor, "item", spy(original_item))
    monkeypatch.setattr(torch.Tensor, "tolist", spy(original_tolist))
    with AsyncSummaryWriter(str(tmp_path)) as writer:
        for step in range(10):
            writer.add_scalars(step, {"x": torch.tensor(float(step))})
        writer.flush()
    assert calls and not any(calls)


class _SlowMirror:
    """A mirror that makes the writer thread slow, so records are still queued when the caller fails."""

    def log(self, values, step):
        time.sleep(0.005)

    def close(self):
        pass


def test_exception_drains_a_long_queue_before_it_propagates(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with AsyncSummaryWriter(str(tmp_path), mirrors=[_SlowMirror()], max_batch=4) as writer:
            for step in range(100):
                writer.add_scalars(step, {"q": torch.tensor(float(step))})
            raise RuntimeError("boom")
    assert [s for s, _ in scalar_series(load_events(tmp_path), "q")] == list(range(100))


def test_nothing_logged_leaves_no_event_file(tmp_path):
    """The trainer opens its writer before the tasks load their data: bad input must not leave a log folder."""
    logdir = tmp_path / "tb"
    with pytest.raises(ValueError, match="bad data"):
        with AsyncSummaryWriter(str(logdir)) as writer:
            writer.flush()
            raise ValueError("bad data")
    assert not logdir.exists()


def test_a_mirror_added_later_gets_every_later_scalar_batch(tmp_path):
    class Mirror:
        def __init__(self):
            self.seen = []

        def log(self, values, step):
            self.seen.append((step, values))

    mirror = Mirror()
    with AsyncSummaryWriter(str(tmp_path)) as writer:
        writer.add_scalars(0, {"a": 0.0})
        writer.add_mirror(mirror)
        writer.add_scalars(1, {"a": torch.tensor(1.0)})
    assert mirror.seen == [(1, {"a": 1.0})]
    assert [s for s, _ in scalar_series(load_events(tmp_path), "a")] == [0, 1]


def test_cpu_histogram_is_copied_when_queued(tmp_path):
    """A CPU tensor passed to add_histogram is copied: updating it in place after the call does not change the log."""
    gate = threading.Event()
    values = torch.arange(10.0)  # float32, 1-D: .float().flatten() is the caller's tensor itself
    with AsyncSummaryWriter(str(tmp_path)) as writer:
        writer.add_scalars(0, {"gate": 0.0}, callback=lambda v: gate.wait(10))  # holds the writer thread
        writer.add_histogram("h", values, 1)
        values.fill_(100.0)  # before the writer thread can reach the histogram record
        gate.set()
    (hist,) = load_events(tmp_path).Histograms("h")
    assert (hist.histogram_value.min, hist.histogram_value.max, hist.histogram_value.sum) == (0.0, 9.0, 45.0)
