"""The stabilizer's acceptance rules: is the focal measured (interior, halves agree), are the bundle-adjusted
poses better than the face-model fit, does the landmark detector follow the perspective."""
from __future__ import annotations

import numpy as np

from synctalk.stabilizer.bundle_adjustment import MIN_POINTS_PER_FRAME
from synctalk.stabilizer.pose_convention import as_written, jitter, rotation_difference_deg


def judge_bundle_adjustment(landmark_c2w: np.ndarray, ba_c2w: np.ndarray, points_per_frame: np.ndarray,
                            max_drift_deg: float, max_few_point_fraction: float = 0.1) -> dict:
    """Whether the bundle-adjusted poses are better than the face-model fit, judged on the poses as written
    (camera-to-world, float32) and the tracks behind them.

    Bundle adjustment is rejected (the face-model poses are written instead) when any of these holds:
    its rotation jitter is not lower; more than ``max_few_point_fraction`` of the frames have fewer than
    :data:`MIN_POINTS_PER_FRAME` tracked points; its rotations drift from the face-model fit by more than
    ``max_drift_deg`` in the median (flow that drifts away carries the whole head with it).

    Args:
        landmark_c2w, ba_c2w: (N, 4, 4) camera-to-world poses; points_per_frame: (N,) tracked points used.
    Returns:
        ``kept`` (bool), ``reasons`` (why it was rejected), the two jitters and the drift.
    """
    (rot_lm, trans_lm), (rot_ba, trans_ba) = as_written(landmark_c2w), as_written(ba_c2w)
    jit_lm, jit_ba = jitter(rot_lm, trans_lm), jitter(rot_ba, trans_ba)
    drift = rotation_difference_deg(rot_ba, rot_lm)
    few = int((points_per_frame < MIN_POINTS_PER_FRAME).sum())
    reasons = []
    if jit_ba["rotation_deg"] >= jit_lm["rotation_deg"]:
        reasons.append(f"its rotation jitter ({jit_ba['rotation_deg']:.3f} deg) is not below the face-model fit's "
                       f"({jit_lm['rotation_deg']:.3f} deg)")
    if few > max_few_point_fraction * len(points_per_frame):
        reasons.append(f"{few} of {len(points_per_frame)} frames have fewer than {MIN_POINTS_PER_FRAME} stable "
                       f"tracked points")
    if np.median(drift) > max_drift_deg:
        reasons.append(f"its rotations drift {np.median(drift):.1f} deg (median) from the face-model fit "
                       f"(limit preprocess.bundle_adjustment.max_drift_deg={max_drift_deg})")
    return {"kept": not reasons, "reasons": reasons, "jitter_landmarks": jit_lm, "jitter_bundle_adjustment": jit_ba,
            "drift_median_deg": round(float(np.median(drift)), 3), "drift_p95_deg": round(float(np.percentile(drift, 95)), 3)}


def focal_at_range_end(search) -> bool:
    """Whether the focal search's error kept falling to an end of the range: the grid's best is its first or last
    candidate and the refinement (if any) is best next to that end too."""
    grid = search.candidates
    if len(grid) < 2 or search.grid_best not in (grid[0], grid[-1]):
        return False
    if len(search.refined) == 0:
        return True
    nearest = 0 if search.grid_best == grid[0] else len(search.refined) - 1
    return int(np.argmin(search.refined_rms_px)) == nearest


def focal_is_interior(search) -> bool:
    """Whether the focal search's error curve has its minimum inside the range (a measured focal): the grid has
    at least 3 candidates and the result is not at an end (:func:`focal_at_range_end`; a grid best at the end
    counts when the refinement finds the minimum inside)."""
    return bool(len(search.candidates) >= 3 and not focal_at_range_end(search))


def focal_half_agreement(search, halves: list, limit_pct: float = 10.0) -> dict:
    """The focal lengths searched on the first and the second half of a video against the whole video's: their
    difference in % of the whole's focal, and whether it is over ``limit_pct`` (an unstable focal)."""
    focals = [h.focal for h in halves]
    spread = abs(focals[0] - focals[1]) / search.focal * 100
    return {"focal_halves": [round(f, 1) for f in focals], "focal_halves_difference_pct": round(spread, 2),
            "focal_halves_disagree": bool(spread > limit_pct)}


PERSPECTIVE_GAIN_WARN = 0.8  # a landmark detector that follows less of a change of perspective gets a warning
