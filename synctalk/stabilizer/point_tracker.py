"""Head Points Tracker: keypoints on the rigid head region tracked through the video.

1. Dense optical flow of every frame against a reference frame (OpenCV DIS flow at full resolution
   by default), forward (reference -> frame) and backward (frame -> reference), optionally on images with their
   local contrast normalised (``normalize_px``) so that shading does not move the tracks, and optionally as
   plain patch flow (``flow_patch_px``: larger patches, no smoothness term) so that where the texture is faint
   (compressed skin) the flow is not drawn towards its neighbours'.
2. A temporal Laplacian score per reference pixel, ``sum_t |f_t - (f_{t-1} + f_{t+1}) / 2|``:
   how irregularly the pixel's flow changes over time.
3. Keypoints from the score map inside the head region (the head with its hair, or the face skin,
   without eyes and mouth; ``preprocess.points.region``):
   ``rule=stable`` keeps local minima (the released SyncTalk code), ``rule=salient`` local maxima
   (the paper's wording); both take window-wise extrema at least ``min_distance`` px apart.
4. Tracks: keypoint + forward flow; a point is visible in a frame when the forward-backward
   error is below ``fb_threshold`` px and it lands inside that frame's region mask. With
   ``flow=cotracker`` the chosen keypoints are instead tracked by CoTracker (queried at the reference
   frame, tracked forwards and backwards); visible = CoTracker's visibility and inside the region mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from synctalk import threads
from synctalk.errors import UserError
from synctalk.stabilizer.options import FlowConfig, PointsOptions

EYES_AND_MOUTH = (list(range(36, 42)), list(range(42, 48)), list(range(48, 60)))  # 68-point polygons


def head_region(mask: np.ndarray, lms68: np.ndarray, erode_px: int, upper: bool = False) -> np.ndarray:
    """Rigid head region: the region mask (head or face parsing), eroded, without the eyes and the mouth
    (dilated polygons); with ``upper``, also without everything below the line through the jaw contour
    points 2 and 14 (about the nose base): the jaw and cheeks that move when the subject speaks.

    Args:
        mask: (H, W) bool; lms68: (68, 2) pixels.
    Returns:
        (H, W) bool.
    """
    region = mask.astype(np.uint8)
    if erode_px > 0:
        region = cv2.erode(region, np.ones((2 * erode_px + 1,) * 2, np.uint8))
    holes = np.zeros_like(region)
    for poly in EYES_AND_MOUTH:
        cv2.fillPoly(holes, [np.round(lms68[poly]).astype(np.int32)], 1)
    grow = max(3, erode_px)
    holes = cv2.dilate(holes, np.ones((2 * grow + 1,) * 2, np.uint8))
    keep = (region > 0) & (holes == 0)
    if upper:
        (ax, ay), (bx, by) = lms68[2], lms68[14]
        ys, xs = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
        keep &= (bx - ax) * (ys - ay) - (by - ay) * (xs - ax) <= 0  # on the forehead's side of the line
    return keep


def normalize_contrast(gray: np.ndarray, sigma_px: float) -> np.ndarray:
    """(H, W) uint8 -> (H, W) uint8 with its local mean removed and its local contrast equalised (Gaussian windows
    of ``sigma_px``): the texture stays, smooth shading goes. Flow between such images follows the skin, not the
    light: with the light fixed and the head turning, shading moves over the face and pulls brightness-constancy
    flow with it (on the synthetic subject that biased the focal measured on the tracks by -9% at 1350 px)."""
    f = gray.astype(np.float32)
    mean = cv2.GaussianBlur(f, (0, 0), sigma_px)
    var = cv2.GaussianBlur((f - mean) ** 2, (0, 0), sigma_px)
    return np.clip((f - mean) / np.sqrt(var + 4.0) * 40.0 + 128.0, 0, 255).astype(np.uint8)


class DenseFlow:
    """OpenCV DIS optical flow between grayscale frames: (H, W, 2) pixel displacements.

    ``fine``: the medium preset refined down to full resolution (its default stops at half
    resolution); on the synthetic subject this halves the mean track error against the truth
    (1.31 -> 0.60 px). The forward-backward check uses the coarser, faster flow.
    ``patch_px``: 0 keeps the preset's 8 px patches and its variational refinement (a smoothness term);
    N > 0 matches N px patches every 2 px with no smoothness term. On H.264 frames, where the codec
    leaves little skin texture, the smoothness term draws the flow towards its neighbours' and biased the
    focal measured on the tracks by -10% at 1350 px (16 px patches without it: -0.1%; docs/stabilizer.md).
    """

    def __init__(self, fine: bool = True, patch_px: int = 0):
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        if fine:
            self._dis.setFinestScale(0)
        if patch_px > 0:
            self._dis.setPatchSize(int(patch_px))
            self._dis.setPatchStride(2)
            self._dis.setVariationalRefinementIterations(0)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._dis.calc(a, b, None)


def _sample(field: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear samples of an (H, W, C) field at (P, 2) pixel positions (clamped to the image)."""
    h, w = field.shape[:2]
    x = np.clip(xy[:, 0], 0, w - 1.001)
    y = np.clip(xy[:, 1], 0, h - 1.001)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    flat = field.reshape(h * w, -1)  # one gather per corner on the flat index: a third faster than 2D indexing
    i = y0.astype(np.intp) * w + x0.astype(np.intp)
    if not (fx.any() or fy.any()):  # whole pixels (the keypoint candidates): the field's own values, 5x faster
        return flat[i].astype(np.float64)
    return ((1 - fx) * (1 - fy) * flat[i] + fx * (1 - fy) * flat[i + 1]
            + (1 - fx) * fy * flat[i + w] + fx * fy * flat[i + w + 1])


def select_keypoints(score: np.ndarray, region: np.ndarray, rule: str, window: int, min_distance: float,
                     max_points: int) -> np.ndarray:
    """Window-wise extrema of the score map inside ``region``.

    Args:
        score: (H, W) temporal Laplacian score; region: (H, W) bool.
        rule: ``stable`` (minima, lowest first) or ``salient`` (maxima, highest first).
    Returns:
        (P, 2) integer pixel positions (x, y).
    """
    kernel = np.ones((window, window), np.uint8)
    s = score.astype(np.float32)
    if rule == "stable":
        filled = np.where(region, s, np.float32(np.inf))
        extrema = region & (filled <= cv2.erode(filled, kernel))
        order_key = s
    else:
        filled = np.where(region, s, np.float32(-np.inf))
        extrema = region & (filled >= cv2.dilate(filled, kernel))
        order_key = -s
    ys, xs = np.nonzero(extrema)
    order = np.argsort(order_key[ys, xs], kind="stable")
    chosen: list[tuple[int, int]] = []
    taken = np.zeros(score.shape, bool)
    r = int(np.ceil(min_distance))
    for k in order:
        x, y = int(xs[k]), int(ys[k])
        if taken[y, x]:
            continue
        chosen.append((x, y))
        cv2.circle(taken.view(np.uint8), (x, y), r, 1, -1)
        if len(chosen) >= max_points:
            break
    return np.array(chosen, np.float64).reshape(-1, 2)


@dataclass
class Tracks:
    """Keypoint tracks through a video."""

    reference: int  # reference frame id
    points: np.ndarray  # (N, P, 2) pixels
    visible: np.ndarray  # (N, P) bool
    fb_error: np.ndarray  # (N, P) forward-backward error, pixels
    score: np.ndarray  # (H, W) temporal Laplacian score of the reference frame's pixels
    region: np.ndarray  # (H, W) bool, the head region of the reference frame

    def save(self, path: Path) -> None:
        from synctalk.io import atomic_path

        with atomic_path(path) as tmp:
            np.savez_compressed(tmp, reference=self.reference, points=self.points, visible=self.visible,
                                fb_error=self.fb_error, score=self.score, region=self.region)

    @classmethod
    def load(cls, path: Path) -> "Tracks":
        d = np.load(path)
        return cls(int(d["reference"]), d["points"], d["visible"], d["fb_error"], d["score"], d["region"])


def track_with_cotracker(frames: list[Path], keypoints: np.ndarray, reference: int, checkpoint: str,
                         device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Track (P, 2) keypoints of the reference frame through all frames with CoTracker's offline predictor.

    Returns:
        (N, P, 2) pixel positions and (N, P) bool visibility.
    """
    import torch

    from synctalk.external import require, require_file

    require("cotracker", "flow=cotracker")
    from cotracker.predictor import CoTrackerPredictor

    file = require_file(checkpoint, "CoTracker checkpoint", "flow.checkpoint")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = CoTrackerPredictor(checkpoint=str(file)).to(device).eval()
    video = np.stack([cv2.imread(str(p))[..., ::-1] for p in frames])  # (N, H, W, 3) RGB
    video = torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2)[None].float().to(device)
    queries = torch.cat([torch.full((len(keypoints), 1), float(reference)), torch.from_numpy(keypoints).float()], 1)
    with torch.no_grad():
        tracks, visible = model(video, queries=queries[None].to(device), backward_tracking=True)
    tracks, visible = tracks[0].cpu().numpy().astype(np.float64), visible[0].cpu().numpy()
    if visible.ndim == 3:  # (N, P, 1) in some releases
        visible = visible[..., 0]
    if tracks.shape != (len(frames), len(keypoints), 2):
        raise UserError(f"CoTracker returned tracks of shape {tracks.shape}, expected {(len(frames), len(keypoints), 2)}")
    return tracks, visible.astype(bool)


def inside_masks(points: np.ndarray, masks: list[Path]) -> np.ndarray:
    """(N, P) bool: each frame's points fall inside the image and that frame's mask."""
    out = np.zeros(points.shape[:2], bool)
    for t, path in enumerate(masks):
        mask = _read_mask(path)
        h, w = mask.shape
        x, y = points[t, :, 0], points[t, :, 1]
        ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        out[t, ok] = mask[np.round(y[ok]).astype(int).clip(0, h - 1), np.round(x[ok]).astype(int).clip(0, w - 1)]
    return out


def _read_mask(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 127


def flow_box(masks: list[Path], margin: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the box around every frame's mask plus ``margin`` px, where the flow is computed."""
    lo, hi = np.array([np.inf, np.inf]), np.array([-np.inf, -np.inf])
    for path in masks:
        mask = _read_mask(path)
        ys, xs = np.nonzero(mask)
        if len(xs):
            lo = np.minimum(lo, [xs.min(), ys.min()])
            hi = np.maximum(hi, [xs.max(), ys.max()])
    h, w = mask.shape
    if not np.isfinite(lo).all():
        return 0, 0, w, h
    return (int(max(lo[0] - margin, 0)), int(max(lo[1] - margin, 0)), int(min(hi[0] + margin + 1, w)),
            int(min(hi[1] + margin + 1, h)))


def score_frame_runs(n: int, score_frames: int, runs: int = 10) -> list[range]:
    """The frames the keypoint score is computed on: all of them when ``n <= score_frames``, else ``runs``
    runs of consecutive frames (the score is a temporal Laplacian) spread evenly over the video, ``score_frames``
    in all."""
    if n <= score_frames:
        return [range(n)]
    length = max(3, score_frames // runs)
    starts = np.linspace(0, n - length, runs).round().astype(int)
    return [range(s, s + length) for s in starts]


def track_head_points(frames: list[Path], masks: list[Path], lms68: np.ndarray, reference: int,
                      points: PointsOptions | None = None, flow: FlowConfig | None = None, px_scale: float = 1.0,
                      progress: bool = True) -> Tracks:
    """Track keypoints of the rigid head region through all frames (see the module docstring).

    Two passes keep memory independent of the video's length: the flow of the score frames
    (:func:`score_frame_runs`; all frames of a clip up to ``score_frames`` long) is sampled at every
    candidate pixel to score and choose the keypoints, and the flow of the other frames only at the
    chosen keypoints. Each frame's flow is computed once, in ``workers`` threads (0: one per free core,
    :func:`synctalk.threads.current_threads`).

    Args:
        frames, masks: per-frame image and region-mask paths (N): ``face_mask/<i>.png`` (head with hair) or
            ``parsing/<i>_face.png`` (face skin), see ``preprocess.points.region``.
        lms68: (N, 68, 2) landmarks, used to cut out the eyes and the mouth.
        reference: the frame the keypoints are chosen in (a frontal one).
        points: ``preprocess.points`` (default: the defaults); an ``upper_*`` region keeps only the part of the
            mask above the nose base (:func:`head_region`).
        flow: the ``flow`` group: ``opencv`` (DIS flow tracks) or ``cotracker`` (CoTracker tracks of the same
            keypoints; ``checkpoint`` is its weight file; ``fb_error`` is then NaN: not measured).
        px_scale: ``min_distance`` and ``erode_px`` are multiplied by it (they are given for a 512 px wide
            video; pass width / 512).
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    p, flow = points or PointsOptions(), flow or FlowConfig()
    rule, window, max_points, fb_threshold, min_points = p.rule, p.window, p.max_points, p.fb_threshold, p.min_points
    backend, checkpoint, upper = flow.backend, flow.checkpoint, p.region.startswith("upper")
    min_distance = max(1.0, p.min_distance * px_scale)
    erode_px = max(1, round(p.erode_px * px_scale))
    n = len(frames)
    x0, y0, x1, y1 = flow_box(masks, round(32 * px_scale))  # the flow only where the head can be
    sigma = p.normalize_px * px_scale
    patch_px = max(4, round(p.flow_patch_px * px_scale)) if p.flow_patch_px > 0 else 0

    def read_gray(path: Path) -> np.ndarray:
        gray = np.ascontiguousarray(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)[y0:y1, x0:x1])
        return normalize_contrast(gray, sigma) if sigma > 0 else gray

    ref = read_gray(frames[reference])
    h, w = ref.shape
    reference_mask = _read_mask(masks[reference])
    region = head_region(reference_mask[y0:y1, x0:x1], lms68[reference] - [x0, y0], erode_px, upper)
    ys, xs = np.nonzero(region)
    if len(xs) < min_points:
        raise UserError(f"the head region of frame {reference} has {len(xs)} pixels: too small to track points "
                        f"(check parsing/ and face_mask/ in the overlays)")
    candidates = np.stack([xs, ys], -1).astype(np.float64)
    local = threading.local()

    def flow_at(t: int, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Forward flow (reference -> frame t) at ``at`` (K, 2) crop pixels and the forward-backward error."""
        if t == reference:
            return np.zeros((len(at), 2), np.float32), np.zeros(len(at), np.float32)
        if not hasattr(local, "flow"):
            local.flow, local.check = DenseFlow(fine=True, patch_px=patch_px), DenseFlow(fine=False)
        img = read_gray(frames[t])
        fwd = _sample(local.flow(ref, img), at)
        moved = at + fwd
        back = moved + _sample(local.check(img, ref), moved)
        return fwd.astype(np.float32), np.linalg.norm(back - at, axis=-1).astype(np.float32)

    runs = score_frame_runs(n, p.score_frames)
    scored = [t for run in runs for t in run]
    slot = {t: k for k, t in enumerate(scored)}
    fwd = np.zeros((len(scored), len(candidates), 2), np.float32)
    fb = np.zeros((len(scored), len(candidates)), np.float32)
    pool = ThreadPoolExecutor(max_workers=p.workers or threads.current_threads())
    bar = tqdm(total=n, desc="head point flow", unit="frame", disable=not progress)

    def score_job(t: int) -> None:
        fwd[slot[t]], fb[slot[t]] = flow_at(t, candidates)
        bar.update()

    with pool:
        list(pool.map(score_job, scored))
        # temporal Laplacian of each candidate's flow, summed over the runs' frames
        lap = np.zeros(len(candidates), np.float64)
        for run in runs:
            f = fwd[[slot[t] for t in run]]
            if len(f) >= 3:
                lap += np.linalg.norm(f[1:-1] - 0.5 * (f[:-2] + f[2:]), axis=-1).sum(0)
        score = np.zeros((h, w), np.float32)
        score[ys, xs] = lap
        chosen = select_keypoints(score, region, rule, window, min_distance, max_points)
        if len(chosen) < min_points:
            raise UserError(f"only {len(chosen)} trackable head points (need preprocess.points.min_points="
                            f"{min_points}): the head region is too small or textureless; lower min_distance, or use "
                            f"tracker.pose_source=landmarks")
        index = {(int(x), int(y)): k for k, (x, y) in enumerate(candidates.astype(int))}
        idx = np.array([index[(int(x), int(y))] for x, y in chosen])
        keypoints = candidates[idx] + [x0, y0]  # crop -> frame pixels
        point_fwd = np.zeros((n, len(idx), 2), np.float32)
        fb_err = np.zeros((n, len(idx)), np.float32)
        point_fwd[scored], fb_err[scored] = fwd[:, idx], fb[:, idx]
        del fwd, fb
        if backend == "opencv":
            def track_job(t: int) -> None:
                point_fwd[t], fb_err[t] = flow_at(t, candidates[idx])
                bar.update()

            list(pool.map(track_job, [t for t in range(n) if t not in slot]))
    bar.close()
    if backend == "cotracker":
        points, predicted = track_with_cotracker(frames, keypoints, reference, checkpoint)
        fb_err = np.full(points.shape[:2], np.nan, np.float32)
        visible = predicted
    else:
        points = keypoints[None] + point_fwd.astype(np.float64)
        visible = fb_err < fb_threshold
    visible = visible & inside_masks(points, masks)
    visible[reference] = True
    full_score = np.zeros(reference_mask.shape, np.float32)
    full_region = np.zeros(reference_mask.shape, bool)
    full_score[y0:y1, x0:x1], full_region[y0:y1, x0:x1] = score, region
    return Tracks(reference, points, visible, fb_err, full_score, full_region)


def track_some_frames(frames: list[Path], masks: list[Path], lms68: np.ndarray, reference: int, ids: np.ndarray,
                      points: PointsOptions | None = None, flow: FlowConfig | None = None, px_scale: float = 1.0,
                      progress: bool = True) -> Tracks:
    """:func:`track_head_points` of the frames ``ids`` only (sorted, the reference among them; e.g. the frames the
    focal is measured on), returned as tracks over all N frames in which the other frames are not visible."""
    sub = track_head_points([frames[i] for i in ids], [masks[i] for i in ids], lms68[ids],
                            int(np.searchsorted(ids, reference)), points, flow, px_scale=px_scale, progress=progress)
    n, count = len(frames), sub.points.shape[1]
    points2d = np.zeros((n, count, 2), sub.points.dtype)
    visible = np.zeros((n, count), bool)
    fb_error = np.full((n, count), np.nan, sub.fb_error.dtype)
    points2d[ids], visible[ids], fb_error[ids] = sub.points, sub.visible, sub.fb_error
    return Tracks(reference, points2d, visible, fb_error, sub.score, sub.region)
