"""The Head-Sync Stabilizer end to end: focal search, landmark fit, head point tracking, bundle adjustment.

Writes into ``<dataset>/stabilizer/``: ``focal_search.json`` and ``focal_curve.png`` (error vs focal),
``landmark_fit.npz`` (the face-model fit of every frame: "raw 3DMM" poses), ``tracks.npz``,
``bundle_adjustment.pt`` (poses, keypoints, reprojection errors) and ``poses.png`` (pose curves of both
sources). Poses are returned as camera-to-world matrices in the dataset convention (OpenGL camera,
head frame, metres).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from synctalk.face.face_model import FaceModel
from synctalk.face.landmark_detectors import LandmarkDetector
from synctalk.io import StepCache, atomic_path, write_json
from synctalk.stabilizer.bundle_adjustment import MIN_POINTS_PER_FRAME, run_bundle_adjustment
from synctalk.stabilizer.checks import (PERSPECTIVE_GAIN_WARN, focal_at_range_end, focal_half_agreement,
                                        focal_is_interior, judge_bundle_adjustment)
from synctalk.stabilizer.focal_from_points import focal_frames, measure_focal
from synctalk.stabilizer.focal_search import search_focal
from synctalk.stabilizer.head_tracker import fit_landmarks
from synctalk.stabilizer.options import FlowBackend, FocalSource, PoseSource, StabilizerOptions, focal_tracking
from synctalk.stabilizer.plots import plot_focal, plot_poses
from synctalk.stabilizer.point_tracker import track_head_points, track_some_frames
from synctalk.stabilizer.pose_convention import as_written, c2w_from_cv_poses, jitter, rotation_angles_deg

log = logging.getLogger(__name__)



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


def region_masks(layout, count: int, region: str) -> list[Path]:
    """The per-frame masks of ``preprocess.points.region`` in a dataset folder (a :class:`DatasetLayout`):
    the parsing's head class (hair included) or the face skin; ``upper_*`` regions are cut further by the
    point tracker."""
    head = region.endswith("head")
    return [layout.head_mask(i) if head else layout.face_only_mask(i) for i in range(count)]


def _keypoints_3d(model: FaceModel, fit, tracks, reference: int, lms68: np.ndarray, focal: float, cx: float,
                  cy: float) -> np.ndarray:
    """(P, 3) head-frame positions of the tracked points, back-projected on the landmark fit's face in the
    reference frame (:func:`backproject`)."""
    rot, trans = fit.rotation[0][reference], fit.translation[0][reference]
    with torch.no_grad():
        shape = model(torch.as_tensor(fit.id_coeff), torch.as_tensor(fit.exp_coeff[:, [reference]]))[0, 0].numpy()
    return backproject(tracks.points[reference], shape @ rot.T + trans, lms68[reference], rot, trans, focal, cx, cy)


def _check_perspective(frames: list[Path], mesh: np.ndarray, model: FaceModel, fit, focal: float,
                       size: tuple[int, int], search_fn, detector: LandmarkDetector, count: int, out_dir: Path) -> dict:
    """:func:`synctalk.stabilizer.perspective_check.check_perspective` with the fitted face and the dataset's
    landmark detector; size: (width, height) px; the focal searched over 0.4-2.5 x the focal each warp should give,
    with the stage's search settings."""
    from synctalk.stabilizer.perspective_check import check_perspective, dense_face

    with torch.no_grad():
        neutral = model(torch.as_tensor(fit.id_coeff), torch.zeros(1, 1, model.num_exp))[0, 0].numpy()
    dense = dense_face(neutral)
    rotation, translation = fit.rotation[0], fit.translation[0]
    return check_perspective(
        frames, mesh, lambda i: dense @ rotation[i].T + translation[i], focal, *size,
        lambda lms, expected: search_fn(lms, (0.4 * expected, 2.5 * expected, 0.05 * expected)).focal,
        lambda paths: detector.detect_files(paths, progress=False), out_dir / "perspective_check", count)


def _check_perspective_points(tracks, start: np.ndarray, model: FaceModel, fit, focal: float, reference: int,
                              size: tuple[int, int], opts) -> dict:
    """The perspective check of the focal measured on the points: the tracks as a camera with
    :data:`~synctalk.stabilizer.perspective_check.RATIOS` x the landmark focal, moved back so that the face's centre
    keeps its size, would have filmed them, and the focal measured on them from the same start (``start``: (P, 3)
    the points' back-projection on the fitted face, :func:`_keypoints_3d`).

    Each point moves by its own depth (``start`` under each frame's pose; the centre is the fitted face's landmarks'),
    so the moved tracks are those of one rigid head, hair and ears included. Moving them by the face mesh's depth
    interpolated between its vertices, as the warped frames move pixels, would move the points off the mesh less than
    a camera does, and the focal measured on them would follow less of the change than it can see."""
    from synctalk.stabilizer.perspective_check import RATIOS, perspective_response, warp_points

    with torch.no_grad():
        neutral = model(torch.as_tensor(fit.id_coeff), torch.zeros(1, 1, model.num_exp))[0, 0].numpy()
    rotation, translation = fit.rotation[0], fit.translation[0]
    cx, cy = size[0] / 2.0, size[1] / 2.0
    depth = np.einsum("pb,nab->npa", start, rotation)[..., 2] + translation[:, None, 2]  # (N, P)
    centre = (np.einsum("vb,nab->nva", neutral, rotation)[..., 2] + translation[:, None, 2]).mean(1)  # (N,)
    found, only_focal = [], replace(opts, check_halves=False, check_parts=False)
    for ratio in RATIOS:
        points = warp_points(tracks.points, depth, ratio, centre[:, None], cx, cy)
        found.append(measure_focal(points, tracks.visible, start, rotation, translation, focal, cx, cy, reference,
                                   only_focal))
    gain = perspective_response([r * focal for r in RATIOS], [f.focal for f in found])["gain"]  # signed, in 1/focal
    return {"perspective_points_ratios": list(RATIOS),
            "perspective_points_focals": [f.to_dict()["focal_points"] for f in found], "perspective_points_gain": gain}


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
    if opts.flow.backend == FlowBackend.cotracker and t.pose_source == PoseSource.bundle_adjustment:
        from synctalk.external import require, require_file  # fail before the long steps

        require("cotracker", "flow=cotracker")
        require_file(opts.flow.checkpoint, "CoTracker checkpoint", "flow.checkpoint")
    out_dir.mkdir(parents=True, exist_ok=True)
    cx, cy = width / 2.0, height / 2.0
    fm = opts.face_model
    model = fm.build(mesh)
    to_px = width / 512.0  # the focal range is given for a 512 px wide video, as in the original tools

    def search_fn(lms: np.ndarray, focal_range: tuple[float, float, float] | None = None):
        return search_focal(model, lms, cx, cy, t, fm, focal_range=focal_range, px_scale=to_px, progress=progress)

    steps = StepCache(out_dir / "steps", resume_key)
    search = steps("focal_search", lambda: search_fn(lms68))
    write_json(out_dir / "focal_search.json", search.to_dict())
    plot_focal(search, out_dir / "focal_curve.png")
    focal = round(search.focal, 2)  # as written in the transforms json and the report

    def landmark_fit(at: float):
        return fit_landmarks(model, lms68, [at], cx, cy, t.steps, t.lr, fm.id_reg, fm.exp_reg, progress, "landmark fit")

    fit = steps("landmark_fit", lambda: landmark_fit(focal))
    at_end = focal_at_range_end(search)
    if at_end:
        log.warning("the focal search chose the end of its range (%.0f px): the landmark error keeps falling that "
                    "way, so the focal is not measured. Widen tracker.focal.start/stop, or use a face model with a "
                    "true 3D shape (face_model=canonical, template or bfm), or set the focal "
                    "(tracker.focal.start=stop=<px>)", search.grid_best)
    report = {"pose_source": t.pose_source, "focal_source": t.focal_source, "focal_landmark_search": focal,
              "focal_grid_best": search.grid_best, "focal_at_range_end": at_end,
              "focal_interior": focal_is_interior(search), "face_model": model.name}
    if t.check_halves:
        halves = steps("focal_halves", lambda: [search_fn(part) for part in np.array_split(lms68, 2)])
        report.update(focal_half_agreement(search, halves))
        if report["focal_halves_disagree"]:
            log.warning("the two halves of the video give focal lengths %s px: the focal is not stable on this video "
                        "(little head motion, or landmarks that do not fit the face model); consider fixing it "
                        "(tracker.focal.start=stop=<px>)", report["focal_halves"])
    if t.check_perspective:
        report.update(steps("perspective_check", lambda: _check_perspective(
            frames, mesh, model, fit, focal, (width, height), search_fn, opts.detector, t.perspective_frames, out_dir)))
        if report["perspective_gain"] is None:
            log.warning("the perspective check found too few faces on the warped frames to measure anything: %s",
                        report["perspective_focals"])
        elif report["perspective_gain"] < PERSPECTIVE_GAIN_WARN:
            log.warning("the landmark detector follows only %.0f%% of a change of perspective on this video (frames "
                        "warped to %s x the focal gave %s px): the focal found (%.0f px) leans towards the detector's "
                        "own idea of a face and may be off by tens of percent, although the search finds a clear "
                        "minimum (see stabilizer/perspective_check.jpg)", 100 * report["perspective_gain"],
                        report["perspective_ratios"], report["perspective_focals"], focal)
    tracks = reference = None
    measure_points = t.focal_source == FocalSource.points and len(search.candidates) > 1
    if t.pose_source == PoseSource.bundle_adjustment or measure_points:
        reference = int(np.argmin(np.linalg.norm(rotation_angles_deg(fit.rotation[0]), axis=1)))  # most frontal
    if t.pose_source == PoseSource.bundle_adjustment:
        tracks = steps("tracks", lambda: track_head_points(frames, masks, lms68, reference, opts.points, opts.flow,
                                                           px_scale=to_px, progress=progress))
        tracks.save(out_dir / "tracks.npz")
    if t.focal_source == FocalSource.points and not measure_points:
        report["focal_points_skipped"] = "the focal is set (tracker.focal.start = stop)"
    elif measure_points:
        focal_tracks = tracks
        focal_points_options = focal_tracking(opts.points, t.focal_points)
        if tracks is None or focal_points_options != opts.points:
            focal_tracks = steps("focal_tracks", lambda: track_some_frames(
                frames, masks, lms68, reference, focal_frames(len(frames), t.focal_points.frames, reference),
                focal_points_options, opts.flow, to_px, progress))
        start = _keypoints_3d(model, fit, focal_tracks, reference, lms68, focal, cx, cy)
        measured = steps("focal_points", lambda: measure_focal(
            focal_tracks.points, focal_tracks.visible, start, fit.rotation[0], fit.translation[0], focal, cx, cy,
            reference, t.focal_points, progress))
        if t.check_perspective:
            report.update(steps("perspective_check_points", lambda: _check_perspective_points(
                focal_tracks, start, model, fit, focal, reference, (width, height), t.focal_points)))
            gain = report["perspective_points_gain"]
            if gain < PERSPECTIVE_GAIN_WARN:  # it would not see the camera's perspective on this clip's tracks
                measured.used = False
                measured.reasons.append(f"on its tracks re-filmed at {report['perspective_points_ratios']} x the "
                                        f"focal it follows {100 * gain:.0f}% of the change of perspective (limit "
                                        f"{100 * PERSPECTIVE_GAIN_WARN:.0f}%)")
        report.update(measured.to_dict())
        if measured.used:
            focal = round(measured.focal, 2)
            fit = steps("landmark_fit_points", lambda: landmark_fit(focal))
        else:
            log.warning("the focal measured on the tracked head points (%s px) is not used: %s. The landmark focal "
                        "(%.0f px) is kept", report["focal_points"], "; ".join(measured.reasons), focal)
    rot_lm, trans_lm = fit.rotation[0], fit.translation[0]
    with atomic_path(out_dir / "landmark_fit.npz") as tmp:
        np.savez(tmp, focal=focal, rotation=rot_lm, translation=trans_lm, id_coeff=fit.id_coeff[0],
                 exp_coeff=fit.exp_coeff[0], error_px=fit.error_px[0], face_model=model.name)
    c2w_lm = c2w_from_cv_poses(rot_lm, trans_lm)
    report.update({"focal": focal, "landmark_rms_px": round(float(np.sqrt((fit.error_px[0] ** 2).mean())), 4),
                   "jitter_landmarks": jitter(*as_written(c2w_lm))})
    curves = {"landmark fit": (rot_lm, trans_lm)}
    c2w = c2w_lm
    if t.pose_source == PoseSource.bundle_adjustment:
        points3d = _keypoints_3d(model, fit, tracks, reference, lms68, focal, cx, cy)
        ba = steps("bundle_adjustment", lambda: run_bundle_adjustment(
            tracks.points, tracks.visible, points3d, rot_lm, trans_lm, focal, cx, cy, reference,
            opts.bundle_adjustment, progress=progress))
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
        verdict = judge_bundle_adjustment(c2w_lm, c2w_ba, ba.inliers.sum(1), opts.bundle_adjustment.max_drift_deg)
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
    plot_poses(curves, fps, out_dir / "poses.png")
    steps.clear()
    return {"focal": focal, "c2w_landmarks": c2w_lm, "c2w": c2w, "report": report}
