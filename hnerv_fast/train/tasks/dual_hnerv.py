"""Dual-head patch HNeRV task: data on device, forward + loss, tags of docs/tags_dual_hnerv.md."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from hnerv_fast.config import ConfigError, DualHNeRVConfig, to_dict
from hnerv_fast.data.clip_targets import clip_targets_for
from hnerv_fast.data.patches import PatchGrid, from_patches, patch_coords, sample_ids, split_frames, to_patches
from hnerv_fast.data.video import load_frames
from hnerv_fast.logging.async_writer import AsyncSummaryWriter
from hnerv_fast.logging.layouts import DualTags as T
from hnerv_fast.models.hnerv_dual import DualHNeRV
from hnerv_fast.ops import patch_psnr, pixel_loss
from hnerv_fast.train import distributed
from hnerv_fast.train.health_hook import HealthReporter
from hnerv_fast.train.engine import Batch, Task, epoch_batches
from hnerv_fast.train.schedule import cosine_multiplier


def param_str(cfg: DualHNeRVConfig) -> str:
    if cfg.output.param_str:
        return cfg.output.param_str
    m, t = cfg.model, cfg.train
    strides = "_".join(str(s) for s in m.dec_strds)
    return (f"{cfg.loss.pixel}_clip{cfg.loss.clip_weight:g}_e{t.epochs}_b{t.batch_size}_lr{t.lr:g}"
            f"_fc{m.fc_dim}_s{strides}")


def run_dir(cfg: DualHNeRVConfig) -> Path:
    return Path(cfg.output.output_dir) / cfg.output.exp_id / param_str(cfg)


def check_decoder_fits(cfg: DualHNeRVConfig, frame_hw: tuple[int, int], patch_hw: tuple[int, int]) -> None:
    """ConfigError when the decoder's output is not the patch size (checked before the CLIP encoder runs)."""
    m = cfg.model
    if m.output_size() != tuple(patch_hw):
        raise ConfigError(
            f"model.fc_hw / model.dec_strds: decoder output {m.output_size()} = fc_hw {list(m.fc_hw)} x "
            f"prod(dec_strds {list(m.dec_strds)}) must equal the patch size {tuple(patch_hw)} "
            f"(frames {frame_hw[0]}x{frame_hw[1]} split into {cfg.data.patch_rows}x{cfg.data.patch_cols} patches)"
        )


class DualHNeRVTask(Task):
    metric_names = ("psnr", "pixel_loss", "clip_loss", "total_loss")

    def __init__(self, cfg: DualHNeRVConfig, device: torch.device, writer: AsyncSummaryWriter | None = None):
        self.cfg, self.device, self.writer = cfg, device, writer  # writer is attached before fit()
        d = cfg.data
        frames = load_frames(d.source, d.path, num_frames=d.num_frames, height=d.height, width=d.width,
                             seed=d.seed, max_frames=d.max_frames, resize=tuple(d.resize) if d.resize else None)
        self.grid = PatchGrid(d.patch_rows, d.patch_cols)
        num_frames, _, height, width = frames.shape
        self.video = {"num_frames": num_frames, "height": height, "width": width}
        patch_hw = self.grid.patch_size(height, width)
        patches_cpu = to_patches(frames, self.grid)
        train_frames, val_frames = split_frames(num_frames, d.split, d.shuffle, d.seed)
        if len(train_frames) == 0:
            raise ConfigError(f"data.data_split: {d.data_split!r} leaves no training frame out of {num_frames}")
        self.split_frames = {"train": train_frames.to(device), "val": val_frames.to(device)}
        self.split_ids = {name: sample_ids(ids, self.grid).to(device) for name, ids in self.split_frames.items()}
        check_decoder_fits(cfg, (height, width), patch_hw)
        targets = clip_targets_for(patches_cpu, cfg.clip, device, key=self.grid.key)
        self.patches = patches_cpu.to(device)  # uint8: patches are sliced by id in the step
        self.coords = patch_coords(num_frames, height, width, self.grid).to(device)
        self.clip_targets = targets.to(device)
        self.model = DualHNeRV(cfg.model, clip_dim=targets.shape[1]).to(device)
        self.clip_active = torch.zeros((), device=device)
        self.health = HealthReporter(cfg.health)
        self._eval_batch = self._eval_batch_eager  # the engine swaps in its compiled version

    # ------------------------------------------------------------------------------ training
    def make_optimizer(self, lr: torch.Tensor) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=lr, betas=tuple(self.cfg.train.betas), fused=True)

    def lr_multiplier(self, progress: float) -> float:
        return cosine_multiplier(progress, *self.cfg.train.schedule)

    def grad_groups(self):
        return self.model.param_groups()

    def train_batches(self, epoch: int) -> list[Batch]:
        t = self.cfg.train
        return epoch_batches(len(self.split_ids["train"]), t.batch_size, epoch, t.seed, t.drop_last, self.device,
                             t.grad_accum_steps)

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer, taken: torch.Tensor) -> None:
        # The published trainer gives the CLIP head no optimizer state before the warmup ends. Here its gradient is
        # zero during the warmup, so its moments stay 0 and its weights unchanged, but fused Adam still counts the
        # steps, and the first real updates would get almost no bias correction (up to ~6x larger steps): take
        # the warmup's steps back off its count, on the device (no host sync, no recompile).
        undo = (1.0 - self.clip_active) * taken
        for p in self.model.clip_head.parameters():
            step = optimizer.state.get(p, {}).get("step")
            if step is not None:
                step.sub_(undo)

    def begin_epoch(self, epoch: int) -> None:
        # Warmup epochs 1..N train pixels only; the flag is a tensor so flipping it does not recompile.
        self.clip_active.fill_(float(epoch > self.cfg.loss.pixel_loss_warmup_epochs))

    def forward_loss(self, batch: Batch, model: torch.nn.Module):
        ids = self.split_ids["train"][batch.ids]
        target = self.patches[ids].float() / 255.0
        rgb, embedding = model(self.coords[ids])  # the DDP wrapper under torchrun
        weight = batch.weight / batch.denom  # sums to 1 over the optimizer step (all ranks, micro-batches)
        pixel = (pixel_loss(rgb, target, self.cfg.loss.pixel) * weight).sum()
        cosine = (embedding * self.clip_targets[ids]).sum(dim=-1)
        clip = ((1.0 - cosine) * weight).sum() * self.clip_active
        total = pixel + self.cfg.loss.clip_weight * clip
        psnr = (patch_psnr(rgb.detach(), target) * weight).sum()
        return total, torch.stack([psnr, pixel.detach(), clip.detach(), total.detach()])

    def on_step(self, epoch: int, global_step: int, metrics: torch.Tensor, norms: torch.Tensor) -> None:
        if global_step % self.cfg.train.log_every_steps == 0:
            self.writer.add_scalars(global_step, dict(zip(T.BATCH, metrics)))

    def progress_postfix(self) -> dict[str, float]:
        latest = self.writer.latest
        return {k: round(latest[tag], 4) for k, tag in (("loss", T.BATCH_TOTAL), ("psnr", T.BATCH_PSNR)) if tag in latest}

    # ------------------------------------------------------------------------ epoch logging
    def end_epoch(self, epoch: int, sums: torch.Tensor, steps: torch.Tensor, lr: torch.Tensor,
                  seconds: float | Callable[[], float], perf: dict[str, Any], skipped: torch.Tensor) -> float | None:
        cfg = self.cfg
        means = sums / steps
        psnr, pixel, clip, total, g_total, g_decoder, g_rgb, g_clip = means.unbind()
        weighted = cfg.loss.clip_weight * clip
        values = {
            T.TRAIN_PSNR: psnr, T.LR: lr, T.PIXEL_LOSS: pixel, T.CLIP_LOSS: clip, T.TOTAL_LOSS: total,
            T.CLIP_LOSS_WEIGHTED: weighted,
            # ratios are 0 while the denominator is 0 (CLIP warmup), not inf
            T.PIXEL_TO_CLIP: _safe_ratio(pixel, clip), T.CLIP_ACTIVE: self.clip_active,
            T.GRAD_TOTAL: g_total, T.GRAD_RGB: g_rgb, T.GRAD_CLIP: g_clip, T.GRAD_DECODER: g_decoder,
            T.GRAD_RGB_TO_CLIP: _safe_ratio(g_rgb, g_clip),
            **perf,  # PerfTags names
            T.SKIPPED_STEPS: skipped,
        }
        epochs = cfg.train.epochs
        def report(v: dict[str, float]) -> None:  # on the writer thread, values already on the host
            _print_epoch(epoch, epochs, seconds() if callable(seconds) else seconds, v)
            self.health(self.writer, epoch, v)

        self.writer.add_scalars(epoch, values, callback=report)
        if epoch % cfg.train.params_every == 0:
            self._log_param_stats(epoch)
        if epoch % cfg.train.eval_freq == 0 or epochs - epoch in cfg.train.eval_final_offsets:
            return self.evaluate(epoch)
        return None

    def _log_param_stats(self, epoch: int) -> None:
        groups = self.model.param_groups()
        values = {}
        for name in ("rgb_head", "clip_head"):
            flat = torch.cat([p.detach().flatten() for p in groups[name]])
            values[f"Model/Params/{name}_mean"] = flat.mean()
            values[f"Model/Params/{name}_std"] = flat.std()
        self.writer.add_scalars(epoch, values)

    def static_inputs(self) -> list[torch.Tensor]:
        return [self.patches, self.coords, self.clip_targets, self.clip_active, *self.split_ids.values()]

    # ------------------------------------------------------------------------------- eval
    def compile_eval(self, compiler) -> None:
        self._eval_batch = compiler(self._eval_batch_eager)

    def _eval_batch_eager(self, ids: torch.Tensor):
        rgb, embedding = self.model(self.coords[ids])
        target = self.patches[ids].float() / 255.0
        sim = F.cosine_similarity(embedding, self.clip_targets[ids], dim=-1)
        return patch_psnr(rgb, target), sim, rgb.clamp(0, 1)

    @torch.no_grad()
    def predict(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-patch (psnr, clip similarity) and the RGB prediction for sample ids, in eval batches of one
        fixed size (the last one padded with repeated ids), so a compiled eval sees one static shape."""
        self.model.eval()
        # at most the largest split: a batch_size beyond the data (training caps it) must not pad every
        # eval call to that size (100000 patches of 160x80 take 15 GB)
        size = min(max(self.cfg.train.batch_size, 64), max(len(v) for v in self.split_ids.values()))
        outputs = None
        for start in range(0, len(ids), size):
            chunk = ids[start:start + size]
            n = len(chunk)
            padded = torch.cat([chunk, chunk[:1].expand(size - n)]) if n < size else chunk
            torch.compiler.cudagraph_mark_step_begin()
            results = self._eval_batch(padded)
            if outputs is None:
                outputs = [r.new_empty((len(ids), *r.shape[1:])) for r in results]
            for out, r in zip(outputs, results):  # copied out now: under CUDA graphs the next call overwrites r
                out[start:start + n].copy_(r[:n])
        self.model.train()
        psnr, sim, rgb = outputs
        return psnr, sim, rgb

    def evaluate(self, epoch: int) -> float:
        count = self.grid.count
        scalars: dict[str, Any] = {}
        frame_psnr_mean = {}
        for split in ("train", "val"):
            frames, ids = self.split_frames[split], self.split_ids[split]
            scalars[f"Eval/Info/num_{split}_frames"] = float(len(frames))
            scalars[f"Eval/Info/num_{split}_patches"] = float(len(ids))
            if len(ids) == 0:  # e.g. data_split 1_1_1 has no validation frames
                continue
            psnr, sim, rgb = self.predict(ids)
            frame_psnr = psnr.view(-1, count).mean(dim=1)  # frame PSNR = mean of its patches
            frame_sim = sim.view(-1, count).mean(dim=1)
            scalars.update({
                f"Eval/Frame/{split}_psnr": frame_psnr.mean(),
                f"Eval/Frame/{split}_clip_sim": frame_sim.mean(),
                f"Eval/Frame/{split}_clip_dist": 1.0 - frame_sim.mean(),
                f"Eval/PSNR_Stats/{split}_std": frame_psnr.std(correction=0),  # np.std, as the reference
                f"Eval/PSNR_Stats/{split}_min": frame_psnr.min(),
                f"Eval/PSNR_Stats/{split}_max": frame_psnr.max(),
                f"Eval/Patch/{split}_psnr_std": psnr.std(correction=0),
                f"Eval/Patch/{split}_clip_sim_std": sim.std(correction=0),
            })
            frame_psnr_mean[split] = frame_psnr.mean()
            scalars[f"_{split}_sim"] = frame_sim.mean()
            self.writer.add_histogram(f"Eval/Histogram/{split}_psnr_distribution", frame_psnr, epoch)
            self.writer.add_histogram(f"Eval/Histogram/{split}_clip_sim_distribution", frame_sim, epoch)
            self._log_images(split, frames, ids, rgb, epoch)
        train_sim, val_sim = scalars.pop("_train_sim"), scalars.pop("_val_sim", None)
        if "val" in frame_psnr_mean:
            scalars["Eval/Gap/psnr_gap"] = frame_psnr_mean["train"] - frame_psnr_mean["val"]
            scalars["Eval/Gap/clip_sim_gap"] = train_sim - val_sim
        self.writer.add_scalars(epoch, scalars, callback=lambda v: self.health(self.writer, epoch, v))
        # Eval is outside the hot loop: one host read decides which checkpoint is best.
        score = float(frame_psnr_mean.get("val", frame_psnr_mean["train"]))
        summary = " ".join(f"{s} {float(v):.2f} dB" for s, v in frame_psnr_mean.items())
        _write_line(f"eval epoch {epoch}: frame PSNR {summary}")
        return score

    def _log_images(self, split: str, frames: torch.Tensor, ids: torch.Tensor, rgb: torch.Tensor, epoch: int) -> None:
        shown = min(self.cfg.train.eval_images, len(frames))
        count = self.grid.count
        for k in range(shown):
            patch_ids = ids[k * count:(k + 1) * count]
            target = from_patches(self.patches[patch_ids].float() / 255.0, self.grid)[0]
            pred = from_patches(rgb[k * count:(k + 1) * count], self.grid)[0]
            self.writer.add_image(f"{T.IMAGES_PREFIX}/{split}_frame{int(frames[k])}_target_vs_pred",
                                  torch.cat([target, pred], dim=1), epoch)

    # ------------------------------------------------------------------------- checkpoints
    def checkpoint_names(self, epoch: int, improved: bool, last: bool) -> list[str]:
        return ["latest.pt", "best.pt"] if improved else ["latest.pt"]

    def checkpoint_extra(self) -> dict[str, Any]:
        # the video's geometry: decoding needs it without the frames (folder / video sources set it by loading)
        return {"config": to_dict(self.cfg), "video": dict(self.video)}


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num))


def _write_line(text: str) -> None:
    if not distributed.is_main():  # every rank evaluates; rank 0 reports
        return
    from tqdm import tqdm

    tqdm.write(text)


def _print_epoch(epoch: int, epochs: int, seconds: float, v: dict[str, float]) -> None:
    _write_line(
        f"epoch {epoch}/{epochs} {seconds:.1f}s  loss {v[T.TOTAL_LOSS]:.4f} (pixel {v[T.PIXEL_LOSS]:.4f}, "
        f"clip {v[T.CLIP_LOSS]:.4f})  PSNR {v[T.TRAIN_PSNR]:.2f} dB  lr {v[T.LR]:.2e}"
    )
