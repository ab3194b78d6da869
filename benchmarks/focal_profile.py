"""Is the focal visible in the tracked head points? The focal measured on them, or the error profile over the focal.

    python benchmarks/focal_profile.py --focals 700 1350 2600              # tracker.focal_source=points
    python benchmarks/focal_profile.py --datasets data/clip1 data/clip2     # the same on preprocessed datasets
    python benchmarks/focal_profile.py --estimator profile [--region upper_head] [--joint-steps 3000]
    python benchmarks/focal_profile.py --from-video --flow-patch-px 0    # on the H.264 frames, the preset's flow

The synthetic subject (512 px, 100 frames) filmed at each true focal with the camera distance scaled so that the
face keeps its size. For each: FaceMesh landmarks, the default focal search (over 0.4-2.5 x the true focal) and
landmark fit, the head points tracked as the ``poses`` stage tracks them, then either the focal measured on them as
the ``poses`` stage measures it (``--estimator points``, the default: :func:`measure_focal` with the default
``tracker.focal_points``), or (``--estimator profile``, measured and not kept) bundle adjustment (points, then
points and poses; no outlier stage) run again at 11 focal lengths from 0.5 to 2 times the landmark focal, each
started from the landmark fit with the camera distance scaled by the focal ratio. The focal with the lowest
reprojection error would be the focal the points measure, free of the face model's shape (the points' 3D
positions are free). ``--from-video``: the frames decoded from the subject's H.264 ``video.mp4`` (as a camera's
video reaches the ``poses`` stage) instead of its JPEG frames, the true masks kept; ``--flow-patch-px``: the focal
tracks' flow (``tracker.focal_points.flow_patch_px``; 0 is DIS's preset with its smoothness term). ``--datasets``:
folders made by ``synctalk preprocess`` (their frames, parsing, FaceMesh points and landmark fit), the points tracked
and the focal measured on them the same way. Writes benchmarks/results/focal_profile.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from synctalk.data.layout import DatasetLayout
from synctalk.face.face_model import CanonicalFace
from synctalk.face.facemesh import to_68
from synctalk.face.landmark_detectors import FaceMesh
from synctalk.stabilizer.bundle_adjustment import run_bundle_adjustment
from synctalk.stabilizer.focal_from_points import focal_frames, measure_focal
from synctalk.stabilizer.perspective_check import perspective_response
from synctalk.stabilizer.focal_search import search_focal
from synctalk.stabilizer.head_tracker import fit_landmarks
from synctalk.stabilizer.options import BundleAdjustmentOptions, StabilizerOptions, focal_tracking
from synctalk.stabilizer.pipeline import backproject, region_masks
from synctalk.stabilizer.point_tracker import track_head_points, track_some_frames
from synctalk.stabilizer.pose_convention import rotation_angles_deg
from synctalk.synthetic.subject import filmed_at, generate


def decoded_frames(video: Path, fps: float, folder: Path) -> list[Path]:
    """The frames of ``video`` as PNG files in ``folder``, decoded once, as the ``frames`` stage reads a video."""
    import cv2

    from synctalk.stages.source import resampled_frames, upright_bgr

    if not (folder / "done").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for i, frame in resampled_frames(video, fps):
            cv2.imwrite(str(folder / f"{i}.png"), upright_bgr(frame))
        (folder / "done").touch()
    return sorted(folder.glob("*.png"), key=lambda p: int(p.stem))


def profile(true_focal: float, work: Path, frames: int, region: str, joint_steps: int, estimator: str,
            from_video: bool = False, flow_patch_px: int | None = None) -> dict:
    spec = filmed_at(true_focal, num_frames=frames, size=512, seed=0)
    root = generate(spec, work / f"subject_{true_focal:.0f}", progress=False)
    layout = DatasetLayout(root)
    paths = ([layout.frame(i) for i in range(frames)] if not from_video
             else decoded_frames(root / "video.mp4", spec.fps, work / f"decoded_{true_focal:.0f}"))
    mesh = FaceMesh().detect_files(paths, progress=False)
    lms = to_68(mesh)[..., :2]
    opts, face = StabilizerOptions(), CanonicalFace()
    opts.points.region = region
    if flow_patch_px is not None:
        opts.tracker.focal_points.flow_patch_px = flow_patch_px
    model, cx, cy = face.build(mesh), 256.0, 256.0
    search = search_focal(model, lms, cx, cy, opts.tracker, face,
                          focal_range=(0.4 * true_focal, 2.5 * true_focal, 0.05 * true_focal))
    f0 = round(search.focal, 2)
    fit = fit_landmarks(model, lms, [f0], cx, cy, opts.tracker.steps, opts.tracker.lr, face.id_reg, face.exp_reg)
    rot, trans = fit.rotation[0], fit.translation[0]
    ref = int(np.argmin(np.linalg.norm(rotation_angles_deg(rot), axis=1)))
    if estimator == "points":  # the tracks the focal is measured on (the pipeline's focal_tracks)
        opts.points = focal_tracking(opts.points, opts.tracker.focal_points)
    tracks = track_head_points(paths, region_masks(layout, frames, region), lms, ref, opts.points, opts.flow,
                               progress=False)
    with torch.no_grad():
        shape = model(torch.as_tensor(fit.id_coeff), torch.as_tensor(fit.exp_coeff[:, [ref]]))[0, 0].numpy()
    if estimator == "points":
        start = time.perf_counter()
        points3d = backproject(tracks.points[ref], shape @ rot[ref].T + trans[ref], lms[ref], rot[ref], trans[ref], f0,
                               cx, cy)
        found = measure_focal(tracks.points, tracks.visible, points3d, rot, trans, f0, cx, cy, ref,
                              opts.tracker.focal_points)
        print(true_focal, f0, found.to_dict(), flush=True)
        return {"true_focal": true_focal, "source_frames": "video.mp4 (H.264)" if from_video else "JPEG",
                "flow_patch_px": opts.points.flow_patch_px, "landmark_focal": f0, **found.to_dict(),
                "error_pct": round((found.focal / true_focal - 1) * 100, 2),
                "seconds": round(time.perf_counter() - start, 1)}
    ba = BundleAdjustmentOptions(points_steps=300, joint_steps=joint_steps, outlier_factor=0)
    curve, start = [], time.perf_counter()
    for ratio in np.exp(np.linspace(np.log(0.5), np.log(2.0), 11)):
        focal, moved = f0 * ratio, trans.copy()
        moved[:, 2] *= ratio  # the same image size at this focal: the head farther or nearer
        points3d = backproject(tracks.points[ref], shape @ rot[ref].T + moved[ref], lms[ref], rot[ref], moved[ref],
                               focal, cx, cy)
        adjusted = run_bundle_adjustment(tracks.points, tracks.visible, points3d, rot, moved, focal, cx, cy, ref, ba,
                                         progress=False)
        curve.append((round(focal, 1), round(float(np.sqrt((adjusted.error_px["joint"] ** 2).mean())), 4)))
        print(true_focal, *curve[-1], flush=True)
    return {"true_focal": true_focal, "landmark_focal": f0, "points": int(tracks.points.shape[1]), "curve": curve,
            "profile_focal": min(curve, key=lambda c: c[1])[0], "seconds": round(time.perf_counter() - start, 1)}


def on_dataset(root: Path, region: str) -> dict:
    """The focal measured on the tracked points of a dataset made by ``synctalk preprocess``, from its landmark fit."""
    import cv2

    layout = DatasetLayout(root)
    mesh = np.load(root / "landmarks_mesh.npy")
    lms = to_68(mesh)[..., :2]
    fit = np.load(root / "stabilizer" / "landmark_fit.npz")
    n = len(lms)
    height, width = cv2.imread(str(layout.frame(0))).shape[:2]
    cx, cy = width / 2.0, height / 2.0
    rot, trans, f0 = fit["rotation"], fit["translation"], float(fit["focal"])
    ref = int(np.argmin(np.linalg.norm(rotation_angles_deg(rot), axis=1)))
    opts = StabilizerOptions()
    opts.points.region = region
    start = time.perf_counter()
    opts.points = focal_tracking(opts.points, opts.tracker.focal_points)  # the tracks the pipeline measures on
    ids = focal_frames(n, opts.tracker.focal_points.frames, ref)
    tracks = track_some_frames([layout.frame(i) for i in range(n)], region_masks(layout, n, region), lms, ref, ids,
                               opts.points, opts.flow, px_scale=width / 512, progress=False)
    model = CanonicalFace().build(mesh)
    with torch.no_grad():
        shape = model(torch.as_tensor(fit["id_coeff"])[None], torch.as_tensor(fit["exp_coeff"][[ref]])[None])[0, 0]
    points3d = backproject(tracks.points[ref], shape.numpy() @ rot[ref].T + trans[ref], lms[ref], rot[ref], trans[ref],
                           f0, cx, cy)
    found = measure_focal(tracks.points, tracks.visible, points3d, rot, trans, f0, cx, cy, ref,
                          opts.tracker.focal_points)
    print(root.name, f0, found.to_dict(), flush=True)
    return {"dataset": str(root), "frames": n, "landmark_focal": f0, **found.to_dict(),
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--focals", type=float, nargs="+", default=[700.0, 1350.0, 2600.0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--region", default="head", choices=["head", "face", "upper_head", "upper_face"])
    parser.add_argument("--joint-steps", type=int, default=800)
    parser.add_argument("--estimator", default="points", choices=["points", "profile"])
    parser.add_argument("--datasets", type=Path, nargs="*", default=[])
    parser.add_argument("--from-video", action="store_true", help="track on the frames decoded from video.mp4")
    parser.add_argument("--flow-patch-px", type=int, default=None, help="tracker.focal_points.flow_patch_px")
    parser.add_argument("--work", type=Path, default=Path("/tmp/synctalk_focal_profile"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "focal_profile.json")
    args = parser.parse_args()
    if args.datasets:
        result = {"region": args.region, "datasets": [on_dataset(root, args.region) for root in args.datasets]}
    else:
        runs = [profile(f, args.work, args.frames, args.region, args.joint_steps, args.estimator, args.from_video,
                        args.flow_patch_px) for f in args.focals]
        result = {"region": args.region, "estimator": args.estimator, "joint_steps": args.joint_steps, "runs": runs}
        key = "focal_points" if args.estimator == "points" else "profile_focal"
        if len(runs) >= 2:
            result["gain"] = perspective_response([r["true_focal"] for r in runs], [r[key] for r in runs])
        print(json.dumps([{k: r[k] for k in ("true_focal", "landmark_focal", key)} for r in runs]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
