"""The LightningModule that trains the talking head: stages ``head``, ``lips`` and ``torso``."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from torch.optim.swa_utils import AveragedModel
from torchmetrics.image import PeakSignalNoiseRatio

from synctalk.data.datamodule import SubjectFrames, temporal_context
from synctalk.errors import UserError
from synctalk.geometry import pixel_rays
from synctalk.models import losses
from synctalk.models.head_nerf import HeadNeRF
from synctalk.models.losses import LossConfig
from synctalk.models.occupancy import OccupancyConfig, OccupancyGrid
from synctalk.models.rendering import MARCH_SAMPLES
from synctalk.models.torso import TorsoField


@dataclass
class StageConfig:
    """The ``stage`` group: which training stage, where it starts from, its rays and patch losses."""

    name: str = "head"  # head | lips | torso
    init_from: Optional[str] = None  # checkpoint of the previous stage (weights only)
    lips_ray_fraction: float = 0.0  # share of rays sampled inside the mouth box
    patch_size: int = 0  # > 0: one square patch of rays per step for the patch losses (px at data resolution)
    patch_weight: float = 0.0  # patch loss on patches inside the face box (every other step)
    lips_patch_weight: float = 0.0  # patch loss on patches centred on the mouth (the other steps)


CPU_CHUNK = 4096  # the most rays a CPU renders at once


class HeadNeRFSystem(pl.LightningModule):
    """Trains a :class:`HeadNeRF` on rays of one frame per step.

    Head and lips stages: photometric loss (uncertainty-weighted after a warm-up), opacity
    entropy, the masked attention loss, and in the lips stage a patch loss on alternating
    face / mouth patches. An EMA copy of the weights renders validation and final frames;
    an occupancy grid lets rendering skip empty space.

    With a ``torso`` field (stage ``torso``) the head is frozen and only the torso learns:
    each pixel is the head render composited over the torso, itself over the static
    background. Without one, the head is composited over the dataset's torso images.

    Args:
        net: the radiance field (built from ``model.net``).
        optimizer: a partial optimizer, finished with two parameter groups (grid, MLPs).
        lr_grid, lr_net: learning rates of the two groups.
        lr_decay: learning rates are multiplied by ``lr_decay ** (step / max_steps)``.
        max_steps: length of the schedules.
        chunk: rays rendered at once at inference (on a CPU at most :data:`CPU_CHUNK`: a GPU recipe's whole-frame
            chunk would leave a CPU's caches far behind, 3-4x slower).
        media_dir: where validation images are written (None: not written).
        config: the resolved run config, stored in checkpoints to rebuild the run.
        torso: the torso field, for the torso stage (None otherwise).
        torso_deform_weight, torso_entropy_weight: weights of the torso's deformation
            (mean squared offset) and alpha-entropy regularisers.
        num_train_frames: training frames (latent codes, torso codes).
        loss: loss kinds and weights; stage: the stage (patch sizes and weights).
        ema_decay: decay of the EMA weights (0: render with the trained weights).
        occupancy: the occupancy grid settings.
        lpips: the LPIPS module when ``loss.patch`` is ``lpips``.
    """

    def __init__(self, net: HeadNeRF, optimizer: partial, lr_grid: float = 1e-2, lr_net: float = 1e-3,
                 lr_decay: float = 0.1, max_steps: int = 1000, chunk: int = 2048, media_dir: str | None = None,
                 config: dict | None = None, torso: TorsoField | None = None, torso_deform_weight: float = 1e-5,
                 torso_entropy_weight: float = 1e-4, num_train_frames: int | None = None,
                 loss: LossConfig | None = None, stage: StageConfig | None = None, ema_decay: float = 0.0,
                 occupancy: OccupancyConfig | None = None, lpips: torch.nn.Module | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer", "media_dir", "torso", "loss", "stage", "occupancy",
                                          "lpips"])
        self.net = net
        self.torso = torso
        self.loss_cfg = loss or LossConfig()
        self.stage = stage or StageConfig()
        self.occupancy_cfg = occupancy or OccupancyConfig(enabled=False)
        if torso is not None:
            self.net.requires_grad_(False)
        self.ema = None
        if ema_decay > 0 and torso is None:
            self.ema = AveragedModel(net)  # the copy and its update count; _update_ema averages
            self.ema.requires_grad_(False)
        self._ema_started: bool | None = None
        self.occupancy = None
        if self.occupancy_cfg.enabled:
            c = self.occupancy_cfg
            self.occupancy = OccupancyGrid(c.resolution, net.bound, c.alpha_threshold, 2 * net.bound / net.num_samples,
                                           cells_per_update=c.cells_per_update)
        self.lpips = lpips
        self.optimizer_factory = optimizer
        self.media_dir = Path(media_dir) if media_dir else None
        self._train_window: dict[str, torch.Tensor] = {}  # sums since the last training log (see _log_training)
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0)

    def set_upper_face_plane(self, plane: torch.Tensor) -> None:
        """Give the head (and its EMA copy) the training data's upper-face plane (``expression_region=upper_face``)."""
        for net in (self.net, self.ema.module if self.ema is not None else None):
            if net is not None:
                net.set_upper_face_plane(plane)

    @property
    def inference_net(self) -> HeadNeRF:
        """The weights that render: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.net

    @property
    def progress(self) -> float:
        return min(self.global_step / max(self.hparams.max_steps, 1), 1.0)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        frame = int(batch["index"])
        if self.torso is not None:
            return self._torso_step(batch, frame)
        cfg = self.loss_cfg
        teacher = None  # the true mouth blendshapes stand in for the audio's reading of them on some steps
        if self.net.mouth_condition and cfg.mouth_teacher > 0 and float(torch.rand(())) < cfg.mouth_teacher:
            teacher = batch["mouth"]
        out = self.net.render(batch["origins"], batch["dirs"], batch["background"], batch["audio"], batch["eye"],
                              frame=frame, perturb=True, occupancy=self.occupancy, mouth=teacher)
        rgb, target = out["rgb"], batch["rgb"]
        error = losses.photometric_error(rgb, target, cfg.photometric)
        if self.progress >= cfg.uncertainty_start:
            photometric = losses.uncertainty_weighted(error, out["uncertainty"], cfg.uncertainty_beta_min)
        else:
            photometric = error.mean()
        terms = {"photometric": photometric,
                 "entropy": cfg.entropy_weight * losses.opacity_entropy(out["opacity"])}
        if "lower_face" in batch and cfg.attention_weight > 0:
            terms["attention"] = cfg.attention_weight * self.progress * losses.masked_attention(
                out["audio_att"], out["eye_att"], batch["lower_face"])
        if self.net.mouth_head is not None:
            if "mouth" not in batch:
                raise UserError("model.loss.audio_mouth_weight > 0 needs the dataset's bs.npy (mouth blendshapes)")
            terms["audio_mouth"] = cfg.audio_mouth_weight * torch.nn.functional.mse_loss(
                self.net.predict_mouth(batch["audio"]), batch["mouth"])
        if self.stage.patch_size:
            p = self.stage.patch_size
            mouth = bool(batch["patch_region"])
            weight = self.stage.lips_patch_weight if mouth else self.stage.patch_weight
            if weight > 0:
                patch = losses.patch_loss(rgb[-p * p:].view(p, p, 3), target[-p * p:].view(p, p, 3), cfg.patch,
                                          self.lpips)
                terms["lips_patch" if mouth else "patch"] = weight * patch
        loss = sum(terms.values())
        self._log_training(loss, rgb, target, {**{f"train/loss_{k}": v for k, v in terms.items()},
                                               "train/samples_per_ray": out["samples"] / len(rgb)})
        return loss

    def _torso_step(self, batch: dict[str, torch.Tensor], frame: int) -> torch.Tensor:
        torso = self.torso(batch["xy"], batch["c2w"], self.torso.code(frame))
        alpha = torso["alpha"][:, None]
        background = torso["rgb"] * alpha + batch["static_background"] * (1 - alpha)
        with torch.no_grad():  # the head is frozen: render it once over black
            head = self.net.render(batch["origins"], batch["dirs"], torch.zeros_like(background), batch["audio"],
                                   batch["eye"], frame=frame, occupancy=self.occupancy)
        rgb = head["rgb"] + (1 - head["opacity"])[:, None] * background
        error = losses.photometric_error(rgb, batch["rgb"], self.loss_cfg.photometric).mean()
        loss = (error + self.hparams.torso_deform_weight * torso["offset"].pow(2).sum(-1).mean()
                + self.hparams.torso_entropy_weight * losses.opacity_entropy(torso["alpha"]))
        self._log_training(loss, rgb, batch["rgb"])
        return loss

    def _log_training(self, loss: torch.Tensor, rgb: torch.Tensor, target: torch.Tensor,
                      extra: dict[str, torch.Tensor] | None = None) -> None:
        """Sum the step's loss, squared error and ``extra`` values; every ``trainer.log_every_n_steps`` steps
        (and at the last) log their means over those steps: ``train/loss``, ``train/psnr`` (of the summed
        squared error) and the extras. Logging every step costs more than a step's hash-grid lookups."""
        window = self._train_window
        values = {"train/loss": loss.detach(), "sse": (rgb.detach().clamp(0, 1) - target).pow(2).sum(),
                  "count": torch.tensor(float(target.numel())), **{k: v.detach().float() for k, v in (extra or {}).items()}}
        for key, value in values.items():
            window[key] = window[key] + value if key in window else value
        window["steps"] = window.get("steps", 0) + 1
        trainer = self._trainer
        if trainer is not None:
            every, last = trainer.log_every_n_steps, trainer.max_steps
            if (self.global_step + 1) % every and self.global_step + 1 != last:
                return
        steps, sse, count = window.pop("steps"), window.pop("sse"), window.pop("count")
        psnr = -10 * torch.log10((sse / count).clamp(min=1e-10))
        self.log_dict({"train/loss": window.pop("train/loss") / steps, "train/psnr": psnr}, prog_bar=True)
        if window:
            self.log_dict({k: v / steps for k, v in window.items()})
        window.clear()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.torso is not None:
            return
        if self.ema is not None:
            self._update_ema()
        c = self.occupancy_cfg
        step = self.global_step
        if self.occupancy is not None and step >= c.start_step and (step - c.start_step) % c.interval == 0:
            self.update_occupancy(self.trainer.datamodule.train_frames)

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema = decay * ema + (1 - decay) * weights, all parameters in one fused update (the EMA copy starts as the
        first trained weights, as ``AveragedModel.update_parameters`` does)."""
        ema, trained = list(self.ema.module.parameters()), list(self.net.parameters())
        if self._ema_started is None:  # read once per run (a resumed run's EMA has started)
            self._ema_started = int(self.ema.n_averaged) > 0
        if self._ema_started:
            torch._foreach_lerp_(ema, trained, 1.0 - self.hparams.ema_decay)
        else:
            torch._foreach_copy_(ema, trained)
            self._ema_started = True
        self.ema.n_averaged += 1

    @torch.no_grad()
    def update_occupancy(self, frames: SubjectFrames) -> None:
        """Re-measure the occupancy grid with the conditions of a few random training frames."""
        net = self.net
        picks = torch.randint(0, len(frames), (max(self.occupancy_cfg.frames_per_update, 1),)).tolist()
        conds = [net.condition(frames.audio_context(k, net.smooth_frames).to(self.device),
                               frames.eye[k].to(self.device), k) for k in picks]
        self.occupancy.update(lambda p: net.density(p, conds))
        self.log("train/occupied_fraction", self.occupancy.occupied_fraction)

    def configure_optimizers(self):
        hp = self.hparams
        if self.torso is None:
            grid = self.net.grid_parameters()
            trained = list(self.net.parameters())
        else:
            grid = list(self.torso.grid.parameters())
            trained = list(self.torso.parameters())
        grid_ids = {id(p) for p in grid}
        groups = [{"params": grid, "lr": hp.lr_grid},
                  {"params": [p for p in trained if id(p) not in grid_ids], "lr": hp.lr_net}]
        optimizer = self.optimizer_factory(groups)
        decay = lambda step: hp.lr_decay ** min(step / max(hp.max_steps, 1), 1.0)  # noqa: E731
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ rendering
    @torch.no_grad()
    def render_view(self, frames: SubjectFrames, c2w: torch.Tensor, audio: torch.Tensor, eye: torch.Tensor,
                    background: torch.Tensor, frame: int | None = None,
                    march_samples: int = MARCH_SAMPLES) -> torch.Tensor:
        """Render one whole image.

        Args:
            frames: gives the image size and intrinsics.
            c2w: (4, 4) camera-to-world; audio: (smooth_frames, window, dim) the audio
                features around the frame (see :func:`temporal_context`); eye: (eye_dim,);
            background: (H, W, 3) what the head is composited over;
            frame: a training frame index (its latent code), or None (the mean code);
            march_samples: samples per ray per step of the front-to-back march (0: all at once; see
                :func:`~synctalk.models.rendering.render_rays_rgb`).
        Returns:
            (H, W, 3) image in [0, 1].
        """
        device = self.device
        net = self.inference_net
        pixels, c2w = frames.all_pixels().to(device), c2w.to(device)  # rays are made where they are rendered
        bg, audio, eye = background.reshape(-1, 3).to(device), audio.to(device), eye.to(device)
        cond = net.condition(audio, eye, frame)
        out = []
        chunk = self.hparams.chunk if device.type != "cpu" else min(self.hparams.chunk, CPU_CHUNK)
        for start in range(0, len(pixels), chunk):
            px = pixels[start:start + chunk]
            o, d = pixel_rays(c2w, px, frames.focal, frames.cx, frames.cy, frames.scale)
            out.append(net.render_rgb(o, d, bg[start:start + len(px)], cond, occupancy=self.occupancy,
                                      march_samples=march_samples))
        return torch.cat(out).view(frames.height, frames.width, 3).clamp(0, 1).cpu()

    @torch.no_grad()
    def background(self, frames: SubjectFrames, k: int) -> torch.Tensor:
        """What the head of frame k is composited over, (H, W, 3).

        The dataset's torso image of frame k over the static background, or, with a torso
        field, the torso rendered for frame k's pose (and code, on the training split).
        """
        if self.torso is None:
            return frames.background(k)
        code = self.torso.code(k if frames.split == "train" else None)
        pixels = frames.all_pixels()
        out = self.torso(frames.normalised(pixels).to(self.device), frames.c2w[k].to(self.device), code)
        alpha = out["alpha"].cpu()[:, None]
        image = out["rgb"].cpu() * alpha + frames.static_background.reshape(-1, 3) * (1 - alpha)
        return image.view(frames.height, frames.width, 3)

    def render_frame(self, frames: SubjectFrames, k: int) -> torch.Tensor:
        """Render frame k of a split with its own pose, audio and eye values, (H, W, 3)."""
        audio = frames.audio_context(k, self.inference_net.smooth_frames)
        return self.render_view(frames, frames.c2w[k], audio, frames.eye[k], self.background(frames, k),
                                frame=k if frames.split == "train" else None)

    def render_audio(self, frames: SubjectFrames, features: torch.Tensor, i: int, pose_frame: int,
                     c2w: torch.Tensor) -> torch.Tensor:
        """Render output frame i of new audio ``features`` (N, window, dim) from camera ``c2w`` (4, 4),
        with training frame ``pose_frame``'s eye values and background."""
        audio = temporal_context(features, i, self.inference_net.smooth_frames)
        return self.render_view(frames, c2w, audio, frames.eye[pose_frame], self.background(frames, pose_frame))

    # ------------------------------------------------------------------ validation
    def validation_step(self, k: int, batch_idx: int) -> None:
        frames = self.trainer.datamodule.val
        pred = self.render_frame(frames, int(k))
        gt = frames.gt(int(k))
        self.val_psnr(pred.permute(2, 0, 1)[None].to(self.device), gt.permute(2, 0, 1)[None].to(self.device))
        self.log("val/psnr", self.val_psnr, prog_bar=True)
        if batch_idx == 0 and self.trainer.is_global_zero:
            self._save_image(torch.cat([pred, gt], 1), f"val_step{self.global_step:06d}.png")

    def _save_image(self, image: torch.Tensor, name: str) -> None:
        """Write a validation image to the run's media folder and to an image-capable logger."""
        rgb8 = (image.numpy() * 255 + 0.5).astype(np.uint8)
        if self.media_dir is not None:
            self.media_dir.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(self.media_dir / name), rgb8[..., ::-1])
        for logger in self.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="val/render_vs_gt", images=[rgb8], step=self.global_step)
