"""Motion metrics from the preprocessing's landmark detector (MediaPipe FaceMesh), run alike on the
rendered and the ground-truth frames.

* ``lmd``: landmark distance of the mouth: the 20 mouth points of the 68-point layout, each frame's
  set centred on its mean, mean Euclidean distance between render and GT, in pixels at 512 px width.
* ``aue_upper`` / ``aue_lower``: the blendshape-based stand-in for the action-unit error (OpenFace AUs
  need OpenFace): the mean absolute difference, x100, of the scale-free face measures of
  :func:`synctalk.face.expressions.face_action_measures`: upper face = eye openness and brow heights,
  lower face = mouth opening and width (lengths over the outer-eye-corner distance).
"""
from __future__ import annotations

import numpy as np

from synctalk.face.expressions import LOWER_FACE, UPPER_FACE, face_action_measures
from synctalk.face.facemesh import to_68
from synctalk.face.landmark_detectors import FaceMesh

MOUTH_68 = slice(48, 68)
#: what the aue_* numbers are, written next to them in metrics.json
AUE_KIND = ("blendshape-based equivalent of the AU error: FaceMesh eye, brow (upper) and mouth (lower) measures, "
            "mean absolute difference x100; not OpenFace action units")


def mouth_landmark_distance(pred_mesh: np.ndarray, gt_mesh: np.ndarray, width: int) -> np.ndarray:
    """Per-frame LMD of (N, 478, 3) meshes (NaN where either has no face), pixels at 512 px width."""
    pred, gt = to_68(pred_mesh)[:, MOUTH_68], to_68(gt_mesh)[:, MOUTH_68]
    pred = pred - pred.mean(1, keepdims=True)
    gt = gt - gt.mean(1, keepdims=True)
    return np.linalg.norm(pred - gt, axis=-1).mean(1) * 512 / width


def action_errors(pred_mesh: np.ndarray, gt_mesh: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame upper- and lower-face measure errors (x100), NaN where either mesh has no face."""
    pred, gt = face_action_measures(pred_mesh), face_action_measures(gt_mesh)
    return {f"aue_{half}": 100 * np.mean([np.abs(pred[k] - gt[k]) for k in names], axis=0)
            for half, names in (("upper", UPPER_FACE), ("lower", LOWER_FACE))}


def motion_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """LMD and the blendshape AU errors of a rendered clip against its GT clip.

    Args:
        pred, gt: (N, H, W, 3) RGB uint8 frames.
    Returns:
        ``{"lmd", "aue_upper", "aue_lower", "face_found"}``; ``face_found`` is the share of frames where
        both clips have a detected face (the only frames scored). Raises ValueError when there is none.
    """
    pred_mesh = FaceMesh().detect(iter(pred), len(pred), progress=False)  # the metric's detector is fixed
    gt_mesh = FaceMesh().detect(iter(gt), len(gt), progress=False)
    found = ~np.isnan(pred_mesh[:, 0, 0]) & ~np.isnan(gt_mesh[:, 0, 0])
    if not found.any():
        raise ValueError(f"no frame where FaceMesh finds a face in both clips (render: {int((~np.isnan(pred_mesh[:, 0, 0])).sum())}"
                         f", GT: {int((~np.isnan(gt_mesh[:, 0, 0])).sum())} of {len(pred)} frames)")
    out = {"face_found": float(found.mean())}
    out["lmd"] = float(mouth_landmark_distance(pred_mesh[found], gt_mesh[found], pred.shape[2]).mean())
    out.update({k: float(v.mean()) for k, v in action_errors(pred_mesh[found], gt_mesh[found]).items()})
    return out

