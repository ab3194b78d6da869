"""Does the landmark detector follow the perspective of this clip? (``tracker.check_perspective``)

The focal search reads the perspective in the landmarks: how much more the near parts of the face (the nose) are
magnified than the far ones (the cheeks, the jaw line). A learned landmark detector can show less of that than the
image holds (it leans towards the faces it was trained on); the focal is then pulled towards the detector's prior,
and the search still finds an interior minimum whose halves agree, so those checks cannot see it.

This check measures it on the clip itself. Some frames are warped to what the camera would have filmed with
``ratio`` times the found focal from ``ratio`` times the distance (the face keeps its size): every point of the face
moves as its depth in the fitted face model says (MediaPipe's canonical face mesh, 468 vertices, mapped onto the
fitted face model); the rest of the frame follows smoothly. The detector runs on the warped frames and the focal
search on its landmarks. A detector that follows the image finds ``ratio`` times the focal; the ``gain`` is the share
of the change of ``1 / focal`` it follows (1: all of it; 0: none).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from synctalk.face.face_model import read_obj
from synctalk.face.facemesh import MESH_TO_68

RATIOS = (0.7, 1.0, 1.45)  # the focal (and the camera distance) of the warped frames, times the focal found


def dense_face(shape68: np.ndarray) -> np.ndarray:
    """The 468 vertices of MediaPipe's canonical face mesh mapped onto a 68-point face shape.

    Args:
        shape68: (68, 3) a face model's neutral shape, metres, head frame.
    Returns:
        (468, 3) metres, head frame: the least-squares affine map of the mesh's 68 landmark vertices onto
        ``shape68``, applied to every vertex.
    """
    vertices = read_obj()[0][:468] / 100.0
    source = np.concatenate([vertices[MESH_TO_68], np.ones((68, 1))], 1)
    affine, *_ = np.linalg.lstsq(source, shape68, rcond=None)
    return np.concatenate([vertices, np.ones((468, 1))], 1) @ affine


def warp_points(xy: np.ndarray, depth: np.ndarray, ratio: float, centre_depth, cx: float, cy: float
                ) -> np.ndarray:
    """Image points as filmed with ``ratio`` x the focal from a camera moved back so that points at
    ``centre_depth`` keep their size.

    Args:
        xy: (..., 2) pixels; depth: (...) their distances along the optical axis (any unit, that of centre_depth);
        centre_depth: a number, or an array broadcasting against ``depth`` (e.g. (N, 1) for one centre per frame).
    Returns:
        (..., 2) pixels: ``x' - c = (x - c) * ratio * z / (z + (ratio - 1) * centre_depth)``.
    """
    scale = ratio * depth / (depth + (ratio - 1.0) * centre_depth)
    centre = np.array([cx, cy])
    return centre + (xy - centre) * scale[..., None]


def warp_image(image: np.ndarray, source: np.ndarray, target: np.ndarray, anchors: int = 9) -> np.ndarray:
    """``image`` deformed so that the pixels at ``source`` (P, 2) move to ``target`` (P, 2); the displacement is
    interpolated linearly between the points and falls to 0 at ``anchors`` points along each image edge."""
    from scipy.interpolate import LinearNDInterpolator

    h, w = image.shape[:2]
    edge = [(x, y) for x in np.linspace(0, w - 1, anchors) for y in (0, h - 1)]
    edge += [(x, y) for y in np.linspace(0, h - 1, anchors)[1:-1] for x in (0, w - 1)]
    edge = np.asarray(edge, np.float64)
    backward = LinearNDInterpolator(np.concatenate([target, edge]), np.concatenate([source, edge]))
    gy, gx = np.mgrid[0:h, 0:w]
    maps = backward(np.stack([gx.ravel(), gy.ravel()], 1)).reshape(h, w, 2).astype(np.float32)
    return cv2.remap(image, maps[..., 0], maps[..., 1], cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def perspective_response(true_focals, measured_focals) -> dict:
    """How much of a change of perspective a focal estimate follows, from estimates of the same face filmed at
    several focal lengths (the camera distance scaled with the focal, so the face keeps its size in the image).

    The strength of perspective is ``1 / focal``; the line ``1 / measured = offset + gain / true`` is fitted by
    least squares. ``gain`` 1 follows the image; 0 reports one focal whatever the camera. ``fixed_point`` is the
    focal the estimates are pulled towards (where measured = true), given for a gain under 0.9 (an estimate
    that follows nearly all of the perspective is not pulled anywhere; near gain 1 that point is noise).

    Args:
        true_focals, measured_focals: (K,) pixels, K >= 2 different true focals; a measured focal may be infinite
            or negative (no perspective, an inverted one: 1 / focal at or below 0).
    """
    true_p, meas_p = 1.0 / np.asarray(true_focals, np.float64), 1.0 / np.asarray(measured_focals, np.float64)
    if len(true_p) < 2 or np.ptp(true_p) == 0 or len(meas_p) != len(true_p):
        raise ValueError("the perspective response needs estimates at two or more different true focals")
    gain, offset = np.polyfit(true_p, meas_p, 1)
    fixed = offset / (1.0 - gain) if gain < 0.9 else 0.0
    return {"gain": round(float(gain), 3), "offset_per_px": float(offset),
            "fixed_point": round(float(1.0 / fixed), 1) if fixed > 0 else None,
            "error_pct": [round((m / t - 1) * 100, 2) for t, m in zip(true_focals, measured_focals)]}


def check_perspective(frames: list[Path], mesh: np.ndarray, camera_vertices: Callable[[int], np.ndarray],
                      focal: float, width: int, height: int, search: Callable[[np.ndarray, float], float],
                      detect: Callable[[list[Path]], np.ndarray], out_dir: Path, count: int = 60,
                      ratios=RATIOS) -> dict:
    """Warp ``count`` frames spread over the clip to each of ``ratios`` x ``focal``, detect landmarks on them and
    search the focal.

    Args:
        frames: (N,) frame files; mesh: (N, 478, 3) the detector's points on them (pixels).
        camera_vertices: frame index -> (468, 3) the fitted face's dense vertices in camera space (metres).
        search: (M, 68, 2) landmarks, expected focal (px) -> the focal found on them.
        detect: frame files -> (M, 478, 3) the landmark detector's points (NaN where no face).
    Returns:
        ``perspective_ratios``, ``perspective_focals`` (found at each ratio; None where the detector found a face
        in under half the warped frames), ``perspective_gain`` (None with fewer than two focals) and
        ``perspective_frames``. The warped frames are written under ``out_dir/r<ratio>/`` and removed at the end;
        ``out_dir.jpg`` keeps the middle frame at each ratio side by side with its landmarks.
    """
    from synctalk.face.facemesh import to_68

    ids = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    cx, cy = width / 2.0, height / 2.0
    depths = [camera_vertices(int(i))[:, 2] for i in ids]
    centres = [float(depth[np.unique(MESH_TO_68)].mean()) for depth in depths]
    points = [mesh[i, :468, :2].astype(np.float64) for i in ids]
    found, tiles = [], []
    for ratio in ratios:
        folder = out_dir / f"r{ratio:g}"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for j, (i, xy, depth, centre) in enumerate(zip(ids, points, depths, centres)):
            image = cv2.imread(str(frames[i]))  # read again for each ratio: a long clip's frames need not fit in memory
            if ratio != 1.0:
                image = warp_image(image, xy, warp_points(xy, depth, ratio, centre, cx, cy))
            paths.append(folder / f"{j}.jpg")
            cv2.imwrite(str(paths[-1]), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        detected = detect(paths)
        seen = ~np.isnan(detected[:, 0, 0])
        if seen.sum() < max(5, len(ids) // 2):  # too few faces found on the warped frames to search a focal
            found.append(None)
        else:
            found.append(round(float(search(to_68(detected[seen])[..., :2], ratio * focal)), 1))
        label = f"x{ratio:g}: " + (f"{found[-1]:.0f} px" if found[-1] else "too few faces")
        tiles.append(_tile(paths[len(paths) // 2], detected[len(paths) // 2], label))
    cv2.imwrite(str(out_dir.with_suffix(".jpg")), np.concatenate(tiles, 1), [cv2.IMWRITE_JPEG_QUALITY, 90])
    shutil.rmtree(out_dir)
    usable = [(r * focal, f) for r, f in zip(ratios, found) if f]
    gain = perspective_response(*zip(*usable))["gain"] if len(usable) >= 2 else None
    return {"perspective_ratios": list(ratios), "perspective_focals": found, "perspective_gain": gain,
            "perspective_frames": int(len(ids))}


def _tile(path: Path, points: np.ndarray, label: str) -> np.ndarray:
    """A warped frame with the detector's landmarks (green) and a label."""
    image = cv2.imread(str(path))
    for x, y in points[:, :2][~np.isnan(points[:, 0])]:
        cv2.circle(image, (int(round(x)), int(round(y))), 1, (0, 255, 0), -1)
    cv2.putText(image, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
    return image
