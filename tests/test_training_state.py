"""What a run keeps besides weights and optimizer moments, each pinned on the Engine / task directly (the
end-to-end runs cannot tell these apart: the tiny runs' validation scores only improve, their batches have
no padding, their validation rows fill whole chunks, and CPU runs have no loss scale):
best.pt is the best score's epoch, also across a resume; a resume restores the fp16 loss scale;
padding rows weigh nothing in the step metrics; the cascade validates every row."""
from __future__ import annotations

import torch

from hnerv_fast.logging.null_writer import NullWriter
from hnerv_fast.ops import patch_psnr
from hnerv_fast.train import checkpoint as ckpt
from hnerv_fast.train.engine import Batch
from hnerv_fast.train.tasks import cascade as cascade_task
from tests.hot_loop import cascade_engine, dual_engine

CPU = torch.device("cpu")
SMALL = ("train.epochs=3", "train.compile=none", "model.embed=pe_1.25_8", "model.fc_dim=16", "model.lower_width=8")


def _fit_with_scores(task, engine, scores: dict[int, float]) -> None:
    """engine.fit() where epoch e's validation score is scores[e] (the task still logs its own)."""
    end_epoch = task.end_epoch

    def scored_end_epoch(epoch, *args):
        end_epoch(epoch, *args)
        return scores[epoch]

    task.writer = NullWriter()
    task.end_epoch = scored_end_epoch
    engine.fit()


def test_best_checkpoint_is_the_best_score_not_the_last_evaluation(tmp_path):
    task, engine = dual_engine(tmp_path, CPU, *SMALL)
    _fit_with_scores(task, engine, {1: 20.0, 2: 25.0, 3: 22.0})
    best = ckpt.load(tmp_path / "ckpt" / "best.pt")
    assert (best["epoch"], best["best_score"]) == (2, 25.0)
    assert ckpt.load(tmp_path / "ckpt" / "latest.pt")["best_score"] == 25.0


def test_a_resumed_run_keeps_the_best_score(tmp_path):
    """Epoch 1 is the best; after a resume at epoch 2, epoch 3's lower score must not replace best.pt."""
    task, engine = dual_engine(tmp_path, CPU, *SMALL, "train.stop_after=2")
    _fit_with_scores(task, engine, {1: 25.0, 2: 20.0})
    task, engine = dual_engine(tmp_path, CPU, *SMALL)
    engine.resume(ckpt.load(tmp_path / "ckpt" / "latest.pt"), "latest.pt")
    _fit_with_scores(task, engine, {3: 22.0})
    assert ckpt.load(tmp_path / "ckpt" / "best.pt")["epoch"] == 1
    assert ckpt.load(tmp_path / "ckpt" / "latest.pt")["epoch"] == 3


def test_a_resume_restores_the_loss_scale(tmp_path):
    """fp16 (GPU) runs scale the loss; a resume that restarted the scale at 65536 would skip or change steps."""
    _, saved = dual_engine(tmp_path, CPU, *SMALL)
    saved.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _, resumed = dual_engine(tmp_path, CPU, *SMALL)
    resumed.scaler = torch.amp.GradScaler("cpu", init_scale=65536.0)
    resumed.resume(saved.state(1), "saved")
    assert resumed.scaler.get_scale() == 1024.0


def test_padding_rows_weigh_nothing_in_the_step_metrics(tmp_path):
    """train.drop_last=false pads the last batch with repeated ids of weight 0: Train_Batch/PSNR and the pixel
    loss are the means over the real rows."""
    task, _ = dual_engine(tmp_path, CPU, *SMALL)
    real = torch.arange(5)
    ids = torch.cat([real, torch.zeros(3, dtype=torch.long)])  # 3 padding rows repeating row 0
    weight = torch.cat([torch.ones(5), torch.zeros(3)])
    _, metrics = task.forward_loss(Batch(ids, weight, denom=weight.sum()), task.model)
    patches = task.split_ids["train"][real]
    with torch.no_grad():
        rgb, _ = task.model(task.coords[patches])
        target = task.patches[patches].float() / 255.0
    assert torch.allclose(metrics[0], patch_psnr(rgb, target).mean(), rtol=1e-5)


def test_cascade_validation_covers_a_last_partial_chunk(tmp_path, monkeypatch):
    """Validation rows (cases x draws) that do not fill whole batches: the last, smaller chunk counts too."""
    task, _ = cascade_engine(tmp_path, CPU, "train.batch_size=3")
    rows = len(task.val_rows)
    assert rows % 3, rows  # the premise: a partial last chunk
    seen = []

    def loss_of_chunk(model, schedule, x0, *args, **kwargs):  # each chunk's loss is its first row's index
        seen.append(len(x0))
        value = torch.tensor(float(sum(seen) - len(x0)))
        return value, value, value

    monkeypatch.setattr(cascade_task, "diffusion_and_physics_loss", loss_of_chunk)
    val = task.validate()
    assert sum(seen) == rows and seen[-1] == rows % 3
    starts = torch.arange(0, rows, 3, dtype=torch.float32)
    sizes = torch.tensor([float(n) for n in seen])
    assert torch.allclose(val, (starts * sizes).sum().div(rows).expand(3))
