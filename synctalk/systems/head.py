"""The LightningModule that trains the talking head: stages ``head``, ``lips`` and ``torso``."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from torchmetrics.image import PeakSignalNoiseRatio

from synctalk.data.datamodule import SubjectFrames
from synctalk.geometry import pixel_rays
from synctalk.models.head_nerf import HeadNeRF
from synctalk.models.torso import TorsoField


class HeadNeRFSystem(pl.LightningModule):
    """Trains a :class:`HeadNeRF` with a photometric loss on rays of one frame per step.

    With a ``torso`` field (stage ``torso``) the head is frozen and only the torso learns:
    each pixel is the head render composited over the torso, itself over the static
    background. Without one, the head is composited over the dataset's torso images.

    Args:
        net: the radiance field (built from ``model.net``).
        torso: the torso field, for the torso stage (None otherwise).
        torso_deform_weight, torso_entropy_weight: weights of the torso's deformation
            (mean squared offset) and alpha-entropy regularisers.
        optimizer: a partial optimizer, finished with two parameter groups (grid, MLPs).
        lr_grid, lr_net: learning rates of the two groups.
        lr_decay: learning rates are multiplied by ``lr_decay ** (step / max_steps)``.
        max_steps: length of the schedule.
        chunk: rays rendered at once at inference.
        media_dir: where validation images are written (None: not written).
        config: the resolved run config, stored in checkpoints to rebuild the run.
    """

    def __init__(self, net: HeadNeRF, optimizer: partial, lr_grid: float = 1e-2, lr_net: float = 1e-3,
                 lr_decay: float = 0.1, max_steps: int = 1000, chunk: int = 8192, media_dir: str | None = None,
                 config: dict | None = None, torso: TorsoField | None = None, torso_deform_weight: float = 1e-5,
                 torso_entropy_weight: float = 1e-4, num_train_frames: int | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer", "media_dir", "torso"])
        self.net = net
        self.torso = torso
        if torso is not None:
            self.net.requires_grad_(False)
        self.optimizer_factory = optimizer
        self.media_dir = Path(media_dir) if media_dir else None
        self.train_psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.torso is None:
            out = self.net.render(batch["origins"], batch["dirs"], batch["background"], batch["audio"], batch["eye"],
                                  perturb=True)
            rgb = out["rgb"]
            loss = torch.nn.functional.mse_loss(rgb, batch["rgb"])
        else:
            torso = self.torso(batch["xy"], batch["c2w"], self.torso.code(int(batch["index"])))
            alpha = torso["alpha"][:, None]
            background = torso["rgb"] * alpha + batch["static_background"] * (1 - alpha)
            with torch.no_grad():  # the head is frozen: render it once over black
                head = self.net.render(batch["origins"], batch["dirs"], torch.zeros_like(background), batch["audio"],
                                       batch["eye"], perturb=True)
            rgb = head["rgb"] + (1 - head["opacity"])[:, None] * background
            a = torso["alpha"].clamp(1e-5, 1 - 1e-5)
            entropy = -(a * a.log() + (1 - a) * (1 - a).log()).mean()
            loss = (torch.nn.functional.mse_loss(rgb, batch["rgb"])
                    + self.hparams.torso_deform_weight * torso["offset"].pow(2).sum(-1).mean()
                    + self.hparams.torso_entropy_weight * entropy)
        self.train_psnr(rgb.detach().clamp(0, 1), batch["rgb"])
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/psnr", self.train_psnr, prog_bar=True)
        return loss

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
                    background: torch.Tensor) -> torch.Tensor:
        """Render one whole image.

        Args:
            frames: gives the image size and intrinsics.
            c2w: (4, 4) camera-to-world; audio: (window, dim); eye: (eye_dim,);
            background: (H, W, 3) what the head is composited over.
        Returns:
            (H, W, 3) image in [0, 1].
        """
        device = self.device
        pixels = frames.all_pixels()
        bg = background.reshape(-1, 3)
        out = []
        for start in range(0, len(pixels), self.hparams.chunk):
            px = pixels[start:start + self.hparams.chunk]
            o, d = pixel_rays(c2w, px, frames.focal, frames.cx, frames.cy, frames.scale)
            res = self.net.render(o.to(device), d.to(device), bg[start:start + len(px)].to(device), audio.to(device),
                                  eye.to(device))
            out.append(res["rgb"].cpu())
        return torch.cat(out).view(frames.height, frames.width, 3).clamp(0, 1)

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
        return self.render_view(frames, frames.c2w[k], frames.audio[k], frames.eye[k], self.background(frames, k))

    # ------------------------------------------------------------------ validation
    def validation_step(self, k: int, batch_idx: int) -> None:
        frames = self.trainer.datamodule.val
        pred = self.render_frame(frames, int(k))
        gt = frames.gt(int(k))
        self.val_psnr(pred.permute(2, 0, 1)[None].to(self.device), gt.permute(2, 0, 1)[None].to(self.device))
        self.log("val/psnr", self.val_psnr, prog_bar=True)
        if batch_idx == 0:
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
