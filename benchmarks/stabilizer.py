"""Head-Sync Stabilizer accuracy and speed.

    python benchmarks/stabilizer.py                  # synthetic subject (truth known) + the real clips
    python benchmarks/stabilizer.py --frames 60 --clips   # a quicker synthetic-only run
    python benchmarks/stabilizer.py --no-synthetic --long-minutes 5   # real clips + the poses stage of a 5-minute video
    python benchmarks/stabilizer.py --no-synthetic --clips my_clips/*.mp4   # any clips: a table with each one's checks
    python benchmarks/stabilizer.py --no-synthetic --perspective-check   # + FaceMesh's perspective gain on each clip
    python benchmarks/stabilizer.py --no-synthetic --clips --user-focals   # the subject at 700 / 1350 / 2600 px only

Synthetic subject (512 px, focal 1350, +-10 deg yaw), four entries:

- ``truth_landmarks``: the true 2D landmarks plus 1 px Gaussian noise, and the ``template`` face model
  holding the subject's true neutral shape, with the focal searched on the rigid landmarks (the
  template's expression components come from FaceMesh and do not fit the synthetic expressions). The
  accuracy targets of the stabilizer are stated for this case: it measures the focal search, the
  landmark fit and bundle adjustment, not a landmark detector or a face model's shape error. Every
  tracker preset.
- ``facemesh``: FaceMesh landmarks and the default face model (``canonical``), and the ``subject`` model
  beside it, on the rendered frames.
- ``perspective``: the subject filmed at three focal lengths with the camera distance scaled so the face keeps its
  size (:data:`PERSPECTIVE_FOCALS`): the focal found on the true landmarks and on FaceMesh's, and the share of the
  change of perspective each follows (``gain``: 1 follows the image, 0 reports one focal whatever the camera).
- ``user``: as a user runs it: the subject's ``video.mp4`` through ``synctalk preprocess`` (the command, in a child
  process) with its defaults (crop, FaceMesh, ``canonical`` face model, bundle adjustment), errors against the truth.
- ``user_focals`` (also alone: ``--user-focals``): the same for the subject filmed at each of
  :data:`PERSPECTIVE_FOCALS` (H.264 video, as a camera's), one row each: the landmark focal, the focal measured on the
  tracked points with its deviations and halves, whether it was used, the focal written and its error.

The subject's face is a human face (MediaPipe's canonical mesh with an identity of its own: wider, shorter, a
longer nose, a random shape; :mod:`synctalk.synthetic.human_face`), so the default face model meets a real identity
mismatch.

For each: the focal on the grid and after refinement, the pose errors of the landmark fit and of bundle
adjustment (rotation and translation after the alignment of ``pose_errors``: the head frame and the
global scale are not observable) and the time of the whole stabilizer.

Real clips (no truth), each through ``synctalk preprocess`` as a user runs it: the focal (also in face-detector
boxes: ``focal_over_face_px``, to set beside the ``perspective`` entry's pull), whether it is an interior minimum
of the error curve, the focal of each half of the clip and their difference, the rotation jitter of the face-model fit and
of bundle adjustment, which poses were written and the jitter measured from the written transforms json.

``--long-minutes M``: the ``poses`` stage of an M-minute 512 px video (the first real clip played forwards and
backwards, built from its preprocessed frames and masks), run in a child process: seconds and peak memory.

Writes benchmarks/results/stabilizer.json and, for ``synctalk report``, one job folder per entry in
benchmarks/results/stabilizer/ (the ``synctalk preprocess`` run folders of the user entry and the real clips; a
folder with the settings and numbers of each synthetic entry):

    synctalk report benchmarks/results/stabilizer
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from synctalk.config import config_dir, to_dataclass
from synctalk.data.layout import DatasetLayout
from synctalk.face.face_model import CanonicalFace, FaceModelSpec, SubjectFace, TemplateFace
from synctalk.face.facemesh import to_68
from synctalk.face.landmark_detectors import FaceMesh
from synctalk.stabilizer.options import StabilizerOptions, TrackerConfig
from synctalk.stabilizer.perspective_check import perspective_response
from synctalk.stabilizer.pipeline import region_masks, stabilize
from synctalk.stabilizer.truth import pose_errors
from synctalk.sweep_report import write_job
from synctalk.synthetic.subject import SyntheticSpec, filmed_at, generate

REAL = Path(os.environ.get("SYNCTALK_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "real"))
PRESETS = ("synctalk", "ernerf", "fine50")


def preset(name: str) -> StabilizerOptions:
    tracker = OmegaConf.load(config_dir() / "tracker" / f"{name}.yaml")
    return StabilizerOptions(tracker=to_dataclass(tracker, TrackerConfig))


def noisy_landmarks(truth: dict, seed: int, sigma_px: float = 1.0) -> np.ndarray:
    """(N, 68, 2) true landmarks plus Gaussian noise of ``sigma_px`` per coordinate."""
    clean = truth["landmarks_2d"][..., :2]
    return clean + np.random.default_rng(seed).normal(0, sigma_px, clean.shape)


def preprocess(video: Path, root: Path, run_dir: Path, *overrides: str) -> dict:
    """``synctalk preprocess`` on ``video`` as a user runs it (a child process), its run folder at ``run_dir``.

    Returns:
        {stage: its report} read from the dataset's stage records, or {"error": the command's one-line error}.
    """
    cmd = [sys.executable, "-m", "synctalk", "preprocess", f"data.video='{video}'", f"data.root='{root}'",
           f"hydra.run.dir='{run_dir}'", *overrides]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit code {done.returncode}"}
    return {p.stem: json.loads(p.read_text())["report"] for p in (root / ".stages").glob("*.json")}


def run_preset(name: str, paths: list, masks: list, mesh: np.ndarray, lms: np.ndarray, spec: SyntheticSpec,
               truth: dict, work: Path, face_model: FaceModelSpec, focal_landmarks: str = "all",
               pose_source: str | None = None, focal_range: tuple[float, float, float] | None = None,
               focal_source: str | None = None) -> dict:
    """The stabilizer with a tracker preset on the synthetic subject; ``focal_range`` (start, stop, step; px at
    512) replaces the preset's focal grid."""
    opts = preset(name)
    opts.face_model = face_model
    opts.tracker.focal_landmarks = focal_landmarks
    opts.tracker.pose_source = pose_source or opts.tracker.pose_source
    opts.tracker.focal_source = focal_source or opts.tracker.focal_source
    if focal_range is not None:
        opts.tracker.focal.start, opts.tracker.focal.stop, opts.tracker.focal.step = focal_range
    start = time.perf_counter()
    res = stabilize(paths, masks, mesh, lms, spec.size, spec.size, spec.fps, opts, work, progress=False)
    seconds = time.perf_counter() - start
    search = json.loads((work / "focal_search.json").read_text())
    return {"seconds": round(seconds, 1), "focal_grid_best": search["grid_best"], "focal": round(res["focal"], 1),
            "focal_error_pct": round((res["focal"] - spec.focal) / spec.focal * 100, 2),
            "grid_step": opts.tracker.focal.step,
            "landmark_fit": pose_errors(res["c2w_landmarks"], truth["c2w"]),
            "bundle_adjustment": pose_errors(res["c2w"], truth["c2w"]), "report": res["report"]}


def synthetic(frames: int, work: Path, presets: list[str], runs: Path) -> dict:
    spec = SyntheticSpec(num_frames=frames, size=512, seed=0)
    root = generate(spec, work / "synthetic", progress=True)
    layout = DatasetLayout(root)
    truth = dict(np.load(root / "ground_truth.npz"))
    paths = [layout.frame(i) for i in range(frames)]
    masks = region_masks(layout, frames, preset(presets[0]).points.region)
    mesh = FaceMesh().detect_files(paths, progress=False)
    noisy = noisy_landmarks(truth, 0)
    out = {"frames": frames, "size": 512, "true_focal": float(truth["focal"]), "truth_landmarks": {}, "facemesh": {}}
    template = TemplateFace(template=str(root / "face_template.npy"))
    for name in presets:
        out["truth_landmarks"][name] = run_preset(name, paths, masks, mesh, noisy, spec, truth, work / f"truth_{name}",
                                                  template, "rigid")
        print("truth landmarks", name, json.dumps(out["truth_landmarks"][name]), flush=True)
        write_job(runs / f"truth_landmarks_{name}", {"entry": "truth_landmarks", "tracker": name,
                                                     "face_model": "template", "tracker.focal_landmarks": "rigid"},
                  out["truth_landmarks"][name])
    # the focal's spread over landmark-noise draws (focal search only)
    name = presets[0]
    out["focal_noise_draws"] = {"preset": name, "focal": []}
    for seed in (1, 2, 3):
        draw = run_preset(name, paths, masks, mesh, noisy_landmarks(truth, seed), spec, truth, work / f"draw_{seed}",
                          template, "rigid", pose_source="landmarks")
        out["focal_noise_draws"]["focal"].append(draw["focal"])
    print("focal over noise draws", out["focal_noise_draws"], flush=True)
    for backend, face_model in (("canonical", CanonicalFace()), ("subject", SubjectFace())):
        out["facemesh"][backend] = run_preset(name, paths, masks, mesh, to_68(mesh)[..., :2], spec, truth,
                                              work / f"facemesh_{backend}", face_model)
        print("facemesh", backend, json.dumps(out["facemesh"][backend]), flush=True)
        write_job(runs / f"facemesh_{backend}", {"entry": "facemesh", "tracker": name, "face_model": backend},
                  out["facemesh"][backend])
    out["user"] = as_a_user(root, work / "user", runs / "user")
    print("as a user", json.dumps(out["user"]), flush=True)
    out["user_focals"] = user_focals(frames, work, runs)
    out["perspective"] = detector_perspective(frames, work)
    print("perspective response", json.dumps(out["perspective"]), flush=True)
    for source in ("truth", "facemesh"):
        write_job(runs / f"perspective_{source}", {"entry": "perspective", "landmarks": source},
                  out["perspective"][source])
    return out


def as_a_user(subject: Path, root: Path, run_dir: Path) -> dict:
    """The subject's video.mp4 through ``synctalk preprocess`` with its defaults (the halves and perspective checks
    on): the focal and pose errors against its ground truth, and the self-checks a user sees."""
    start = time.perf_counter()
    full = preprocess(subject / "video.mp4", root, run_dir, f"preprocess.ground_truth='{subject / 'ground_truth.npz'}'",
                      "tracker.check_halves=true", "tracker.check_perspective=true")
    if "error" in full:
        raise SystemExit(f"synctalk preprocess refused the synthetic subject: {full['error']}")
    report = full["poses"]
    return {"seconds": round(time.perf_counter() - start, 1), "crop_applied": full["crop"].get("applied"),
            **{k: report.get(k) for k in ("focal", "focal_interior", "focal_halves", "focal_halves_difference_pct",
                                          "perspective_focals", "perspective_gain", "face_model", "poses_written",
                                          "bundle_adjustment_rejected", "jitter_written")},
            "truth": report["truth"]}


PERSPECTIVE_FOCALS = (700.0, 1350.0, 2600.0)  # px at 512; the camera 0.47, 0.9 and 1.73 m from the head


def user_focals(frames: int, work: Path, runs: Path) -> dict:
    """The subject filmed at each of PERSPECTIVE_FOCALS (the face the same size) through ``synctalk preprocess``
    with its defaults and the halves and perspective checks: the focal it writes and where it came from, against the
    truth, and how much of a change of perspective FaceMesh and the points' focal follow (the warp checks)."""
    rows = []
    for focal in PERSPECTIVE_FOCALS:
        subject = generate(filmed_at(focal, num_frames=frames, size=512, seed=0), work / f"perspective_{focal:.0f}_seed0", progress=False)
        start = time.perf_counter()
        full = preprocess(subject / "video.mp4", work / f"user_{focal:.0f}", runs / f"user_{focal:.0f}",
                          f"preprocess.ground_truth='{subject / 'ground_truth.npz'}'", "tracker.check_halves=true",
                          "tracker.check_perspective=true")
        if "error" in full:
            raise SystemExit(f"synctalk preprocess refused the synthetic subject at {focal:.0f} px: {full['error']}")
        report = full["poses"]
        rows.append({"true_focal": focal, "seconds": round(time.perf_counter() - start, 1),
                     **{k: report.get(k) for k in REAL_KEYS},
                     "error_pct": round((report["focal"] / focal - 1) * 100, 1), "truth": report.get("truth")})
        print("as a user at", focal, json.dumps(rows[-1]), flush=True)
    return {"rows": rows, "written": perspective_response(PERSPECTIVE_FOCALS, [r["focal"] for r in rows]),
            "landmarks": perspective_response(PERSPECTIVE_FOCALS, [r["focal_landmark_search"] for r in rows]),
            "points": perspective_response(PERSPECTIVE_FOCALS, [points_focal(r) for r in rows])}


def points_focal(report: dict) -> float:
    """The focal measured on the tracked points, px, signed (negative: an inverted perspective; 1 / focal is what
    :func:`perspective_response` fits)."""
    return report["focal_landmark_search"] / report["focal_points_perspective"]


def user_focals_table(result: dict) -> str:
    """One markdown row per true focal: landmark focal, the points' focal, used or why not, written (error)."""
    lines = ["| true focal | landmark focal | FaceMesh's perspective gain | points' focal (std; parts' std; halves) | "
             "used | points' perspective gain | focal written (error) |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        points, used, points_gain = _points_cells(r).split(" | ")[:3]
        gain = r.get("perspective_gain")
        lines.append(f"| {r['true_focal']:.0f} | {r['focal_landmark_search']:.0f} | "
                     f"{'not checked' if gain is None else f'{gain:.2f}'} | {points} | {used} | {points_gain} | "
                     f"{r['focal']:.0f} ({r['error_pct']:+.1f}%) |")
    for key, name in (("written", "the focal written"), ("landmarks", "the landmark focal"),
                      ("points", "the points' focal")):
        lines.append(f"\ngain of {name} over the three (filmed, not warped): {result[key]['gain']:.2f}")
    return "\n".join(lines)


def detector_perspective(frames: int, work: Path, seed: int = 0) -> dict:
    """The synthetic subject (its motion drawn with ``seed``) filmed at PERSPECTIVE_FOCALS, the camera distance
    scaled with the focal so the face keeps its size: the focal the default ``poses`` stage finds (focal search
    only, over 0.4-2.5 x the true focal) on the true landmarks and on FaceMesh's, the focal measured on the tracked
    head points from FaceMesh's (``points``, whether or not its checks let the stage use it), and how much of the
    change of perspective each follows (:func:`perspective_response`)."""
    found, distances = {"truth": [], "facemesh": [], "points": []}, []
    for focal in PERSPECTIVE_FOCALS:
        spec = filmed_at(focal, num_frames=frames, size=512, seed=seed)
        distances.append(spec.distance)
        name = f"perspective_{focal:.0f}_seed{seed}"
        root = generate(spec, work / name, progress=False)
        layout, truth = DatasetLayout(root), dict(np.load(root / "ground_truth.npz"))
        paths = [layout.frame(i) for i in range(frames)]
        mesh = FaceMesh().detect_files(paths, progress=False)
        masks = region_masks(layout, frames, preset("synctalk").points.region)
        for source, lms in (("truth", truth["landmarks_2d"][..., :2]), ("facemesh", to_68(mesh)[..., :2])):
            res = run_preset("synctalk", paths, masks, mesh, lms, spec, truth, work / f"{name}_{source}",
                             CanonicalFace(), pose_source="landmarks",
                             focal_range=(0.4 * focal, 2.5 * focal, 0.05 * focal),
                             focal_source="landmarks" if source == "truth" else "points")
            found[source].append(res["report"]["focal_landmark_search"])
            if source == "facemesh":
                found["points"].append(points_focal(res["report"]))
        print("perspective", focal, {k: v[-1] for k, v in found.items()}, flush=True)
    return {"seed": seed, "true_focal": list(PERSPECTIVE_FOCALS), "distance_m": [round(d, 3) for d in distances],
            **{source: {"focal": f, **perspective_response(PERSPECTIVE_FOCALS, f)} for source, f in found.items()}}


REAL_KEYS = ("focal", "focal_landmark_search", "focal_interior", "focal_halves", "focal_halves_difference_pct",
             "focal_points", "focal_points_perspective", "focal_points_std_pct", "focal_points_halves",
             "focal_points_halves_difference_pct",
             "focal_points_parts_std_pct", "focal_points_used", "focal_points_rejected", "perspective_points_focals",
             "perspective_points_gain",
             "jitter_landmarks", "jitter_bundle_adjustment", "bundle_adjustment_kept", "bundle_adjustment_rejected",
             "poses_written", "jitter_written", "ba_drift_median_deg", "perspective_focals", "perspective_gain", "elapsed_s")


def real_clips(clips: list[Path], work: Path, runs: Path, check_perspective: bool = False) -> dict:
    """Each clip through ``synctalk preprocess`` with the defaults and the halves check (and with
    ``check_perspective`` the perspective check: how much of a change of perspective FaceMesh follows on the clip);
    a clip the command refuses (no face, no audio, ...) is recorded with its error and the others still run."""
    out = {}
    for clip in clips:
        root = work / clip.stem
        full = preprocess(clip, root, runs / clip.stem, "tracker.check_halves=true",
                          f"tracker.check_perspective={str(check_perspective).lower()}")
        if "error" in full:
            out[clip.stem] = full
            print(clip.stem, "refused:", full["error"], flush=True)
            continue
        report, width = full["poses"], full["frames"]["width"]
        written = report["jitter_written"]["rotation_deg"]
        face_px = full["crop"].get("face_px_output")  # the face detector's box in the dataset's frames
        out[clip.stem] = {**{k: report.get(k) for k in REAL_KEYS},
                          "focal_at_512": round(report["focal"] * 512 / width, 1), "face_px": face_px,
                          "focal_over_face_px": round(report["focal"] / face_px, 2) if face_px else None,
                          "jitter_reduction_pct": round((1 - written / report["jitter_landmarks"]["rotation_deg"]) * 100, 1)}
        print(clip.stem, json.dumps(out[clip.stem]), flush=True)
    done = [c for c in out.values() if "error" not in c]
    if done:
        out["summary"] = {"median_jitter_reduction_pct": float(np.median([c["jitter_reduction_pct"] for c in done])),
                          "all_interior": all(c["focal_interior"] for c in done),
                          "max_halves_difference_pct": max(c["focal_halves_difference_pct"] for c in done),
                          "refused": sorted(name for name, c in out.items() if "error" in c)}
    return out


def _points_cells(c: dict) -> str:
    """The focal measured on the tracked points: value (std %; the parts' std %; halves), used or why not, its
    perspective gain."""
    if c.get("focal_points_perspective") is None:
        return "not measured | | "

    def px(focal):
        return "no focal" if focal is None else f"{focal:.0f}"

    def pct(value):
        return "unmeasured" if value is None else f"{value:.1f}%"

    halves = " / ".join(px(h) for h in c["focal_points_halves"])
    gain, parts = c.get("perspective_points_gain"), c.get("focal_points_parts_std_pct")
    parts = "" if parts is None else f"; parts {pct(parts)}"
    value = px(c["focal_points"])
    if c["focal_points"] is None:
        value += f" (perspective {c['focal_points_perspective']:+.2f})"
    return (f"{value} ({pct(c['focal_points_std_pct'])}{parts}; {halves}) | "
            f"{'yes' if c['focal_points_used'] else 'no: ' + '; '.join(c['focal_points_rejected'])} | "
            f"{'not checked' if gain is None else f'{gain:.2f}'}")


def real_table(real: dict) -> str:
    """The real-clip results as a markdown table, one row per clip, with the stabilizer's checks: an interior focal,
    halves within 10%, written poses no worse than the face-model fit."""
    rows = ["| clip | focal (px at 512) | interior | halves (difference) | rotation jitter, fit -> written (deg) | "
            "written | FaceMesh's perspective gain | points focal (std; parts' std; halves) | used | "
            "points' perspective gain | checks |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in real.items():
        if name == "summary":
            continue
        if "error" in c:
            rows.append(f"| {name} | refused: {c['error']} | | | | | | | | | |")
            continue
        fit, written = c["jitter_landmarks"]["rotation_deg"], c["jitter_written"]["rotation_deg"]
        halves = " / ".join(f"{h:.0f}" for h in c["focal_halves"])
        failed = [what for what, ok in (("range end", c["focal_interior"]),
                                        ("halves > 10%", c["focal_halves_difference_pct"] <= 10),
                                        ("worse poses", written <= fit)) if not ok]
        gain = c.get("perspective_gain")
        if gain is not None:
            focals = " / ".join(f"{f:.0f}" for f in c["perspective_focals"])
            gain = f"{gain:.2f} ({focals} px at x0.7 / 1 / 1.45)"
        rows.append(f"| {name} | {c['focal_at_512']:.0f} | {'yes' if c['focal_interior'] else 'no'} | {halves} "
                    f"({c['focal_halves_difference_pct']:.1f}%) | {fit:.3f} -> {written:.3f} "
                    f"({-c['jitter_reduction_pct']:+.0f}%) | {c['poses_written']} | {gain or 'not checked'} | "
                    f"{_points_cells(c)} | {'ok' if not failed else ', '.join(failed)} |")
    if "summary" in real:
        rows.append(f"\nmedian jitter reduction: {real['summary']['median_jitter_reduction_pct']:.0f}%")
    return "\n".join(rows)


def long_video_dataset(source: Path, minutes: float, root: Path, fps: float = 25.0) -> int:
    """A dataset folder of an ``minutes``-long video made from a preprocessed one: its frames and masks played
    forwards and backwards (links, no copies) and its FaceMesh landmarks likewise. Returns the frame count."""
    src, dst = DatasetLayout(source), DatasetLayout(root)
    mesh = np.load(source / "landmarks_mesh.npy")
    n_src, n = len(mesh), int(round(minutes * 60 * fps))
    cycle = list(range(n_src)) + list(range(n_src - 2, 0, -1))
    order = [cycle[i % len(cycle)] for i in range(n)]
    for i, j in enumerate(order):
        for a, b in ((src.frame(j), dst.frame(i)), (src.head_mask(j), dst.head_mask(i)),
                     (src.face_only_mask(j), dst.face_only_mask(i))):
            b.parent.mkdir(parents=True, exist_ok=True)
            if not b.exists():
                b.symlink_to(a.resolve())
    np.save(root / "landmarks_mesh.npy", mesh[order])
    return n


def long_poses_stage(root: Path) -> dict:
    """Run the default ``poses`` stage (the stabilizer) on a dataset folder in this process: seconds, peak memory."""
    import resource

    mesh = np.load(root / "landmarks_mesh.npy")
    layout, n = DatasetLayout(root), len(mesh)
    opts = preset("synctalk")
    start = time.perf_counter()
    res = stabilize([layout.frame(i) for i in range(n)], region_masks(layout, n, opts.points.region), mesh,
                    to_68(mesh)[..., :2], 512, 512, 25.0, opts, root / "stabilizer", progress=True)
    seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # kB on Linux
    return {"frames": n, "seconds": round(seconds, 1), "peak_memory_gib": round(peak_gib, 2),
            "focal": res["focal"], "poses_written": res["report"]["poses_written"]}


def long_video(clips: list[Path], minutes: float, work: Path) -> dict:
    import subprocess
    import sys

    clip = next((c for c in clips if c.stem == "German_20s"), clips[0])
    source = work / clip.stem
    if not (source / "landmarks_mesh.npy").is_file():
        preprocess(clip, source, work / "runs" / clip.stem)
    root = work / f"long_{clip.stem}"
    frames = long_video_dataset(source, minutes, root)
    print(f"long video: {frames} frames from {clip.stem}; running the poses stage", flush=True)
    child = subprocess.run([sys.executable, __file__, "--poses-stage", str(root)], check=True, capture_output=True,
                           text=True)
    result = json.loads(child.stdout.strip().splitlines()[-1])
    out = {"source": clip.stem, "minutes": minutes, **result,
           "target": "under 30 minutes and 4 GiB on a 2-core CPU"}
    print("long video", json.dumps(out), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--synthetic", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--clips", type=Path, nargs="*", default=sorted(REAL.glob("*.mp4")))
    parser.add_argument("--work", type=Path, default=None, help="keep the generated subject and outputs here")
    parser.add_argument("--perspective-check", action="store_true",
                        help="real clips: also measure how much of a change of perspective FaceMesh follows")
    parser.add_argument("--long-minutes", type=float, default=0.0, help="also time the poses stage of a long video")
    parser.add_argument("--user-focals", action="store_true",
                        help="with --no-synthetic: the subject filmed at 700 / 1350 / 2600 px as a user runs it")
    parser.add_argument("--poses-stage", type=Path, help=argparse.SUPPRESS)  # the child process of --long-minutes
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "stabilizer.json")
    args = parser.parse_args()
    if args.poses_stage:
        print(json.dumps(long_poses_stage(args.poses_stage)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        runs = args.out.with_suffix("")  # the job folders synctalk report reads
        result = {"synthetic": synthetic(args.frames, work, args.presets, runs) if args.synthetic else None,
                  "real": real_clips(args.clips, work, runs, args.perspective_check)}
        if args.user_focals and not args.synthetic:
            result["user_focals"] = user_focals(args.frames, work, runs)
        if args.long_minutes > 0:
            result["long_video"] = long_video(args.clips, args.long_minutes, work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    if result["real"]:
        print(real_table(result["real"]))
    focals = result.get("user_focals") or (result["synthetic"] or {}).get("user_focals")
    if focals:
        print(user_focals_table(focals))
    print(f"wrote {args.out}; compare the entries with: synctalk report {args.out.with_suffix('')}")


if __name__ == "__main__":
    main()
