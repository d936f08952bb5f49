"""Hybrid ViT cascade task (X-ray -> CT, one conditional-diffusion stage per resolution).

One :class:`CascadeStageTask` per stage; `cascade_run.build` hands the trainer the stages in order, each with
its own Engine (AdamW, its own epochs / batch size / lr). Pieces:

* :func:`load_cascade_data` - every case of the run (:mod:`hnerv_fast.data.cascade_data`), with the
  physics loss's DRR as the projector of CT cases without X-ray files.
* :class:`Conditioning` - the previous-stage volume a stage is conditioned on: the ground truth at
  the previous stage's size (``train.conditioning=ground_truth``) or, by default, the volume the
  trained previous stage DDIM-samples from the case's X-rays (``generated``: once per case, cached
  for the whole stage, and recursively through the earlier stages, exactly as at inference).
* :class:`CascadeStageTask` - forward + loss (``diffusion_and_physics_loss``), the seed tags of
  docs/tags_cascade.md (names from ``CascadeTags``), validation with fixed (t, noise), DDIM sample
  images, checkpoint names ``{stage}_best.pt`` / ``{stage}_epoch_{N}.pt`` / ``{stage}_final.pt``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hnerv_fast.checkpoint_io import CheckpointError
from hnerv_fast.config import CascadeConfig, ConfigError, Plateau, to_dict
from hnerv_fast.data import cascade_data
from hnerv_fast.data.cascade_data import CascadeData
from hnerv_fast.logging.async_writer import AsyncSummaryWriter
from hnerv_fast.logging.layouts import CascadeTags as T
from hnerv_fast.models.cascade import CascadeStage, StageConfig
from hnerv_fast.models.cascade_diffusion import diffusion_and_physics_loss, sample_stage
from hnerv_fast.models.cascade_io import load_stage_model
from hnerv_fast.models.volume_metrics import volume_psnr, volume_ssim
from hnerv_fast.models.diffusion import CosineSchedule, sample_timesteps
from hnerv_fast.models.drr import drr, physics_loss
from hnerv_fast.train import distributed, precision
from hnerv_fast.train.engine import Batch, Task, epoch_batches
from hnerv_fast.train.health_hook import HealthReporter
from hnerv_fast.train.schedule import PlateauSchedule, cosine_multiplier


# ------------------------------------------------------------------------------------------- data
def load_cascade_data(cfg: CascadeConfig, device: torch.device) -> CascadeData:
    """All cases of the run; the data layer gets the DRR (models/) it projects X-ray-less CT cases with."""
    return cascade_data.load_cascade_data(cfg, device, project=drr)


# ------------------------------------------------------------------------------------- stages
def stage_config(cfg: CascadeConfig, name: str) -> StageConfig:
    """The model hyper-parameters of stage ``name`` (config keys -> models.cascade.StageConfig)."""
    s = cfg.stages[name]
    try:
        return StageConfig(name=name, volume_size=s.size, voxel_dim=s.width, depth=s.depth, num_heads=s.heads,
                           patch_size=s.patch, xray_size=cfg.data.xray_size, num_views=len(cfg.data.views),
                           views=tuple(cfg.data.views), mlp_ratio=s.mlp_ratio,
                           encoder_channels=s.encoder_channels, lift_channels=s.lift_channels,
                           cross_attention=s.cross_attention, grad_checkpointing=s.grad_checkpointing)
    except ValueError as exc:
        raise ConfigError(f"stages.{name}: {exc}") from None


def _seed(*parts: int) -> int:
    value = 0
    for p in parts:
        value = (value * 1_000_003 + int(p)) % (1 << 62)
    return value


def _generator(device: torch.device, *parts: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(_seed(*parts))


class Conditioning:
    """Previous-stage volumes (all cases, ``[N, 1, s, s, s]``) per stage; see the module doc.

    ``generated``: stage k-1's model (kept from this process, else loaded from
    ``<checkpoint_dir>/{stage}_final.pt``) DDIM-samples ``diffusion.ddim_steps`` steps from fixed
    seeded noise, conditioned on its own previous stage in turn. The result is cached, so a stage's
    conditioning is one fixed sample per case (not resampled per epoch) and generating costs one
    DDIM pass per case and stage.
    """

    def __init__(self, cfg: CascadeConfig, data: CascadeData, device: torch.device, checkpoint_dir: str | Path):
        self.cfg, self.data, self.device = cfg, data, device
        self.checkpoint_dir = Path(checkpoint_dir)
        self.order = cfg.cascade_order()
        self.models: dict[str, CascadeStage] = {}
        self._cache: dict[str, torch.Tensor] = {}
        self.schedule = CosineSchedule(cfg.diffusion.timesteps, device=device)
        self.amp = precision.resolve_amp(cfg.train.amp, device)  # the engine's precision, as at training

    def previous(self, name: str) -> str | None:
        k = self.order.index(name)
        return self.order[k - 1] if k > 0 else None

    def final_path(self, name: str) -> Path:
        return self.checkpoint_dir / f"{name}_final.pt"

    def check_available(self, name: str) -> None:
        """Fail early (before anything is written) when ``name`` needs earlier stages' weights."""
        if self.cfg.train.conditioning != "generated":
            return
        for earlier in self.order[: self.order.index(name)]:
            path = self.final_path(earlier)
            if not path.is_file() and earlier not in self.models:
                raise CheckpointError(
                    f"checkpoint not found: {path} (train.conditioning=generated: stage {name!r} is conditioned on "
                    f"volumes generated by {earlier!r}; train {earlier!r} first or set train.conditioning=ground_truth)")

    def for_stage(self, name: str) -> torch.Tensor | None:
        prev = self.previous(name)
        if prev is None:
            return None
        if self.cfg.train.conditioning == "ground_truth":
            return self.data.volumes[self.cfg.stages[prev].size]
        return self.generated(prev)

    def generated(self, name: str) -> torch.Tensor:
        if name in self._cache:
            return self._cache[name]
        model = self.models.get(name)
        if model is None:
            model, _ = load_stage_model(self.final_path(name), self.device)
        cond = self.for_stage(name)
        was_training = model.training
        model.eval()
        d = self.data
        n = len(d.names)
        size = model.config.volume_size
        chunk = self.cfg.stage_engine(name).batch_size
        gen = _generator(self.device, self.cfg.train.seed, self.order.index(name), 7)
        out = []
        with precision.autocast(self.amp, self.device):
            for start in range(0, n, chunk):
                rows = torch.arange(start, min(n, start + chunk), device=d.device)
                x_T = torch.randn((len(rows), 1, size, size, size), generator=gen, device=self.device)
                xr = d.to_device(d.xrays[rows], self.device)
                prev = None if cond is None else d.to_device(cond[rows], self.device)
                vol = sample_stage(model, self.schedule, xr, prev, self.cfg.diffusion.ddim_steps, x_T=x_T)
                out.append(vol.float().to(d.device))
        model.train(was_training)
        result = torch.cat(out)
        if d.device.type == "cpu" and self.device.type == "cuda":
            result = result.pin_memory()
        self._cache[name] = result
        return result


# --------------------------------------------------------------------------------------- task
class CascadeStageTask(Task):
    metric_names = ("loss", "diffusion", "physics")

    def __init__(self, cfg: CascadeConfig, name: str, data: CascadeData, prev: torch.Tensor | None,
                 device: torch.device, writer: AsyncSummaryWriter | None = None):
        self.cfg, self.name, self.data, self.prev, self.device, self.writer = cfg, name, data, prev, device, writer
        self.engine_cfg = cfg.stage_engine(name)
        self.health = HealthReporter(cfg.health)
        self.stage_index = cfg.cascade_order().index(name)
        self.stage_config = stage_config(cfg, name)
        self.size = self.stage_config.volume_size
        self.views = tuple(cfg.data.views)
        self.model = CascadeStage(self.stage_config).to(device)
        self.schedule = CosineSchedule(cfg.diffusion.timesteps, device=device)
        # the engine's precision (it resolves engine_cfg.amp the same way) for the no-grad passes outside its step
        self.amp = precision.resolve_amp(self.engine_cfg.amp, device)
        self.physics_weight = float(cfg.diffusion.physics_weight)
        self.val_loss: float | None = None
        self.best_val_loss: float | None = None
        schedule = cfg.train.schedule  # a plateau schedule steps on each epoch's validation loss
        self.plateau = PlateauSchedule(*schedule) if isinstance(schedule, Plateau) else None
        self._tags_step = [T.tag(name, n) for n in T.STEP]
        # fixed validation timesteps: val_draws stratified draws per case, seeded per stage
        draws, steps = cfg.train.val_draws, cfg.diffusion.timesteps
        g = torch.Generator().manual_seed(_seed(cfg.train.seed, self.stage_index, 11))
        n_val = len(data.val_rows)
        u = torch.rand((draws, n_val), generator=g, dtype=torch.float64)
        bins = torch.arange(draws, dtype=torch.float64)[:, None]
        t = ((bins + u) / draws * steps).long().clamp_(0, steps - 1)  # [draws, n_val]
        self.val_t = t.reshape(-1).to(device)
        self.val_rows = data.val_rows.repeat(draws)  # row k*n_val + i = case i, draw k

    # ------------------------------------------------------------------------------ training
    def make_optimizer(self, lr: torch.Tensor) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=self.cfg.train.weight_decay,
                                 fused=True)

    def lr_multiplier(self, progress: float) -> float:
        if self.plateau is not None:
            return self.plateau.multiplier
        schedule = self.cfg.train.schedule
        return 1.0 if schedule is None else cosine_multiplier(progress, *schedule)

    def grad_groups(self):
        return {"model": list(self.model.parameters())}

    def static_inputs(self) -> list[torch.Tensor]:
        d, s = self.data, self.schedule
        tensors = [d.train_rows, d.xrays, d.volumes[self.size], s.betas, s.alphas_cumprod, s.sqrt_alphas_cumprod,
                   s.sqrt_one_minus_alphas_cumprod]
        return tensors if self.prev is None else [*tensors, self.prev]

    def train_batches(self, epoch: int) -> list[Batch]:
        e = self.engine_cfg
        return epoch_batches(len(self.data.train_rows), e.batch_size, epoch, _seed(e.seed, self.stage_index),
                             e.drop_last, self.data.device, e.grad_accum_steps)

    def _inputs(self, rows: torch.Tensor):
        d, dev = self.data, self.device
        x0 = d.to_device(d.volumes[self.size][rows], dev)
        xrays = d.to_device(d.xrays[rows], dev)
        prev = None if self.prev is None else d.to_device(self.prev[rows], dev)
        return x0, xrays, prev

    def forward_loss(self, batch: Batch, model: torch.nn.Module):
        # Padding rows of a partial last batch (drop_last=false) count like the others: the stage loss is a
        # batch mean. t and noise come from the global RNG (saved in checkpoints: resume is exact), drawn
        # for the global batch of all ranks and sliced: ranks never share noise, and N ranks x B rows draw
        # what one process with N*B rows draws (in one process this is the loss function's own draw).
        x0, xrays, prev = self._inputs(self.data.train_rows[batch.ids])
        rows = slice(batch.offset, batch.offset + x0.shape[0])
        t = sample_timesteps(batch.global_size, self.schedule, device=x0.device)[rows]
        noise = torch.randn((batch.global_size, *x0.shape[1:]), device=x0.device, dtype=x0.dtype)[rows]
        total, diffusion, physics = diffusion_and_physics_loss(
            model, self.schedule, x0, xrays, self.views, prev, self.physics_weight,
            t=t, noise=noise, physics_at=self.cfg.diffusion.physics_at)
        return total, torch.stack([total.detach(), diffusion.detach(), physics.detach()])

    def on_step(self, epoch: int, global_step: int, metrics: torch.Tensor, norms: torch.Tensor) -> None:
        if global_step % self.engine_cfg.log_every_steps == 0:
            self.writer.add_scalars(global_step, dict(zip(self._tags_step, metrics)))

    def progress_postfix(self) -> dict[str, float]:
        value = self.writer.latest.get(self._tags_step[0]) if self.writer is not None else None
        return {} if value is None else {"loss": round(value, 4)}

    # ------------------------------------------------------------------------ epoch logging
    def end_epoch(self, epoch: int, sums: torch.Tensor, steps: torch.Tensor, lr: torch.Tensor, seconds: float,
                  perf: dict[str, Any], skipped: torch.Tensor) -> float | None:
        tag = lambda n: T.tag(self.name, n)  # noqa: E731
        train = sums[:3] / steps
        val = self.validate()
        # T.EPOCH order: train loss/diffusion/physics, val loss/diffusion/physics, epoch_time, learning_rate
        values = dict(zip(map(tag, T.EPOCH), [*train, *val, seconds, lr]))
        values.update({tag(name): value for name, value in perf.items()})
        values[tag(T.SKIPPED_STEPS)] = skipped
        epochs = self.engine_cfg.epochs
        def report(v: dict[str, float]) -> None:  # on the writer thread, values already on the host
            _print_epoch(self.name, epoch, epochs, v)
            self.health(self.writer, epoch, v)

        self.writer.add_scalars(epoch, values, callback=report)
        sample_due = epoch % self.cfg.train.sample_every == 0 or epoch == epochs
        if self.cfg.train.val_samples > 0 and sample_due and distributed.is_main():  # images: rank 0 only
            self.log_samples(epoch)
        # one host read per epoch (outside the hot loop) decides which checkpoint is best
        self.val_loss = float(val[0])
        if self.best_val_loss is None or self.val_loss < self.best_val_loss:
            self.best_val_loss = self.val_loss
        if self.plateau is not None:  # the next epoch's lr (logged as {stage}/learning_rate)
            self.plateau.step(self.val_loss)
        return -self.val_loss

    @torch.no_grad()
    def validate(self) -> torch.Tensor:
        """[val_loss, val_diffusion, val_physics]: fixed t and noise (seeded per chunk), so epochs compare."""
        self.model.eval()
        sums = torch.zeros(3, device=self.device)
        chunk = self.engine_cfg.batch_size
        total_rows = len(self.val_rows)
        for j, start in enumerate(range(0, total_rows, chunk)):
            rows = self.val_rows[start:start + chunk]
            x0, xrays, prev = self._inputs(rows)
            gen = _generator(self.device, self.cfg.train.seed, self.stage_index, 13, j)
            noise = torch.randn(x0.shape, generator=gen, device=self.device)
            with precision.autocast(self.amp, self.device):
                losses = diffusion_and_physics_loss(
                    self.model, self.schedule, x0, xrays, self.views, prev, self.physics_weight,
                    t=self.val_t[start:start + chunk], noise=noise, physics_at=self.cfg.diffusion.physics_at)
            sums += torch.stack(losses).float() * len(rows)
        self.model.train()
        return sums / total_rows

    @torch.no_grad()
    def log_samples(self, epoch: int) -> None:
        """DDIM samples of the first val_samples validation cases: middle depth slice, GT | sample, as images;
        their PSNR and 3D SSIM against the ground truth and their DRRs' MSE against the input X-rays."""
        d = self.data
        rows = d.val_rows[: self.cfg.train.val_samples]
        x0, xrays, prev = self._inputs(rows)
        gen = _generator(self.device, self.cfg.train.seed, self.stage_index, 17)
        x_T = torch.randn(x0.shape, generator=gen, device=self.device)
        self.model.eval()
        with precision.autocast(self.amp, self.device):
            sample = sample_stage(self.model, self.schedule, xrays, prev, self.cfg.diffusion.ddim_steps,
                                  x_T=x_T).float()
        self.model.train()
        quality = (volume_psnr(sample, x0).mean(), volume_ssim(sample, x0).mean(),
                   physics_loss(sample, xrays, self.views, at=self.cfg.diffusion.physics_at))
        self.writer.add_scalars(epoch, {T.tag(self.name, n): v for n, v in zip(T.SAMPLE_QUALITY, quality)})
        mid = self.size // 2
        for i, row in enumerate(rows.tolist()):
            gt, pred = x0[i, 0, mid], sample[i, 0, mid]  # [H, W]
            gap = torch.ones(gt.shape[0], 1, device=gt.device)
            image = torch.cat([gt, gap, pred], dim=1).clamp(0, 1).expand(3, -1, -1)
            self.writer.add_image(f"{T.tag(self.name, T.IMAGES)}/{d.names[row]}", image, epoch)

    # ------------------------------------------------------------------------- checkpoints
    def checkpoint_names(self, epoch: int, improved: bool, last: bool) -> list[str]:
        names = [f"{self.name}_best.pt"] if improved else []
        stop = self.engine_cfg.stop_after
        if epoch % self.cfg.train.save_every == 0 or (stop is not None and epoch == stop and not last):
            names.append(f"{self.name}_epoch_{epoch}.pt")  # also where a stop_after invocation resumes from
        if last:
            names.append(f"{self.name}_final.pt")
        return names

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"stage": self.name, "stage_config": self.stage_config.to_dict(), "val_loss": self.val_loss,
                "best_val_loss": self.best_val_loss, "cascade": self.cfg.cascade_order(), "config": to_dict(self.cfg),
                **({"plateau": self.plateau.state_dict()} if self.plateau is not None else {})}

    def load_extra(self, state: dict[str, Any]) -> None:
        self.val_loss = state.get("val_loss")
        self.best_val_loss = state.get("best_val_loss")
        if self.plateau is not None and "plateau" in state:
            self.plateau.load_state_dict(state["plateau"])


def _print_epoch(stage: str, epoch: int, epochs: int, v: dict[str, float]) -> None:
    from tqdm import tqdm

    loss, diffusion, physics, val_loss, _, _, seconds, lr = (v[T.tag(stage, n)] for n in T.EPOCH)
    tqdm.write(f"{stage} epoch {epoch}/{epochs} {seconds:.1f}s  train {loss:.4f} "
               f"(diffusion {diffusion:.4f}, physics {physics:.4f})  val {val_loss:.4f}  lr {lr:.2e}")
