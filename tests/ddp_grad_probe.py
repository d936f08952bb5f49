"""Run by tests/test_distributed.py, alone or under torchrun: one cascade optimizer step of the engine
(stage_16 of the tiny config, 8 train cases) from fixed seeds; rank 0 saves the all-reduced gradient
and the step's metrics (averaged over ranks) to <out.pt>. Usage: ddp_grad_probe.py <batch_size> <out.pt>"""
from __future__ import annotations

import sys

import torch

from hnerv_fast.config import load_config
from hnerv_fast.train import distributed
from hnerv_fast.train.engine import Engine, pick_device
from hnerv_fast.train.tasks.cascade import CascadeStageTask, load_cascade_data


def main(batch_size: str, out: str) -> None:
    cfg = load_config("configs/cascade_tiny.yaml", ["data.num_cases=10", f"train.batch_size={batch_size}",
                                                    "train.grad_clip=null",
                                                    "train.amp=none"])  # fp32: the two sums agree to rounding
    device = pick_device("cpu")
    with distributed.process_group(device, timeout_s=120):
        data = load_cascade_data(cfg, device)
        torch.manual_seed(0)
        task = CascadeStageTask(cfg, "stage_16", data, None, device)
        engine = Engine(task, cfg.stage_train("stage_16"), device, checkpoint_dir=out + ".ckpt")
        torch.manual_seed(5)
        metrics, norms = engine.train_step(task.train_batches(1)[0])
        grad = torch.cat([p.grad.flatten() for p in task.model.parameters()])
        sums = distributed.all_reduce_mean_(torch.cat([metrics, norms]))
        if distributed.is_main():
            torch.save({"grad": grad, "metrics": sums}, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
