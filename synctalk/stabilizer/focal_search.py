"""Focal search: the face model fitted to the landmarks at a grid of focal lengths at once
(:func:`synctalk.stabilizer.head_tracker.fit_landmarks`), the focal with the lowest landmark error chosen and
refined between its grid neighbours."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synctalk.errors import UserError
from synctalk.face.face_model import RIGID_68, CanonicalFace, FaceModel, FaceModelSpec
from synctalk.stabilizer.head_tracker import fit_landmarks
from synctalk.stabilizer.options import FocalLandmarks, TrackerConfig


#: the landmarks the focal search may score (68-point indices; None: all of the model's points)
FOCAL_LANDMARKS = {FocalLandmarks.all: None, FocalLandmarks.rigid: RIGID_68, FocalLandmarks.inner: list(range(17, 68))}


def focal_candidates(start: float, stop: float, step: float) -> np.ndarray:
    """Inclusive grid ``start, start + step, ..., <= stop``."""
    if step <= 0 or stop < start:
        raise UserError(f"the focal range start={start} stop={stop} step={step} has no candidates "
                        f"(need step > 0 and stop >= start)")
    return np.arange(start, stop + step * 1e-6, step)


@dataclass
class FocalSearch:
    """The focal-search result: the grid, its error curve and the chosen focal length."""

    candidates: np.ndarray  # (F,)
    rms_px: np.ndarray  # (F,)
    frames: int  # frames the grid was fitted to
    grid_best: float
    refined: np.ndarray  # (R,) candidates of the refinement between the grid neighbours (may be empty)
    refined_rms_px: np.ndarray
    focal: float  # the result (refined when refinement ran)

    def to_dict(self) -> dict:
        return {"candidates": self.candidates.tolist(), "rms_px": np.round(self.rms_px, 4).tolist(), "frames": self.frames,
                "grid_best": float(self.grid_best), "refined": self.refined.tolist(),
                "refined_rms_px": np.round(self.refined_rms_px, 4).tolist(), "focal": float(self.focal)}


def search_focal(model: FaceModel, lms: np.ndarray, cx: float, cy: float, config: TrackerConfig,
                 face_model: FaceModelSpec | None = None, focal_range: tuple[float, float, float] | None = None,
                 px_scale: float = 1.0, progress: bool = False) -> FocalSearch:
    """Choose the focal length whose fit of every ``config.every_k``-th frame has the lowest landmark error.

    Args:
        lms: (N, 68, 2) landmarks, px; cx, cy: the principal point, px.
        config: the ``tracker`` group; its focal range (``config.focal``, px at 512 px width) is multiplied by
            ``px_scale`` (the video's width / 512), unless ``focal_range`` (start, stop, step in px) is given.
        face_model: its ``id_reg`` and ``exp_reg`` weigh the fit's identity and expression (default: the defaults).

    ``every_k`` is lowered as far as needed for at least ``min_search_frames`` frames (short clips): a focal
    length is only weakly visible in the landmarks of one frame. Neither the grid nor the refinement uses
    more than ``max_search_frames`` frames (evenly spread), so long videos cost no more than a 20 s clip.

    With ``refine_points`` > 0 the winner is refined on that many focals spread between its two
    grid neighbours, fitted to every ``refine_every_k``-th frame, and a parabola through the best three
    gives the final value. ``focal_landmarks=rigid`` scores only the landmarks expressions hardly move
    (:data:`RIGID_68`), for face models whose expression components do not fit the subject; ``inner`` all
    but the jaw contour (a silhouette that slides over the face as it turns).

    With ``focal_expressions=False`` (the default) the candidates are scored with a rigid face (the model's
    identity freedom only): per-frame expression components can bend the face to mimic a wrong
    perspective, and on real clips the rigid score is the stable one (the two halves of a clip agree).
    """
    c, fm = config, face_model or CanonicalFace()
    start, stop, step = focal_range or (c.focal.start * px_scale, c.focal.stop * px_scale, c.focal.step * px_scale)
    landmarks = FocalLandmarks(c.focal_landmarks)
    if FOCAL_LANDMARKS[landmarks] is not None:
        if model.mean.shape[0] != 68:
            raise UserError(f"tracker.focal_landmarks={landmarks} needs a 68-point face model")
        model, lms = model.subset(FOCAL_LANDMARKS[landmarks]), lms[:, FOCAL_LANDMARKS[landmarks]]
    if not c.focal_expressions:
        model = model.without_expressions()
    grid = focal_candidates(start, stop, step)
    min_k = -(-len(lms) // max(c.max_search_frames, 1))  # the smallest stride that fits at most max_search_frames
    every_k = max(1, min(c.every_k, len(lms) // max(c.min_search_frames, 1)), min_k)
    sample = lms[::every_k]
    fit = fit_landmarks(model, sample, grid, cx, cy, c.steps, c.lr, fm.id_reg, fm.exp_reg, progress, "focal search")
    rms = fit.rms_px
    best = int(np.argmin(rms))
    focal = float(grid[best])
    refined, refined_rms = np.zeros(0), np.zeros(0)
    if c.refine_points > 0 and len(grid) > 1:
        lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
        refined = np.linspace(lo, hi, c.refine_points + 2)[1:-1]
        refine_k = max(1, c.refine_every_k, min_k)
        refined_rms = fit_landmarks(model, lms[::refine_k], refined, cx, cy, c.steps, c.lr, fm.id_reg,
                                    fm.exp_reg, progress, "focal refinement").rms_px
        j = int(np.argmin(refined_rms))
        focal = float(refined[j])
        if 0 < j < len(refined) - 1:  # vertex of the parabola through the best point and its neighbours
            x, y = refined[j - 1:j + 2], refined_rms[j - 1:j + 2]
            a, b, _ = np.polyfit(x, y, 2)
            if a > 0:
                focal = float(np.clip(-b / (2 * a), x[0], x[2]))
    return FocalSearch(grid, rms, len(sample), float(grid[best]), refined, refined_rms, focal)
