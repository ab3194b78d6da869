"""Weight-free estimates from FaceMesh landmarks: upper-face blendshapes and head poses.

* Blendshapes: eye openness (lid distance over eye width), brow height and mouth opening
  (over the inter-ocular distance), each normalised over the video, written in the 52-column
  MediaPipe layout (the Face Landmarker model, when configured, is the better source).
* Poses: a rigid 3D template of the subject built from its own landmarks (similarity-aligned
  and averaged, scaled to a 90 mm distance between the outer eye corners), fitted to every frame with PnP at a
  fixed focal length. This is the pose source until the stabilizer (focal search, point
  tracking, bundle adjustment) replaces it.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy.signal import savgol_filter

from synctalk.data.blendshapes import BLENDSHAPE_NAMES
from synctalk.geometry import head_pose_to_c2w

# FaceMesh indices (the subject's right side is the image's left)
R_EYE = {"outer": 33, "inner": 133, "upper": 159, "lower": 145}
L_EYE = {"outer": 263, "inner": 362, "upper": 386, "lower": 374}
R_BROW = {"inner": 107, "outer": 70}
L_BROW = {"inner": 336, "outer": 300}
LIPS_INNER = (13, 14)
#: points that move little with expression: eye corners, nose, forehead, temples, cheekbones
RIGID = np.array([33, 133, 362, 263, 168, 6, 197, 195, 5, 4, 1, 10, 151, 9, 8, 127, 356, 234, 454, 93, 323, 116, 345])
OUTER_EYE_CORNERS_M = 0.09  # typical adult distance between the outer eye corners (33, 263)


def _dist(mesh: np.ndarray, a: int, b: int) -> np.ndarray:
    return np.linalg.norm(mesh[:, a, :2] - mesh[:, b, :2], axis=-1)


def _normalise(x: np.ndarray, lo_pct: float = 5, hi_pct: float = 95) -> np.ndarray:
    lo, hi = np.percentile(x, lo_pct), np.percentile(x, hi_pct)
    return np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)


def blendshapes_from_mesh(mesh: np.ndarray) -> np.ndarray:
    """(N, 478, 3) landmarks -> (N, 52) blendshape scores in the MediaPipe column layout."""
    iod = _dist(mesh, R_EYE["outer"], L_EYE["outer"])
    out = np.zeros((len(mesh), len(BLENDSHAPE_NAMES)), np.float32)
    col = BLENDSHAPE_NAMES.index
    for side, eye, brow in (("Right", R_EYE, R_BROW), ("Left", L_EYE, L_BROW)):
        openness = _dist(mesh, eye["upper"], eye["lower"]) / _dist(mesh, eye["outer"], eye["inner"])
        open_ref = np.percentile(openness, 90)
        out[:, col(f"eyeBlink{side}")] = np.clip((open_ref - openness) / (0.8 * open_ref), 0, 1)
        outer_h = _normalise(_dist(mesh, brow["outer"], eye["outer"]) / iod)
        out[:, col(f"browOuterUp{side}")] = np.clip(2 * outer_h - 1, 0, 1)
        out[:, col(f"browDown{side}")] = np.clip(1 - 2 * outer_h, 0, 1)
    inner_h = _normalise((_dist(mesh, R_BROW["inner"], R_EYE["inner"]) + _dist(mesh, L_BROW["inner"], L_EYE["inner"]))
                         / (2 * iod))
    out[:, col("browInnerUp")] = inner_h
    jaw = _normalise(_dist(mesh, *LIPS_INNER) / iod, 2, 98)
    out[:, col("jawOpen")] = jaw
    out[:, col("mouthClose")] = 1 - jaw
    return out


def blendshapes_from_face_landmarker(frame_paths: list, model_path, fps: float, progress: bool = True) -> np.ndarray:
    """Blendshapes from MediaPipe's Face Landmarker model (video mode).

    Args:
        model_path: ``face_landmarker.task`` (with blendshapes).
    Returns:
        (N, 52) scores in category order; frames without a face are NaN.
    """
    import mediapipe as mp
    from tqdm import tqdm

    vision = mp.tasks.vision
    options = vision.FaceLandmarkerOptions(base_options=mp.tasks.BaseOptions(model_asset_path=str(model_path)),
                                           running_mode=vision.RunningMode.VIDEO, output_face_blendshapes=True,
                                           num_faces=1)
    out = np.full((len(frame_paths), len(BLENDSHAPE_NAMES)), np.nan, np.float32)
    with vision.FaceLandmarker.create_from_options(options) as landmarker:
        for i, path in enumerate(tqdm(frame_paths, desc="blendshapes", unit="frame", disable=not progress)):
            rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            result = landmarker.detect_for_video(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb),
                                                 int(round(i * 1000 / fps)))
            if result.face_blendshapes:
                for category in result.face_blendshapes[0]:
                    out[i, category.index] = category.score
    return out


def rigid_template(mesh: np.ndarray, every: int = 5) -> np.ndarray:
    """The subject's rigid face template in the head frame, metres, (len(RIGID), 3).

    Head frame: x to the subject's left (image right), y up, z out of the face; the origin
    sits 5 cm behind the centroid of the rigid points (roughly inside the head).
    """
    pts = mesh[::every][:, RIGID].astype(np.float64)
    pts = np.stack([pts[..., 0], -pts[..., 1], -pts[..., 2]], -1)  # image (u, v, depth) -> head axes
    pts -= pts.mean(1, keepdims=True)
    ref = pts[0]
    aligned = []
    for p in pts:  # similarity (Kabsch + scale) alignment onto the first sample
        u, s, vt = np.linalg.svd(p.T @ ref)
        d = np.sign(np.linalg.det(u @ vt))
        rot = u @ np.diag([1, 1, d]) @ vt
        scale = (s * [1, 1, d]).sum() / (p ** 2).sum()
        aligned.append(scale * p @ rot)
    template = np.mean(aligned, 0)
    iod = np.linalg.norm(template[list(RIGID).index(33)] - template[list(RIGID).index(263)])
    template *= OUTER_EYE_CORNERS_M / iod
    template[:, 2] += 0.05  # centred on the rigid points, then the origin moved 5 cm into the head
    return template


def poses_by_pnp(mesh: np.ndarray, focal: float, cx: float, cy: float, smooth_window: int = 7
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame camera-to-world matrices from a PnP fit of the rigid template.

    Returns:
        c2w (N, 4, 4) (OpenGL camera, head frame, metres) and the per-frame mean
        reprojection error in pixels (N,).
    """
    template = rigid_template(mesh)
    obj = template.astype(np.float64)
    k = np.array([[focal, 0, cx], [0, focal, cy], [0, 0, 1]], np.float64)
    flip = np.diag([1.0, -1.0, -1.0])  # OpenCV camera axes -> OpenGL camera axes
    rvecs, tvecs, errors = [], [], []
    rvec, tvec = None, None
    for frame in mesh:
        img = frame[RIGID, :2].astype(np.float64)
        if rvec is None:
            ok, rvec, tvec = cv2.solvePnP(obj, img, k, None, flags=cv2.SOLVEPNP_EPNP)
        ok, rvec, tvec = cv2.solvePnP(obj, img, k, None, rvec, tvec, useExtrinsicGuess=True,
                                      flags=cv2.SOLVEPNP_ITERATIVE)
        proj, _ = cv2.projectPoints(obj, rvec, tvec, k, None)
        errors.append(float(np.linalg.norm(proj[:, 0] - img, axis=-1).mean()))
        rvecs.append(rvec[:, 0].copy())
        tvecs.append(tvec[:, 0].copy())
    # head -> OpenGL camera; smoothed there, where a frontal head has a small rotation
    rot_gl = np.stack([flip @ cv2.Rodrigues(r)[0] for r in rvecs])
    translation = np.array(tvecs) @ flip.T
    rvec_gl = np.stack([cv2.Rodrigues(r)[0][:, 0] for r in rot_gl])
    if smooth_window and len(mesh) > smooth_window:
        rvec_gl = savgol_filter(rvec_gl, smooth_window, 2, axis=0)
        translation = savgol_filter(translation, smooth_window, 2, axis=0)
    rotation = np.stack([cv2.Rodrigues(r)[0] for r in rvec_gl])
    return head_pose_to_c2w(rotation, translation), np.array(errors)
