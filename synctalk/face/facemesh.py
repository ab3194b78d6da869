"""The 478-point MediaPipe face mesh (what every :mod:`~synctalk.face.landmark_detectors` detector gives) and
the 68-point layout used by the rest of the field (iBUG 300-W order, written as ``.lms``).

Frames without a detected face are filled by linear interpolation over time when the gap
is short; otherwise the stage stops and names the frames.
"""
from __future__ import annotations

import numpy as np

from synctalk.errors import UserError


#: FaceMesh index of each of the 68 points (subject's right side first, as in the 68-point layout).
MESH_TO_68 = np.array([
    127, 234, 93, 132, 58, 172, 136, 150, 152, 379, 365, 397, 288, 361, 323, 454, 356,  # 0-16 jaw
    70, 63, 105, 66, 107,  # 17-21 right brow, outer to inner
    336, 296, 334, 293, 300,  # 22-26 left brow, inner to outer
    168, 197, 5, 4,  # 27-30 nose bridge
    98, 97, 2, 326, 327,  # 31-35 nose bottom
    33, 160, 158, 133, 153, 144,  # 36-41 right eye
    362, 385, 387, 263, 373, 380,  # 42-47 left eye
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,  # 48-59 outer lips
    78, 81, 13, 311, 308, 402, 14, 178,  # 60-67 inner lips
])


def fill_gaps(landmarks: np.ndarray, max_gap: int, max_missing_fraction: float) -> tuple[np.ndarray, list[int]]:
    """Interpolate frames without a face over time.

    Args:
        landmarks: (N, P, D) with NaN rows where no face was found.
        max_gap: longest run of missing frames that is interpolated.
        max_missing_fraction: above this share of missing frames the stage fails.
    Returns:
        the filled landmarks and the indices of the frames that were filled.
    Raises:
        UserError naming the frames when there is no face at all, too many are missing,
        or a gap is too long.
    """
    missing = np.isnan(landmarks).any(axis=(1, 2))
    idx = np.flatnonzero(missing).tolist()
    n = len(landmarks)
    if missing.all():
        raise UserError(f"no face was found in any of the {n} frames")
    if missing.mean() > max_missing_fraction:
        raise UserError(f"no face in {len(idx)} of {n} frames (more than {max_missing_fraction:.0%}): "
                        f"frames {_ranges(idx)}; trim the video or raise preprocess.landmarks.max_missing_fraction")
    runs = _runs(idx)
    long = [r for r in runs if r[1] - r[0] + 1 > max_gap]
    if long:
        raise UserError(f"no face for more than {max_gap} frames in a row at frames "
                        f"{', '.join(f'{a}-{b}' for a, b in long)}; trim the video or raise "
                        f"preprocess.landmarks.max_gap")
    filled = landmarks.copy()
    good = np.flatnonzero(~missing)
    flat = filled.reshape(n, -1)
    for j in range(flat.shape[1]):
        flat[missing, j] = np.interp(np.flatnonzero(missing), good, flat[good, j])
    return flat.reshape(landmarks.shape), idx


def jitter(points: np.ndarray) -> float:
    """Mean absolute second difference over time of (N, P, 2) points, pixels.

    On points that do not move with expression (eye corners, nose bridge) this measures the
    detector's frame-to-frame noise plus the head's acceleration, which is small for real motion.
    """
    if len(points) < 3:
        return 0.0
    return float(np.abs(points[2:] - 2 * points[1:-1] + points[:-2]).sum(-1).mean())


def to_68(mesh: np.ndarray) -> np.ndarray:
    """(..., 478, D) FaceMesh points -> (..., 68, 2) pixel landmarks."""
    return mesh[..., MESH_TO_68, :2]


def _runs(idx: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for i in idx:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def _ranges(idx: list[int], limit: int = 20) -> str:
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in _runs(idx)]
    return ", ".join(parts[:limit]) + (f" and {len(parts) - limit} more" if len(parts) > limit else "")
