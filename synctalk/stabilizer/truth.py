"""Scoring the stabilizer against a known truth (the synthetic subject's ``ground_truth.npz``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from synctalk.errors import UserError
from synctalk.stabilizer.pose_convention import rotation_difference_deg


def pose_errors(c2w: np.ndarray, truth_c2w: np.ndarray) -> dict:
    """Errors of (N, 4, 4) camera-to-world poses against the truth, after removing what a monocular tracker
    cannot know: the choice of the head frame (a fixed rotation and origin) and the global scale.

    - ``rotation_median_deg``: median angle between ``R_i G`` and the true ``R_i`` (head -> camera), with
      ``G`` the one head-frame rotation that best aligns the sequences;
    - ``translation_median_pct`` / ``translation_median_mm``: median distance between ``s (T_i + R_i o)`` and
      the true ``T_i``, with the head-frame origin shift ``o`` and scale ``s`` fitted by least squares; in %
      of the mean true camera distance and in millimetres;
    - ``scale``: that ``s`` (the true size of the head over the model's).
    """
    est, true = np.linalg.inv(c2w), np.linalg.inv(truth_c2w)  # head -> camera
    r, t, r_true, t_true = est[:, :3, :3], est[:, :3, 3], true[:, :3, :3], true[:, :3, 3]
    u, _, vt = np.linalg.svd(np.einsum("nji,njk->ik", r, r_true))  # sum of R_i^T R_true_i
    g = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
    angle = rotation_difference_deg(r @ g, r_true)
    a = np.concatenate([t[:, :, None], r], 2).reshape(-1, 4)  # unknowns: s and s * o
    x = np.linalg.lstsq(a, t_true.reshape(-1), rcond=None)[0]
    miss = np.linalg.norm((a @ x).reshape(-1, 3) - t_true, axis=1)
    distance = float(np.linalg.norm(t_true, axis=1).mean())
    return {"rotation_median_deg": round(float(np.median(angle)), 3),
            "translation_median_pct": round(float(np.median(miss)) / distance * 100, 3),
            "translation_median_mm": round(float(np.median(miss)) * 1000, 3), "scale": round(float(x[0]), 4)}


def truth_errors(result: dict, truth_file: Path) -> dict:
    """The stabilizer's focal and poses against a synthetic subject's ``ground_truth.npz``."""
    truth = np.load(truth_file)
    if len(truth["c2w"]) != len(result["c2w"]):
        raise UserError(f"{truth_file} has {len(truth['c2w'])} frames but the video gave {len(result['c2w'])}: "
                        f"preprocess.ground_truth must belong to this video (at its frame rate)")
    focal = float(truth["focal"])
    out = {"focal": focal, "focal_error_pct": round((result["focal"] - focal) / focal * 100, 3),
           "landmarks": pose_errors(result["c2w_landmarks"], truth["c2w"])}
    if result["report"].get("pose_source") == "bundle_adjustment":
        out["bundle_adjustment"] = pose_errors(result["c2w"], truth["c2w"])
    return out
