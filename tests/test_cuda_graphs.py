"""CUDA graphs (train.compile=reduce-overhead) in both trainers, and the current CUDA device.

A CUDA graph replay overwrites the previous replay's outputs. On CPU that is emulated by `overwriting`
(a stand-in compiler whose function hands back the same output buffers every call), so the code that
must copy values out before the next call is tested everywhere; the `gpu` tests run the real thing."""
from __future__ import annotations

import math

import pytest
import torch

from hnerv_fast import ops
from hnerv_fast.config import load_config
from hnerv_fast.device import DeviceError
from hnerv_fast.logging.async_writer import AsyncSummaryWriter
from hnerv_fast.logging.layouts import CascadeTags, PerfTags
from hnerv_fast.train.engine import Engine, pick_device, seed_everything
from hnerv_fast.train.tasks.dual_hnerv import DualHNeRVTask
from tests.event_files import load_events, scalar_series
from tests.hot_loop import syncs_are_errors

SMALL = ["model.embed=pe_1.25_8", "model.fc_dim=16", "model.lower_width=8", "train.progress=false",
         "loss.pixel_loss_warmup_epochs=0", "data.num_frames=40"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")


def cudagraph_skips() -> int:
    """How often inductor ran a reduce-overhead graph without CUDA graphs (it does so silently: a CPU
    tensor, a mutated input, an op it cannot capture)."""
    from torch._dynamo.utils import counters

    return counters["inductor"]["cudagraph_skips"]


def assert_steps_match(got, want) -> None:
    """(metrics, grad norms) of each train_step under CUDA graphs against eager's: finite and close."""
    for (m_got, n_got), (m_want, n_want) in zip(got, want, strict=True):
        assert torch.isfinite(m_got).all() and torch.isfinite(n_got).all()
        torch.testing.assert_close(m_got, m_want, rtol=2e-3, atol=1e-4)
        torch.testing.assert_close(n_got, n_want, rtol=2e-3, atol=1e-4)


def overwriting(fn):
    """`fn` as a CUDA graph returns it: outputs without autograd history land in buffers that every
    call reuses (a loss that needs backward passes through)."""
    buffers: list[torch.Tensor] = []

    def call(*args):
        outputs = fn(*args)
        if not buffers:
            buffers.extend(torch.empty_like(t) for t in outputs)
        return tuple(t if t.requires_grad else b.copy_(t) for t, b in zip(outputs, buffers))

    return call


def dual(tmp_path, device: str, mode: str, *extra: str) -> tuple[DualHNeRVTask, Engine]:
    """A small dual task and its engine; same weights for the same arguments."""
    cfg = load_config("configs/dual_hnerv_tiny.yaml", SMALL + [
        f"clip.cache_dir={tmp_path}/clip", f"output.output_dir={tmp_path}/out", f"train.compile={mode}", *extra])
    seed_everything(cfg.train.seed, deterministic=False)
    device = torch.device(device)
    task = DualHNeRVTask(cfg, device)
    return task, Engine(task, cfg.train, device, tmp_path / "ckpt")


# ------------------------------------------------------------------------------------------ CPU
def test_predict_copies_each_chunk_before_the_next_call(tmp_path):
    task, _ = dual(tmp_path, "cpu", "none")
    ids = task.split_ids["train"]  # 288 patches: 5 eval chunks of 64
    expected = task.predict(ids)
    task.compile_eval(overwriting)
    for got, want in zip(task.predict(ids), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_eval_chunks_are_no_larger_than_the_largest_split(tmp_path):
    """A batch_size beyond the data (training caps it at the samples) must not pad each eval call up to it."""
    task, _ = dual(tmp_path, "cpu", "none", "train.batch_size=100000")
    sizes = []
    eval_batch = task._eval_batch
    task._eval_batch = lambda ids: sizes.append(len(ids)) or eval_batch(ids)
    psnr, _, _ = task.predict(task.split_ids["val"])
    assert sizes == [len(task.split_ids["train"])] and len(psnr) == len(task.split_ids["val"])


def test_accumulated_metrics_survive_the_next_micro_batch(tmp_path):
    results = []
    for stand_in in (None, overwriting):
        task, engine = dual(tmp_path, "cpu", "none", "train.grad_accum_steps=2")
        if stand_in is not None:
            engine._forward = stand_in(engine._forward_eager)
        batches = task.train_batches(1)
        results.append([engine.train_step(*batches[i:i + 2]) for i in (0, 2)])
    for (m_eager, n_eager), (m_graph, n_graph) in zip(*results):
        torch.testing.assert_close(m_graph, m_eager, rtol=0, atol=0)
        torch.testing.assert_close(n_graph, n_eager, rtol=0, atol=0)


def test_step_graph_signature_is_shapes_and_host_fields():
    """train.graph_step keeps one graph per signature: batch values may change, shapes and host fields may not."""
    from hnerv_fast.train.engine import Batch
    from hnerv_fast.train.step_graph import signature

    def batch(n, fill=1.0):
        return Batch(ids=torch.arange(n), weight=torch.full((n,), fill))

    assert signature([batch(4)]) == signature([batch(4, fill=0.5)])
    assert signature([batch(4)]) == (((4,), (4,), (), 0, 4, 4),)
    assert signature([batch(4)]) != signature([batch(5)])
    assert signature([batch(4)]) != signature([batch(4), batch(4)])
    assert signature([batch(4)]) != signature([Batch(ids=torch.arange(4), weight=torch.ones(4), offset=4)])


def test_graph_step_without_a_gpu_warns_and_trains(tmp_path, capsys):
    task, engine = dual(tmp_path, "cpu", "none", "train.graph_step=true")
    assert engine.step_graph is None
    assert "train.graph_step needs one CUDA device; on a CPU the step runs without it" in capsys.readouterr().out
    metrics, norms = engine.train_step(task.train_batches(1)[0])
    assert torch.isfinite(metrics).all() and torch.isfinite(norms).all()


@pytest.mark.slow  # CPU inductor compile of the eval function
def test_compiled_predict_equals_eager_across_chunks(tmp_path):
    task, _ = dual(tmp_path, "cpu", "default")  # the engine compiled task._eval_batch
    ids = task.split_ids["train"]
    compiled = task.predict(ids)
    task._eval_batch = task._eval_batch_eager
    for got, want in zip(compiled, task.predict(ids)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_cuda_device_becomes_the_current_device(monkeypatch):
    """train.device=cuda:N sets the current device (events, Triton launches follow it); `cuda` names
    the current one's index; under torchrun a rank sets cuda:LOCAL_RANK."""
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(torch.device(d)))
    assert pick_device("cuda:2") == torch.device("cuda", 2)
    assert pick_device("cuda") == torch.device("cuda", 0)
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="4 CUDA device"):  # bad input: one line, exit 2
        pick_device("cuda:4")
    for other in ("tpu", "mps", "meta", "cpu:1", "cuda:x"):  # not a device this project runs on: the choices
        with pytest.raises(DeviceError, match=rf"^train\.device={other}: expected auto, cpu, cuda or cuda:N$"):
            pick_device(other)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert pick_device("auto") == torch.device("cuda", 1)
    assert current == [torch.device("cuda", 2), torch.device("cuda", 0), torch.device("cuda", 1)]


# ------------------------------------------------------------------------------------------ GPU
@pytest.fixture(scope="module")
def dual_pair(tmp_path_factory):
    """Eager and reduce-overhead dual engines, same weights; gradient accumulation over 2 micro-batches.
    5000 frames make the dataset (~185 MB) much larger than a step's working memory."""
    tmp = tmp_path_factory.mktemp("graphs")
    extra = ("train.grad_accum_steps=2", "data.num_frames=5000", "train.device=cuda")
    return dual(tmp, "cuda", "none", *extra), dual(tmp, "cuda", "reduce-overhead", *extra)


def _dataset_bytes(task: DualHNeRVTask) -> int:
    return sum(t.numel() * t.element_size() for t in (task.patches, task.coords, task.clip_targets))


@pytest.mark.gpu
@cuda
def test_dual_reduce_overhead_matches_eager_without_copies_or_recompiles(dual_pair):
    import torch._dynamo

    (eager_task, eager), (task, graphs) = dual_pair
    batches = task.train_batches(1)
    steps = [batches[i:i + 2] for i in range(0, 16, 2)]
    for t in (eager_task, task):
        t.begin_epoch(1)
    # The graphs run first in this process: anything an op caches on first use (constants, workspaces)
    # is then made during the graphs' warm-up, as in a real run, where it must not end up in their pool.
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    skips_before = cudagraph_skips()
    # outputs are kept across later replays on purpose: train_step must hand back copies
    got = [graphs.train_step(*pair) for pair in steps[:3]]  # compile, warm up, record
    with torch._dynamo.config.patch(error_on_recompile=True), syncs_are_errors():  # replays only from here on
        got += [graphs.train_step(*pair) for pair in steps[3:]]
    growth = torch.cuda.max_memory_allocated() - base
    assert cudagraph_skips() == skips_before, "reduce-overhead ran without CUDA graphs"
    assert_steps_match(got, [eager.train_step(*pair) for pair in steps])
    # optimizer state, workspaces and the graphs' pool, but no copy of the dataset
    assert growth < _dataset_bytes(task) / 2, (growth, _dataset_bytes(task))


@pytest.mark.gpu
@cuda
def test_dual_reduce_overhead_predict_and_epoch(dual_pair, tmp_path):
    (eager_task, _), (task, graphs) = dual_pair
    task.model.load_state_dict(eager_task.model.state_dict())
    ids = task.split_ids["val"]  # 500 frames x 8 patches: 63 eval chunks
    for got, want in zip(task.predict(ids), eager_task.predict(ids)):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    graphs.cfg.epochs = graphs.cfg.stop_after = 1
    with AsyncSummaryWriter(str(tmp_path / "tb")) as writer:
        task.writer = writer
        graphs.fit()
    acc = load_events(tmp_path / "tb")
    for tag in PerfTags.ALL + ("Train/PSNR", "Eval/Frame/val_psnr"):
        ((step, value),) = scalar_series(acc, tag)
        assert step == 1 and math.isfinite(value) and value > 0, tag


@pytest.mark.gpu
@cuda
def test_dual_reduce_overhead_with_the_triton_backend(tmp_path):
    """The fixtures above run the cuda backend (auto's pick); the Triton kernels under CUDA graphs once failed
    on a device (a cached tensor landed in the graphs' pool), so they get their own run against eager."""
    import torch._dynamo

    from tests.ops_backends import use_backend

    torch._dynamo.reset()  # another test in this process may have compiled the eval for other shapes
    use_backend("triton")
    try:
        (eager_task, eager), (task, graphs) = (dual(tmp_path / mode, "cuda", mode, "train.grad_accum_steps=2")
                                               for mode in ("none", "reduce-overhead"))
        for t in (eager_task, task):
            t.begin_epoch(1)
        steps = [task.train_batches(1)[i:i + 2] for i in range(0, 8, 2)]
        skips_before = cudagraph_skips()
        got = [graphs.train_step(*pair) for pair in steps[:3]]  # compile, warm up, record
        with torch._dynamo.config.patch(error_on_recompile=True):
            got.append(graphs.train_step(*steps[3]))
            predicted = task.predict(task.split_ids["val"])
        assert cudagraph_skips() == skips_before, "reduce-overhead ran without CUDA graphs"
        assert_steps_match(got, [eager.train_step(*pair) for pair in steps])
        eager_task.model.load_state_dict(task.model.state_dict())
        for a, b in zip(predicted, eager_task.predict(task.split_ids["val"])):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    finally:
        ops.set_backend("auto")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("compile_mode", ["none", "reduce-overhead"])
def test_dual_graph_step_matches_eager_then_trains(tmp_path, compile_mode):
    """train.graph_step: after 3 eager warm-up steps the 4th is captured, and every step from then on replays
    the whole optimizer step as one graph: equal to eager step by step, no host sync while replaying, outputs
    that outlive the next replay; then whole epochs with evaluation run on it."""
    extra = ("train.grad_accum_steps=2", "data.num_frames=80", "train.device=cuda")
    eager_task, eager = dual(tmp_path / "eager", "cuda", "none", *extra)
    task, graphs = dual(tmp_path / "graph", "cuda", compile_mode, *extra, "train.graph_step=true")
    assert graphs.step_graph is not None
    for t in (eager_task, task):
        t.begin_epoch(1)
    batches = task.train_batches(1)
    steps = [batches[i:i + 2] for i in range(0, 16, 2)]
    got = [graphs.train_step(*pair) for pair in steps[:4]]  # warm-up x3, capture (+ replay)
    with syncs_are_errors():
        got += [graphs.train_step(*pair) for pair in steps[4:]]
    assert len(graphs.step_graph.graphs) == 1
    assert_steps_match(got, [eager.train_step(*pair) for pair in steps])
    graphs.cfg.epochs = graphs.cfg.stop_after = 2
    with AsyncSummaryWriter(str(tmp_path / "tb")) as writer:
        task.writer = writer
        graphs.fit()
    acc = load_events(tmp_path / "tb")
    for tag in ("Train/PSNR", "Train/Loss/total_loss", "Train/Gradients/total_norm"):
        values = [v for _, v in scalar_series(acc, tag)]
        assert len(values) == 2 and all(math.isfinite(v) for v in values), tag
    assert [s for s, _ in scalar_series(acc, "Eval/Frame/val_psnr")] == [2]


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("graphs", ["train.compile=reduce-overhead", "train.graph_step=true"])
def test_cascade_cuda_graphs_train_and_log(tmp_path, graphs):
    """Either kind of CUDA graphs (the whole step: fp16 with its GradScaler, the diffusion noise drawn inside)."""
    import torch._dynamo

    from hnerv_fast.train.tasks.cascade import CascadeStageTask, load_cascade_data

    cfg = load_config("configs/cascade_tiny.yaml", [
        f"output.checkpoint_dir={tmp_path}", "train.progress=false", "train.compile=none", graphs,
        "train.device=cuda", "train.grad_accum_steps=2", "train.epochs=3", "train.val_samples=1",
        "train.sample_every=1", "diffusion.ddim_steps=2", "train.log_every_steps=1"])
    device = pick_device(cfg.train.device)
    seed_everything(cfg.train.seed, deterministic=False)
    data = load_cascade_data(cfg, device)
    task = CascadeStageTask(cfg, "stage_16", data, None, device)
    engine = Engine(task, cfg.stage_train("stage_16"), device, tmp_path)
    skips_before = cudagraph_skips()
    with AsyncSummaryWriter(str(tmp_path / "tb")) as writer:
        task.writer = writer
        engine.cfg.stop_after = 1
        engine.fit()  # compile, warm up, record
        engine.cfg.stop_after = None
        with torch._dynamo.config.patch(error_on_recompile=True):
            engine.fit()  # replays; eval and DDIM sampling run between them
    assert cudagraph_skips() == skips_before, "reduce-overhead ran without CUDA graphs"
    if engine.step_graph is not None:  # 2 steps an epoch: warm-up x3, then the 4th captured, 5 and 6 replayed
        assert len(engine.step_graph.graphs) == 1
    acc = load_events(tmp_path / "tb")
    for name in CascadeTags.STEP + CascadeTags.EPOCH + CascadeTags.PERF:
        values = [v for _, v in scalar_series(acc, CascadeTags.tag("stage_16", name))]
        assert values and all(math.isfinite(v) for v in values), name
    assert [s for s, _ in scalar_series(acc, CascadeTags.tag("stage_16", PerfTags.STEP_TIME_MS))] == [1, 2, 3]


def test_engine_marks_task_tensors_static_only_when_compiling(tmp_path, monkeypatch):
    marked = []
    monkeypatch.setattr(torch._dynamo, "mark_static_address", lambda t: marked.append(t))
    task, _ = dual(tmp_path, "cpu", "none")
    assert not marked
    task, _ = dual(tmp_path, "cpu", "default")
    assert [id(t) for t in marked] == [id(t) for t in task.static_inputs()]
    assert any(t is task.patches for t in marked) and any(t is task.clip_targets for t in marked)
