"""Pose conventions of the stabilizer: head -> OpenCV camera poses, the dataset's camera-to-world matrices,
head angles about the frontal pose, and the jitter of a pose sequence."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from synctalk.data.layout import DatasetLayout, Transforms
from synctalk.geometry import head_pose_to_c2w


CV_TO_GL = np.diag([1.0, -1.0, -1.0])


def c2w_from_cv_poses(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Head -> OpenCV camera poses (N, 3, 3), (N, 3) as the dataset's camera-to-world matrices (N, 4, 4)."""
    return head_pose_to_c2w(CV_TO_GL @ rotation, translation @ CV_TO_GL.T)


def rotation_angles_deg(rotation: np.ndarray) -> np.ndarray:
    """(N, 3, 3) head -> OpenCV camera rotations -> (N, 3) head angles (pitch, yaw, roll) in degrees about the
    frontal pose (all zero for a head looking into the camera, upright), ``R = Rz Ry Rx``; continuous over
    time (unwrapped), so a pose near +-180 degrees in some convention never jumps."""
    rotation = CV_TO_GL @ rotation  # a frontal head -> the identity
    pitch = np.arctan2(rotation[:, 2, 1], rotation[:, 2, 2])
    yaw = np.arcsin(np.clip(-rotation[:, 2, 0], -1, 1))
    roll = np.arctan2(rotation[:, 1, 0], rotation[:, 0, 0])
    return np.degrees(np.unwrap(np.stack([pitch, yaw, roll], -1), axis=0))


def cv_poses_from_c2w(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's camera-to-world matrices (N, 4, 4) -> head -> OpenCV camera rotations (N, 3, 3) and
    translations (N, 3) metres (the inverse of :func:`c2w_from_cv_poses`)."""
    w2c = np.linalg.inv(c2w)
    return CV_TO_GL @ w2c[:, :3, :3], w2c[:, :3, 3] @ CV_TO_GL.T


def jitter(rotation: np.ndarray, translation: np.ndarray) -> dict:
    """Mean absolute second difference over time of the head angles (deg) and translation (mm)."""
    if len(rotation) < 3:
        return {"rotation_deg": 0.0, "translation_mm": 0.0}
    ang = np.radians(rotation_angles_deg(rotation))
    second = lambda x: np.abs(x[2:] - 2 * x[1:-1] + x[:-2]).mean()  # noqa: E731
    return {"rotation_deg": round(float(np.degrees(second(ang))), 5),
            "translation_mm": round(float(second(translation * 1000.0)), 5)}


def as_written(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Head -> OpenCV camera poses of (N, 4, 4) camera-to-world matrices as the transforms json holds them
    (float32)."""
    return cv_poses_from_c2w(c2w.astype(np.float32).astype(np.float64))


def transforms_c2w(root: Path) -> np.ndarray:
    """(N, 4, 4) camera-to-world poses of a dataset folder's ``transforms_train.json`` and ``transforms_val.json``,
    in frame order."""
    
    layout = DatasetLayout(root)
    splits = [Transforms.read(layout.transforms(split)) for split in ("train", "val")]
    ids = np.concatenate([t.img_ids for t in splits])
    return np.concatenate([t.c2w for t in splits])[np.argsort(ids, kind="stable")].astype(np.float64)


def transforms_jitter(root: Path) -> dict:
    """The jitter of the poses a dataset folder's transforms json files hold (what training reads)."""
    return jitter(*cv_poses_from_c2w(transforms_c2w(root)))


def rotation_difference_deg(rot_a: np.ndarray, rot_b: np.ndarray) -> np.ndarray:
    """(N,) angle in degrees between two sequences of (N, 3, 3) rotations, frame by frame."""
    rel = np.einsum("nij,nkj->nik", rot_a, rot_b)
    return np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))
