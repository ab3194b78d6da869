"""Bundle adjustment of the head poses on the tracked head points, as a LightningModule.

Two stages with the focal length fixed, as in SyncTalk:

1. ``points``: only the 3D keypoints move so that their projections match the tracks;
2. ``joint``: keypoints, rotations and translations together, the learning rate decaying
   exponentially to ``lr_decay`` times its start;
3. ``refine`` (when ``outlier_factor`` > 0): track points whose median reprojection error is over
   ``outlier_factor`` times the median of all points (points on occluding contours, drifting flow),
   and single observations over ``outlier_factor`` times the median observation error, are dropped
   and the joint stage runs again on the inliers for half its steps, on the first half of the joint
   stage's learning-rate schedule (so its rate falls to ``sqrt(lr_decay)`` of the start).

The reference frame's pose stays fixed, which removes the gauge freedom (a global rigid motion
and scale of the whole reconstruction). Loss: squared reprojection error of the visible track
points (or a Huber loss, ``robust=huber``), plus an optional temporal smoothness prior on the
poses (squared second differences of rotation in degrees and translation in millimetres).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from synctalk import threads
from synctalk.errors import UserError
from synctalk.stabilizer.head_tracker import axis_angle_to_matrix, project
from synctalk.stabilizer.options import BundleAdjustmentOptions

log = logging.getLogger(__name__)
MIN_POINTS_PER_FRAME = 6  # fewer is reported as too few; outlier rejection never leaves a frame with fewer
LOG_EVERY = 25  # steps between the RMS shown on the progress bar (Lightning's ``self.log`` costs about 2 ms a call,
# as much as a step's own work; every step's RMS is kept in ``history``)


class TrackFrames(Dataset):
    """One item per frame: its index, track points (P, 2) and visibility (P,)."""

    def __init__(self, points: np.ndarray, visible: np.ndarray):
        self.points = torch.as_tensor(points, dtype=torch.float32)
        self.visible = torch.as_tensor(visible, dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, i: int) -> dict:
        return {"frame": torch.tensor(i), "points": self.points[i], "visible": self.visible[i]}


class TrackDataModule(pl.LightningDataModule):
    """Random batches of frames (all frames per batch by default), ``steps`` batches per stage."""

    def __init__(self, points: np.ndarray, visible: np.ndarray, steps: int, batch_frames: int = 0):
        super().__init__()
        self.dataset = TrackFrames(points, visible)
        self.steps = steps
        self.batch = batch_frames if 0 < batch_frames < len(self.dataset) else len(self.dataset)

    def train_dataloader(self) -> DataLoader:
        if self.batch == len(self.dataset):  # full batch: every step sees every frame, in order
            return DataLoader(_Repeat(self.dataset, self.steps), batch_size=None)
        sampler = RandomSampler(self.dataset, replacement=True, num_samples=self.steps * self.batch)
        return DataLoader(self.dataset, batch_size=self.batch, sampler=sampler)


class _Repeat(Dataset):
    """``steps`` copies of the whole dataset as one batch each."""

    def __init__(self, dataset: TrackFrames, steps: int):
        self.dataset, self.steps = dataset, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, _: int) -> dict:
        d = self.dataset
        return {"frame": torch.arange(len(d)), "points": d.points, "visible": d.visible}


def rotation_to_axis_angle(rotation: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotation matrices -> (N, 3) axis-angle in radians."""
    import cv2

    return np.stack([cv2.Rodrigues(np.ascontiguousarray(r))[0][:, 0] for r in rotation])


class BundleAdjustment(pl.LightningModule):
    """Keypoints (P, 3, metres, head frame) and per-frame poses (OpenCV camera) fitted to the tracks.

    Args:
        points3d: (P, 3) initial keypoints; rotation (N, 3, 3), translation (N, 3): initial poses;
        focal, cx, cy: fixed intrinsics (pixels); reference: frame whose pose stays fixed.
        opts: ``preprocess.bundle_adjustment``: learning rates, robust loss, smoothness prior; the joint and
            refine stages' learning rates fall exponentially to ``lr_decay`` times their start over ``joint_steps``.
    """

    def __init__(self, points3d: np.ndarray, rotation: np.ndarray, translation: np.ndarray, focal: float, cx: float,
                 cy: float, reference: int, opts: BundleAdjustmentOptions):
        super().__init__()
        self.points3d = torch.nn.Parameter(torch.as_tensor(points3d, dtype=torch.float32))
        self.rot_deg = torch.nn.Parameter(torch.as_tensor(np.degrees(rotation_to_axis_angle(rotation)),
                                                          dtype=torch.float32))
        self.trans_mm = torch.nn.Parameter(torch.as_tensor(translation * 1000.0, dtype=torch.float32))
        self.register_buffer("fixed", torch.zeros(len(rotation), 1))
        self.fixed[reference] = 1.0
        self.focal, self.cx, self.cy = float(focal), float(cx), float(cy)
        self.opts = opts
        self.stage = "points"
        self.history: dict[str, list[float]] = {"points": [], "joint": [], "refine": []}

    def poses(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotations (N, 3, 3) and translations (N, 3) metres; the reference frame's stay fixed."""
        keep = self.fixed
        rot = keep * self.rot_deg.detach() + (1 - keep) * self.rot_deg
        trans = keep * self.trans_mm.detach() + (1 - keep) * self.trans_mm
        return axis_angle_to_matrix(torch.deg2rad(rot)), trans / 1000.0

    def residuals(self, frames: torch.Tensor, points2d: torch.Tensor) -> torch.Tensor:
        """(B, P) pixel distances between projected keypoints and the tracks of ``frames``."""
        rot, trans = self.poses()
        focal = torch.tensor(self.focal, device=self.device)
        proj = project(self.points3d[None], rot[frames], trans[frames], focal, self.cx, self.cy)
        return (proj - points2d).norm(dim=-1)

    def training_step(self, batch: dict, _: int) -> torch.Tensor:
        err = self.residuals(batch["frame"], batch["points"])
        vis = batch["visible"].float()
        if self.opts.robust == "huber":
            d = self.opts.huber_px
            per_point = torch.where(err < d, 0.5 * err ** 2, d * (err - 0.5 * d))
        else:
            per_point = err ** 2
        loss = (per_point * vis).sum() / vis.sum().clamp(min=1)
        if self.opts.smoothness > 0 and self.stage != "points" and len(self.rot_deg) >= 3:
            second = lambda x: x[2:] - 2 * x[1:-1] + x[:-2]  # noqa: E731
            prior = (second(self.rot_deg) ** 2).mean() + (second(self.trans_mm) ** 2).mean()
            loss = loss + self.opts.smoothness * prior
        if not torch.isfinite(loss):
            raise UserError(f"bundle adjustment diverged (loss {loss.item()}) in stage '{self.stage}': lower "
                            f"preprocess.bundle_adjustment.{self.stage}_lr, or use tracker.pose_source=landmarks")
        rms = ((err ** 2 * vis).sum() / vis.sum().clamp(min=1)).sqrt()
        self.history[self.stage].append(float(rms.detach()))
        if self.global_step % LOG_EVERY == 0:
            self.log(f"ba/{self.stage}_rms_px", rms, prog_bar=True, on_step=True)
        return loss

    def configure_optimizers(self):
        if self.stage == "points":
            return torch.optim.Adam([self.points3d], lr=self.opts.points_lr)
        # points in metres, poses in degrees / millimetres: one step of joint_lr moves a point by
        # joint_lr metres and a pose by 1000 * joint_lr degrees / millimetres
        opt = torch.optim.Adam([{"params": [self.points3d], "lr": self.opts.joint_lr},
                                {"params": [self.rot_deg, self.trans_mm], "lr": self.opts.joint_lr * 1000.0}])
        steps, decay = max(self.opts.joint_steps, 1), self.opts.lr_decay
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: decay ** min(k / steps, 1.0))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    @torch.no_grad()
    def reprojection_error(self, points2d: np.ndarray, visible: np.ndarray) -> np.ndarray:
        """(N,) mean pixel error of the visible points per frame."""
        err = self.residuals(torch.arange(len(points2d)), torch.as_tensor(points2d, dtype=torch.float32)).cpu().numpy()
        vis = visible.astype(np.float64)
        return (err * vis).sum(1) / np.maximum(vis.sum(1), 1)


@dataclass
class AdjustedPoses:
    rotation: np.ndarray  # (N, 3, 3) head -> OpenCV camera
    translation: np.ndarray  # (N, 3) metres
    points3d: np.ndarray  # (P, 3) head frame, metres
    error_px: dict  # stage -> (N,) mean reprojection error per frame after that stage (over its inliers)
    history: dict  # stage -> RMS px per step
    inliers: np.ndarray  # (N, P) bool, the observations the last stage used


def find_outliers(residual: np.ndarray, visible: np.ndarray, factor: float) -> np.ndarray:
    """Observations to drop: all of a point whose median error is over ``factor`` times the median over points,
    and single observations over ``factor`` times the median observation error.

    Args:
        residual: (N, P) pixel errors; visible: (N, P) bool.
    Returns:
        (N, P) bool, True where a visible observation is an outlier.
    """
    err = np.where(visible, residual, np.nan)
    seen = visible.any(0)
    per_point = np.full(residual.shape[1], np.inf)
    per_point[seen] = np.nanmedian(err[:, seen], axis=0)
    bad_point = per_point > factor * np.median(per_point[seen])
    bad_obs = residual > factor * np.median(residual[visible])
    return visible & (bad_point[None] | bad_obs)


def run_bundle_adjustment(points2d: np.ndarray, visible: np.ndarray, points3d: np.ndarray, rotation: np.ndarray,
                          translation: np.ndarray, focal: float, cx: float, cy: float, reference: int,
                          opts: BundleAdjustmentOptions | None = None, progress: bool = True) -> AdjustedPoses:
    """The bundle-adjustment stages (see the module docstring) with a Lightning trainer each, as
    ``preprocess.bundle_adjustment`` (``opts``; default: the defaults) sets them; ``max_drift_deg`` is the
    caller's acceptance rule (:func:`synctalk.stabilizer.checks.judge_bundle_adjustment`)."""
    o = opts or BundleAdjustmentOptions()
    module = BundleAdjustment(points3d, rotation, translation, focal, cx, cy, reference, o)
    points_steps, joint_steps, outlier_factor = o.points_steps, o.joint_steps, o.outlier_factor
    errors = {"initial": module.reprojection_error(points2d, visible)}
    inliers = visible.copy()
    stages = [("points", points_steps), ("joint", joint_steps)]
    if outlier_factor > 0:
        stages.append(("refine", joint_steps // 2))
    for stage, steps in stages:
        if steps <= 0:
            continue
        if stage == "refine":
            with torch.no_grad():
                residual = module.residuals(torch.arange(len(points2d)),
                                            torch.as_tensor(points2d, dtype=torch.float32)).numpy()
            inliers = visible & ~find_outliers(residual, visible, outlier_factor)
            few = inliers.sum(1) < MIN_POINTS_PER_FRAME  # such frames keep all their observations
            few[reference] = True
            inliers[few] = visible[few]
        module.stage = stage
        trainer = pl.Trainer(max_steps=steps, max_epochs=-1, accelerator="cpu", devices=1, logger=False,
                             enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress,
                             num_sanity_val_steps=0, callbacks=[threads.TickEveryStep()])
        trainer.fit(module, datamodule=TrackDataModule(points2d, inliers, steps, o.batch_frames))
        errors[stage] = module.reprojection_error(points2d, inliers)
        if not np.isfinite(errors[stage]).all() or errors[stage].mean() > 2 * errors["initial"].mean() + 1.0:
            raise UserError(f"bundle adjustment diverged in stage '{stage}' (reprojection error "
                            f"{errors['initial'].mean():.2f} -> {errors[stage].mean():.2f} px): lower "
                            f"preprocess.bundle_adjustment.{'points' if stage == 'points' else 'joint'}_lr, "
                            f"or use tracker.pose_source=landmarks")
        log.info("bundle adjustment %s: %.3f px mean reprojection error", stage, errors[stage].mean())
    with torch.no_grad():
        rot, trans = module.poses()
    return AdjustedPoses(rot.numpy().astype(np.float64), trans.numpy().astype(np.float64),
                         module.points3d.detach().numpy().astype(np.float64), errors, module.history, inliers)
