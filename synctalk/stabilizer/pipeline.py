"""The Head-Sync Stabilizer end to end: focal search, landmark fit, head point tracking, bundle adjustment.

Writes into ``<dataset>/stabilizer/``: ``focal_search.json`` and ``focal_curve.png`` (error vs focal),
``landmark_fit.npz`` (the face-model fit of every frame: "raw 3DMM" poses), ``tracks.npz``,
``bundle_adjustment.pt`` (poses, keypoints, reprojection errors) and ``poses.png`` (pose curves of both
sources). Poses are returned as camera-to-world matrices in the dataset convention (OpenGL camera,
head frame, metres).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from synctalk.config.schema import (BundleAdjustmentOptions, FaceModelOptions, FlowConfig, PointsOptions,
                                    TrackerConfig)
from synctalk.errors import UserError
from synctalk.geometry import head_pose_to_c2w
from synctalk.io import StepCache, atomic_path, save_figure, subplots, write_json
from synctalk.stabilizer.bundle_adjustment import MIN_POINTS_PER_FRAME, run_bundle_adjustment
from synctalk.stabilizer.face_model import (FaceModel, bfm_face_model, canonical_face_model, subject_face_model,
                                            template_face_model)
from synctalk.stabilizer.head_tracker import fit_landmarks, search_focal
from synctalk.stabilizer.point_tracker import track_head_points

log = logging.getLogger(__name__)
CV_TO_GL = np.diag([1.0, -1.0, -1.0])
POSE_SOURCES = ("landmarks", "bundle_adjustment")


@dataclass
class StabilizerOptions:
    """Settings of the stabilizer: the ``tracker`` and ``flow`` groups and ``preprocess.face_model|points|
    bundle_adjustment`` (their schemas, with the same defaults)."""

    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    face_model: FaceModelOptions = field(default_factory=FaceModelOptions)
    points: PointsOptions = field(default_factory=PointsOptions)
    bundle_adjustment: BundleAdjustmentOptions = field(default_factory=BundleAdjustmentOptions)
    flow: FlowConfig = field(default_factory=FlowConfig)


FACE_MODELS = ("canonical", "subject", "template", "bfm")


def build_face_model(opts: FaceModelOptions, mesh: np.ndarray) -> FaceModel:
    if opts.backend == "canonical":
        return canonical_face_model(mesh, opts.num_exp)
    if opts.backend == "subject":
        return subject_face_model(mesh, opts.num_exp)
    if opts.backend == "template":
        return template_face_model(opts.template, mesh, opts.num_exp)
    if opts.backend == "bfm":
        return bfm_face_model(opts.bfm_dir)
    raise UserError(f"preprocess.face_model.backend={opts.backend} is not one of {', '.join(FACE_MODELS)}")


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
    from synctalk.data.layout import DatasetLayout, Transforms

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


def backproject(keypoints: np.ndarray, landmarks_cam: np.ndarray, landmarks_px: np.ndarray, rotation: np.ndarray,
                translation: np.ndarray, focal: float, cx: float, cy: float) -> np.ndarray:
    """Head-frame 3D positions of reference-frame keypoints, with depths interpolated from the fitted
    landmarks (inverse-distance weights of the 4 nearest in the image).

    Args:
        keypoints: (P, 2) px; landmarks_cam: (68, 3) camera-frame landmark positions; landmarks_px: (68, 2).
        rotation, translation: the reference pose (head -> OpenCV camera).
    Returns:
        (P, 3) metres, head frame.
    """
    d = np.linalg.norm(keypoints[:, None] - landmarks_px[None], axis=-1)
    near = np.argsort(d, axis=1)[:, :4]
    w = 1.0 / np.maximum(np.take_along_axis(d, near, 1), 1.0)
    depth = (landmarks_cam[near, 2] * w).sum(1) / w.sum(1)
    rays = np.stack([(keypoints[:, 0] - cx) / focal, (keypoints[:, 1] - cy) / focal, np.ones(len(keypoints))], -1)
    cam = rays * depth[:, None]
    return (cam - translation) @ rotation  # R^T (X - T), row vectors


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


def _plot_focal(search, path: Path) -> None:
    fig, ax = subplots(figsize=(6, 3.2))
    ax.plot(search.candidates, search.rms_px, "o-", label="grid")
    if len(search.refined):
        ax.plot(search.refined, search.refined_rms_px, ".", label="refinement")
    ax.axvline(search.focal, color="k", lw=0.8, ls="--", label=f"chosen {search.focal:.0f}")
    ax.set_xlabel("focal length (px)")
    ax.set_ylabel("landmark RMS error (px)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def _plot_poses(curves: dict, fps: float, path: Path) -> None:
    fig, ax = subplots(2, 3, figsize=(12, 5), sharex=True)
    for name, (rot, trans) in curves.items():
        t = np.arange(len(rot)) / fps
        ang = rotation_angles_deg(rot)
        for k, label in enumerate(("pitch (deg)", "yaw (deg)", "roll (deg)")):
            ax[0, k].plot(t, ang[:, k], lw=0.9, label=name)
            ax[0, k].set_title(label, fontsize=9)
        for k, label in enumerate(("x (mm)", "y (mm)", "z (mm)")):
            ax[1, k].plot(t, trans[:, k] * 1000, lw=0.9, label=name)
            ax[1, k].set_title(label, fontsize=9)
    ax[0, 0].legend(fontsize=8)
    for a in ax[1]:
        a.set_xlabel("seconds")
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


REGIONS = ("head", "face", "upper_head", "upper_face")


def region_masks(layout, count: int, region: str) -> list[Path]:
    """The per-frame masks of ``preprocess.points.region`` in a dataset folder (a :class:`DatasetLayout`):
    the parsing's head class (hair included) or the face skin; ``upper_*`` regions are cut further by the
    point tracker."""
    if region not in REGIONS:
        raise UserError(f"preprocess.points.region={region} is not one of {', '.join(REGIONS)}")
    head = region.endswith("head")
    return [layout.head_mask(i) if head else layout.face_only_mask(i) for i in range(count)]


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


def _check_perspective(frames: list[Path], mesh: np.ndarray, model: FaceModel, fit, focal: float, width: int,
                       height: int, search_fn, count: int, out_dir: Path) -> dict:
    """:func:`synctalk.stabilizer.perspective_check.check_perspective` with the fitted face and FaceMesh; the focal
    searched over 0.4-2.5 x the focal each warp should give, with the stage's search settings."""
    from synctalk.data.landmarks import detect_mesh
    from synctalk.stabilizer.perspective_check import check_perspective, dense_face

    with torch.no_grad():
        neutral = model(torch.as_tensor(fit.id_coeff), torch.zeros(1, 1, model.num_exp))[0, 0].numpy()
    dense = dense_face(neutral)
    rotation, translation = fit.rotation[0], fit.translation[0]
    return check_perspective(
        frames, mesh, lambda i: dense @ rotation[i].T + translation[i], focal, width, height,
        lambda lms, expected: search_fn(lms, (0.4 * expected, 2.5 * expected, 0.05 * expected)).focal,
        lambda paths: detect_mesh(paths, progress=False), out_dir / "perspective_check", count)


def stabilize(frames: list[Path], masks: list[Path], mesh: np.ndarray, lms68: np.ndarray, width: int,
              height: int, fps: float, opts: StabilizerOptions, out_dir: Path, progress: bool = True,
              resume_key: str | None = None) -> dict:
    """Focal search and landmark fit, then point tracking + bundle adjustment when
    ``tracker.pose_source=bundle_adjustment``.

    Args:
        frames, masks: per-frame paths of the frames and of the masks the head points are chosen in
            (N; :func:`region_masks`); mesh: (N, 478, 3) FaceMesh points; lms68: (N, 68, 2).
        resume_key: identifies these inputs and options: a run killed midway under the same key resumes after
            its last finished step (focal search, halves check, landmark fit, point tracking, bundle
            adjustment), kept in ``<out_dir>/steps/`` until the end. None: every step is computed.
    Returns:
        ``focal``, ``c2w_landmarks`` (N, 4, 4), ``c2w`` (N, 4, 4: the poses to write: bundle-adjusted unless
        :func:`judge_bundle_adjustment` rejects them) and ``report``.
    """
    t = opts.tracker
    if t.pose_source not in POSE_SOURCES:
        raise UserError(f"tracker.pose_source={t.pose_source} is not one of {', '.join(POSE_SOURCES)}")
    if opts.flow.backend == "cotracker" and t.pose_source == "bundle_adjustment":  # fail before the long steps
        from synctalk.external import require, require_file

        require("cotracker", "flow=cotracker")
        require_file(opts.flow.checkpoint, "CoTracker checkpoint", "flow.checkpoint")
    elif opts.flow.backend not in ("opencv", "cotracker"):
        raise UserError(f"flow.backend={opts.flow.backend} is not one of opencv, cotracker")
    out_dir.mkdir(parents=True, exist_ok=True)
    cx, cy = width / 2.0, height / 2.0
    fm = opts.face_model
    model = build_face_model(fm, mesh)
    to_px = width / 512.0  # the focal range is given for a 512 px wide video, as in the original tools

    def search_fn(lms: np.ndarray, focal_range: tuple[float, float, float] | None = None):
        start, stop, step = focal_range or (t.focal.start * to_px, t.focal.stop * to_px, t.focal.step * to_px)
        return search_focal(model, lms, cx, cy, start, stop, step, t.every_k, t.steps, t.lr, t.refine_points,
                            fm.id_reg, fm.exp_reg, progress, t.refine_every_k, t.focal_landmarks,
                            t.min_search_frames, t.focal_expressions, t.max_search_frames)

    steps = StepCache(out_dir / "steps", resume_key)
    search = steps("focal_search", lambda: search_fn(lms68))
    write_json(out_dir / "focal_search.json", search.to_dict())
    _plot_focal(search, out_dir / "focal_curve.png")
    focal = round(search.focal, 2)  # as written in the transforms json and the report
    fit = steps("landmark_fit", lambda: fit_landmarks(model, lms68, [focal], cx, cy, t.steps, t.lr, fm.id_reg,
                                                      fm.exp_reg, progress, "landmark fit"))
    rot_lm, trans_lm = fit.rotation[0], fit.translation[0]
    with atomic_path(out_dir / "landmark_fit.npz") as tmp:
        np.savez(tmp, focal=focal, rotation=rot_lm, translation=trans_lm, id_coeff=fit.id_coeff[0],
                 exp_coeff=fit.exp_coeff[0], error_px=fit.error_px[0], face_model=model.name)
    c2w_lm = c2w_from_cv_poses(rot_lm, trans_lm)
    at_end = focal_at_range_end(search)
    if at_end:
        log.warning("the focal search chose the end of its range (%.0f px): the landmark error keeps falling that "
                    "way, so the focal is not measured. Widen tracker.focal.start/stop, or use a face model with a "
                    "true 3D shape (preprocess.face_model.backend=canonical, template or bfm), or set the focal "
                    "(tracker.focal.start=stop=<px>)", search.grid_best)
    report = {"pose_source": t.pose_source, "focal": focal, "focal_grid_best": search.grid_best,
              "focal_at_range_end": at_end, "focal_interior": focal_is_interior(search),
              "face_model": model.name,
              "landmark_rms_px": round(float(np.sqrt((fit.error_px[0] ** 2).mean())), 4),
              "jitter_landmarks": jitter(*as_written(c2w_lm))}
    if t.check_halves:
        halves = steps("focal_halves", lambda: [search_fn(part) for part in np.array_split(lms68, 2)])
        report.update(focal_half_agreement(search, halves))
        if report["focal_halves_disagree"]:
            log.warning("the two halves of the video give focal lengths %s px: the focal is not stable on this video "
                        "(little head motion, or landmarks that do not fit the face model); consider fixing it "
                        "(tracker.focal.start=stop=<px>)", report["focal_halves"])
    if t.check_perspective:
        report.update(steps("perspective_check", lambda: _check_perspective(
            frames, mesh, model, fit, focal, width, height, search_fn, t.perspective_frames, out_dir)))
        if report["perspective_gain"] is None:
            log.warning("the perspective check found too few faces on the warped frames to measure anything: %s",
                        report["perspective_focals"])
        elif report["perspective_gain"] < PERSPECTIVE_GAIN_WARN:
            log.warning("the landmark detector follows only %.0f%% of a change of perspective on this video (frames "
                        "warped to %s x the focal gave %s px): the focal found (%.0f px) leans towards the detector's "
                        "own idea of a face and may be off by tens of percent, although the search finds a clear "
                        "minimum (see stabilizer/perspective_check.jpg)", 100 * report["perspective_gain"],
                        report["perspective_ratios"], report["perspective_focals"], focal)
    curves = {"landmark fit": (rot_lm, trans_lm)}
    c2w = c2w_lm
    if t.pose_source == "bundle_adjustment":
        reference = int(np.argmin(np.linalg.norm(rotation_angles_deg(rot_lm), axis=1)))  # the most frontal frame
        tracks = steps("tracks", lambda: track_head_points(
            frames, masks, lms68, reference, px_scale=to_px, progress=progress, backend=opts.flow.backend,
            checkpoint=opts.flow.checkpoint, upper=opts.points.region.startswith("upper"),
            **{k: v for k, v in asdict(opts.points).items() if k != "region"}))
        tracks.save(out_dir / "tracks.npz")
        with torch.no_grad():
            shape = model(torch.as_tensor(fit.id_coeff), torch.as_tensor(fit.exp_coeff[:, [reference]]))[0, 0].numpy()
        lms_cam = shape @ rot_lm[reference].T + trans_lm[reference]
        points3d = backproject(tracks.points[reference], lms_cam, lms68[reference], rot_lm[reference],
                               trans_lm[reference], focal, cx, cy)
        ba_opts = asdict(opts.bundle_adjustment)
        max_drift_deg = ba_opts.pop("max_drift_deg")
        ba = steps("bundle_adjustment", lambda: run_bundle_adjustment(
            tracks.points, tracks.visible, points3d, rot_lm, trans_lm, focal, cx, cy, reference, progress=progress,
            **ba_opts))
        visible = tracks.visible.sum(1)
        with atomic_path(out_dir / "bundle_adjustment.pt") as tmp:
            torch.save({"focal": focal, "rotation": torch.as_tensor(ba.rotation),
                        "translation": torch.as_tensor(ba.translation), "points3d": torch.as_tensor(ba.points3d),
                        "reference": reference, "error_px": {k: torch.as_tensor(v) for k, v in ba.error_px.items()},
                        "history": ba.history}, tmp)
        report.update({
            "reference_frame": reference, "tracked_points": int(tracks.points.shape[1]),
            "visible_fraction": round(float(tracks.visible.mean()), 4),
            "frames_with_few_points": int((visible < MIN_POINTS_PER_FRAME).sum()),
            "ba_reprojection_px": {k: round(float(v.mean()), 4) for k, v in ba.error_px.items()},
            "ba_inlier_fraction": round(float(ba.inliers.sum() / max(tracks.visible.sum(), 1)), 4),
        })
        c2w_ba = c2w_from_cv_poses(ba.rotation, ba.translation)
        verdict = judge_bundle_adjustment(c2w_lm, c2w_ba, ba.inliers.sum(1), max_drift_deg)
        report.update({"jitter_bundle_adjustment": verdict["jitter_bundle_adjustment"],
                       "ba_drift_median_deg": verdict["drift_median_deg"], "ba_drift_p95_deg": verdict["drift_p95_deg"],
                       "bundle_adjustment_kept": verdict["kept"], "bundle_adjustment_rejected": verdict["reasons"]})
        curves["bundle adjustment"] = (ba.rotation, ba.translation)
        if verdict["kept"]:
            c2w = c2w_ba
        else:
            log.warning("bundle adjustment is not used: %s. The face-model poses are written instead (see the "
                        "poses stage report and stabilizer/poses.png)", "; ".join(verdict["reasons"]))
    report["poses_written"] = "bundle_adjustment" if c2w is not c2w_lm else "landmarks"
    _plot_poses(curves, fps, out_dir / "poses.png")
    steps.clear()
    return {"focal": focal, "c2w_landmarks": c2w_lm, "c2w": c2w, "report": report}
