"""The seed-style training loop: what the published dual-head trainer does per batch, on our model and data.

Unfused reference losses, a per-parameter gradient-norm loop with `.item()`, per-batch `.item()` logging
into a synchronous SummaryWriter that flushes every batch, and (like the published trainer) a checkpoint
written after every epoch. The baseline of benchmarks/test_train_step.py and benchmarks/test_epoch.py.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from hnerv_fast.logging.layouts import DualTags as T
from hnerv_fast.ops import reference


def published_blocks(model: nn.Module) -> nn.Module:
    """The same model, sharing its parameters, with every upsampling block written as the published trainers
    write it (Conv2d -> nn.PixelShuffle -> activation); our HNeRVBlock computes the same function with its
    convolution's output channels reordered, which the seed-style baseline should not get for free."""
    seed = copy.copy(model)
    seed._modules = dict(model._modules)  # a shallow copy would share the module table: give it its own
    seed.blocks = nn.Sequential(*[
        nn.Sequential(b.conv, nn.PixelShuffle(b.stride) if b.stride > 1 else nn.Identity(), b.act)
        for b in model.blocks])
    return seed


def seed_style_epoch(task, model, optimizer, writer, batches, device, checkpoint: Path | None = None) -> None:
    groups = model.param_groups()
    for step, batch in enumerate(batches):
        ids = task.split_ids["train"][batch.ids]
        target = task.patches[ids].float() / 255.0
        rgb, embedding = model(task.coords[ids])
        pixel = reference.pixel_loss(rgb, target, task.cfg.loss.pixel).mean()
        clip = (1 - torch.nn.functional.cosine_similarity(embedding, task.clip_targets[ids], dim=-1)).mean()
        total = pixel + task.cfg.loss.clip_weight * clip
        optimizer.zero_grad()
        total.backward()
        norms = {name: sum(p.grad.norm().item() ** 2 for p in params) ** 0.5 for name, params in groups.items()}
        optimizer.step()
        psnr = reference.psnr(rgb.detach(), target).mean()
        writer.add_scalar(T.BATCH_PSNR, psnr.item(), step)
        writer.add_scalar(T.BATCH_PIXEL, pixel.item(), step)
        writer.add_scalar(T.BATCH_CLIP, clip.item(), step)
        writer.add_scalar(T.BATCH_TOTAL, total.item(), step)
        writer.add_scalar(T.GRAD_TOTAL, sum(v**2 for v in norms.values()) ** 0.5, step)
        writer.flush()  # the seed writes synchronously
    if checkpoint is not None:
        torch.save({"state_dict": model.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint)
    if device.type == "cuda":
        torch.cuda.synchronize()
