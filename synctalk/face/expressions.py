"""Weight-free upper-face blendshapes from FaceMesh landmarks, and the Face Landmarker loader.

Blendshapes: eye openness (lid distance over eye width), brow height and mouth opening
  (over the inter-ocular distance), each normalised over the video, written in the 52-column
  MediaPipe layout (the Face Landmarker model, when configured, is the better source).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from synctalk.face.blendshape_sets import BLENDSHAPE_NAMES

# FaceMesh indices (the subject's right side is the image's left)
R_EYE = {"outer": 33, "inner": 133, "upper": 159, "lower": 145}
L_EYE = {"outer": 263, "inner": 362, "upper": 386, "lower": 374}
R_BROW = {"inner": 107, "outer": 70}
L_BROW = {"inner": 336, "outer": 300}
LIPS_INNER = (13, 14)
MOUTH_CORNERS = (61, 291)
#: points that move little with expression: eye corners, nose, forehead, temples, cheekbones
RIGID = np.array([33, 133, 362, 263, 168, 6, 197, 195, 5, 4, 1, 10, 151, 9, 8, 127, 356, 234, 454, 93, 323, 116, 345])
OUTER_EYE_CORNERS_M = 0.09  # typical adult distance between the outer eye corners (33, 263)


def _dist(mesh: np.ndarray, a: int, b: int) -> np.ndarray:
    return np.linalg.norm(mesh[:, a, :2] - mesh[:, b, :2], axis=-1)


def _normalise(x: np.ndarray, lo_pct: float = 5, hi_pct: float = 95) -> np.ndarray:
    lo, hi = np.percentile(x, lo_pct), np.percentile(x, hi_pct)
    return np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)


def face_action_measures(mesh: np.ndarray) -> dict[str, np.ndarray]:
    """Scale-free face measures of (N, 478, 3) landmarks, each (N,): eye openness (lid gap over eye width),
    brow heights and mouth opening and width (over the distance between the outer eye corners)."""
    iod = _dist(mesh, R_EYE["outer"], L_EYE["outer"])
    out = {}
    for side, eye, brow in (("right", R_EYE, R_BROW), ("left", L_EYE, L_BROW)):
        out[f"eye_open_{side}"] = _dist(mesh, eye["upper"], eye["lower"]) / _dist(mesh, eye["outer"], eye["inner"])
        out[f"brow_outer_{side}"] = _dist(mesh, brow["outer"], eye["outer"]) / iod
    out["brow_inner"] = (_dist(mesh, R_BROW["inner"], R_EYE["inner"]) + _dist(mesh, L_BROW["inner"], L_EYE["inner"])) / (2 * iod)
    out["mouth_open"] = _dist(mesh, *LIPS_INNER) / iod
    out["mouth_width"] = _dist(mesh, *MOUTH_CORNERS) / iod
    return out


#: which measures describe the upper and the lower face (the two halves of the AU error)
UPPER_FACE = ("eye_open_right", "eye_open_left", "brow_outer_right", "brow_outer_left", "brow_inner")
LOWER_FACE = ("mouth_open", "mouth_width")


def blendshapes_from_mesh(mesh: np.ndarray) -> np.ndarray:
    """(N, 478, 3) landmarks -> (N, 52) blendshape scores in the MediaPipe column layout."""
    m = face_action_measures(mesh)
    out = np.zeros((len(mesh), len(BLENDSHAPE_NAMES)), np.float32)
    col = BLENDSHAPE_NAMES.index
    for side in ("Right", "Left"):
        openness = m[f"eye_open_{side.lower()}"]
        open_ref = np.percentile(openness, 90)
        out[:, col(f"eyeBlink{side}")] = np.clip((open_ref - openness) / (0.8 * open_ref), 0, 1)
        outer_h = _normalise(m[f"brow_outer_{side.lower()}"])
        out[:, col(f"browOuterUp{side}")] = np.clip(2 * outer_h - 1, 0, 1)
        out[:, col(f"browDown{side}")] = np.clip(1 - 2 * outer_h, 0, 1)
    out[:, col("browInnerUp")] = _normalise(m["brow_inner"])
    jaw = _normalise(m["mouth_open"], 2, 98)
    out[:, col("jawOpen")] = jaw
    out[:, col("mouthClose")] = 1 - jaw
    return out


def face_landmarker_blendshapes(images: Iterable[np.ndarray], count: int, model_path, fps: float | None = None,
                                progress: bool = True) -> np.ndarray:
    """Blendshapes from MediaPipe's Face Landmarker model.

    Args:
        images: ``count`` (H, W, 3) RGB uint8 frames.
        model_path: ``face_landmarker.task`` (with blendshapes).
        fps: the frames' rate: video mode (tracking between frames); None: each frame read alone (image mode,
            for renders and ground truth compared frame by frame).
    Returns:
        (count, 52) scores in category order; frames without a face are NaN.
    """
    from synctalk.face.landmark_detectors import face_landmarker_results

    out = np.full((count, len(BLENDSHAPE_NAMES)), np.nan, np.float32)
    results = face_landmarker_results(images, count, model_path, fps, blendshapes=True, desc="blendshapes",
                                      progress=progress)
    for i, (_, result) in enumerate(results):
        if result.face_blendshapes:
            for category in result.face_blendshapes[0]:
                out[i, category.index] = category.score
    return out


def blendshapes_from_face_landmarker(frame_paths: list, model_path, fps: float, progress: bool = True) -> np.ndarray:
    """:func:`face_landmarker_blendshapes` of image files in video mode: (N, 52), NaN where no face."""
    from synctalk.face.landmark_detectors import read_rgb

    return face_landmarker_blendshapes(read_rgb(frame_paths), len(frame_paths), model_path, fps, progress)
