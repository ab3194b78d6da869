"""Head Motion Tracker: fit a face model to 2D landmarks for many focal lengths at once (the focal search,
:mod:`synctalk.stabilizer.focal_search`, chooses among them).

Every focal candidate gets its own poses, identity and expression; all candidates are one
batched optimisation (leading dimension F). Poses are in the OpenCV camera frame (x right,
y down, z forward, metres); a head point ``X`` is seen at ``R @ X + T``.

Parameters are kept in units where one Adam step of ``lr`` is a sensible move: rotations in
degrees (axis-angle), translations and identity in millimetres, expression in standard
deviations.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from tqdm import tqdm

from synctalk import threads
from synctalk.errors import UserError
from synctalk.face.face_model import FaceModel


# head axes (x right, y up, z out of the face) -> OpenCV object axes used by solvePnP
_HEAD_TO_CV = np.diag([1.0, -1.0, -1.0])


def axis_angle_to_matrix(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle in radians -> (..., 3, 3) rotation matrices (Rodrigues)."""
    theta = v.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    k = v / theta
    kx, ky, kz = k.unbind(-1)
    zero = torch.zeros_like(kx)
    cross = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], -1).reshape(*v.shape[:-1], 3, 3)
    s, c = torch.sin(theta)[..., None], torch.cos(theta)[..., None]
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand_as(cross)
    return eye + s * cross + (1 - c) * (cross @ cross)


def project(points: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor, focal: torch.Tensor,
            cx: float, cy: float) -> torch.Tensor:
    """Pinhole projection.

    Args:
        points: (..., P, 3) head-frame points, metres; rotation (..., 3, 3); translation (..., 3);
        focal: broadcastable to (...), pixels.
    Returns:
        (..., P, 2) pixels.
    """
    cam = points @ rotation.transpose(-1, -2) + translation[..., None, :]
    z = cam[..., 2].clamp(min=1e-3)
    f = focal[..., None]
    return torch.stack([f * cam[..., 0] / z + cx, f * cam[..., 1] / z + cy], -1)


def pnp_init(model: FaceModel, lms: np.ndarray, focal: float, cx: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame PnP of the mean face: axis-angle (N, 3) radians and translation (N, 3) metres."""
    obj = model.mean.cpu().numpy().astype(np.float64) @ _HEAD_TO_CV  # head axes -> PnP object axes
    k = np.array([[focal, 0, cx], [0, focal, cy], [0, 0, 1]], np.float64)
    rvecs, tvecs = [], []
    for pts in np.ascontiguousarray(lms[..., :2], dtype=np.float64):
        ok, rvec, tvec = cv2.solvePnP(obj, pts, k, None, flags=cv2.SOLVEPNP_EPNP)
        ok, rvec, tvec = cv2.solvePnP(obj, pts, k, None, rvec, tvec, useExtrinsicGuess=True,
                                      flags=cv2.SOLVEPNP_ITERATIVE)
        if not ok or tvec[2, 0] <= 0:
            raise UserError("the landmarks cannot be fitted by the face model (PnP failed): check the landmarks "
                            "overlays of the dataset")
        rvecs.append(rvec[:, 0])
        tvecs.append(tvec[:, 0])
    return np.array(rvecs), np.array(tvecs)


@dataclass
class LandmarkFit:
    """Result of fitting the face model at each of F focal lengths to N frames."""

    focals: np.ndarray  # (F,) pixels
    rotation: np.ndarray  # (F, N, 3, 3) head -> OpenCV camera
    translation: np.ndarray  # (F, N, 3) metres
    id_coeff: np.ndarray  # (F, I)
    exp_coeff: np.ndarray  # (F, N, E)
    error_px: np.ndarray  # (F, N) mean landmark reprojection error per frame

    @property
    def rms_px(self) -> np.ndarray:
        """(F,) root-mean-square landmark error over frames (the focal-search criterion)."""
        return np.sqrt((self.error_px ** 2).mean(1))


def _mean_square(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Mean of ``x**2`` over ``dims``; zero for a model without such coefficients."""
    return (x ** 2).mean(dim=dims) if x.numel() else x.new_zeros(x.shape[0])


def fit_landmarks(model: FaceModel, lms: np.ndarray, focals, cx: float, cy: float, steps: int = 2000,
                  lr: float = 0.3, id_reg: float = 0.5, exp_reg: float = 0.5, progress: bool = False,
                  desc: str = "landmark fit", lr_decay: float = 0.01) -> LandmarkFit:
    """Fit poses, identity and expression to landmarks for every focal length in one optimisation.

    Identity and expression are frozen for the first half of the steps (poses settle first); over
    the second half all learning rates decay exponentially to ``lr_decay`` times their start, so the
    fit converges instead of hovering an Adam step away from the optimum.
    Loss per candidate: mean squared landmark error (px^2) + ``id_reg`` * mean(id^2) +
    ``exp_reg`` * mean(exp^2).

    Args:
        lms: (N, P, 2) landmarks in pixels, P = the model's points.
        focals: (F,) candidate focal lengths in pixels.
    """
    focals = np.asarray(focals, dtype=np.float64).reshape(-1)
    if len(focals) == 0:
        raise UserError("the focal range has no candidates: check tracker.focal.start/stop/step")
    if lms.shape[1] != model.mean.shape[0]:
        raise ValueError(f"{lms.shape[1]} landmarks for a face model of {model.mean.shape[0]} points")
    n = len(lms)
    init = [pnp_init(model, lms, f, cx, cy) for f in focals]
    rot_deg = torch.tensor(np.degrees(np.stack([r for r, _ in init])), dtype=torch.float32).requires_grad_()
    trans_mm = torch.tensor(np.stack([t for _, t in init]) * 1000.0, dtype=torch.float32).requires_grad_()
    id_c = torch.zeros(len(focals), model.num_id, requires_grad=True)
    exp_c = torch.zeros(len(focals), n, model.num_exp, requires_grad=True)
    target = torch.as_tensor(lms, dtype=torch.float32)
    f_t = torch.as_tensor(focals, dtype=torch.float32)[:, None]
    pose_opt = torch.optim.Adam([rot_deg, trans_mm], lr=lr)
    shape_opt = torch.optim.Adam([id_c, exp_c], lr=lr * 0.1)
    half = steps // 2
    head_to_cv = torch.as_tensor(_HEAD_TO_CV, dtype=torch.float32)

    def residual():
        pts = model(id_c, exp_c) @ head_to_cv  # head axes -> PnP object axes
        proj = project(pts, axis_angle_to_matrix(torch.deg2rad(rot_deg)), trans_mm / 1000.0, f_t, cx, cy)
        return (proj - target).norm(dim=-1)  # (F, N, P)

    for step in tqdm(range(steps), desc=desc, unit="step", disable=not progress):
        threads.tick()
        err = residual()
        loss = (err ** 2).mean(dim=(1, 2)).sum()
        loss = loss + id_reg * _mean_square(id_c, (1,)).sum() + exp_reg * _mean_square(exp_c, (1, 2)).sum()
        pose_opt.zero_grad()
        shape_opt.zero_grad()
        loss.backward()
        pose_opt.step()
        if step >= half:
            shape_opt.step()
            if model.id_bound is not None:
                with torch.no_grad():
                    id_c.clamp_(-model.id_bound, model.id_bound)
            decay = lr_decay ** ((step + 1 - half) / max(steps - half, 1))
            pose_opt.param_groups[0]["lr"], shape_opt.param_groups[0]["lr"] = lr * decay, lr * 0.1 * decay
    with torch.no_grad():
        err = residual()
        rot = axis_angle_to_matrix(torch.deg2rad(rot_deg)).numpy().astype(np.float64) @ _HEAD_TO_CV
    return LandmarkFit(focals, rot, trans_mm.detach().numpy().astype(np.float64) / 1000.0,
                       id_c.detach().numpy(), exp_c.detach().numpy(), err.mean(-1).numpy().astype(np.float64))


