"""Head-Sync Stabilizer accuracy and speed.

    python benchmarks/stabilizer.py                  # synthetic subject (truth known) + the real clips
    python benchmarks/stabilizer.py --frames 60 --clips   # a quicker synthetic-only run

Synthetic subject (512 px, focal 1350, +-10 deg yaw), two protocols:

- ``truth_landmarks``: the true 2D landmarks plus 1 px Gaussian noise, and the ``template`` face model
  holding the subject's true neutral shape, with the focal searched on the rigid landmarks (the
  template's expression components come from FaceMesh and do not fit the synthetic expressions). The
  accuracy targets of the stabilizer are stated for this case: it measures the focal search, the
  landmark fit and bundle adjustment, not a landmark detector or a face model's shape error. Every
  tracker preset.
- ``facemesh``: as a user runs it: FaceMesh landmarks and the weight-free ``subject`` face model.

For each: the focal on the grid and after refinement, the pose errors of the landmark fit and of bundle
adjustment (rotation and translation after the alignment of ``pose_errors``: the head frame and the
global scale are not observable) and the time of the whole stabilizer. Real clips (no truth): jitter
before and after bundle adjustment, reprojection errors, time. Writes benchmarks/results/stabilizer.json.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from synctalk.config import config_dir, to_dataclass
from synctalk.config.schema import FaceModelOptions, TrackerConfig
from synctalk.data.ingest import IngestOptions, run_ingest
from synctalk.data.landmarks import detect_mesh, to_68
from synctalk.data.layout import DatasetLayout
from synctalk.data.synthetic import SyntheticSpec, generate
from synctalk.stabilizer.pipeline import StabilizerOptions, pose_errors, region_masks, stabilize

REAL = Path(os.environ.get("SYNCTALK_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "real"))
PRESETS = ("synctalk", "ernerf", "fine50")


def preset(name: str) -> StabilizerOptions:
    tracker = OmegaConf.load(config_dir() / "tracker" / f"{name}.yaml")
    return StabilizerOptions(tracker=to_dataclass(tracker, TrackerConfig))


def noisy_landmarks(truth: dict, seed: int, sigma_px: float = 1.0) -> np.ndarray:
    """(N, 68, 2) true landmarks plus Gaussian noise of ``sigma_px`` per coordinate."""
    clean = truth["landmarks_2d"][..., :2]
    return clean + np.random.default_rng(seed).normal(0, sigma_px, clean.shape)


def run_preset(name: str, paths: list, masks: list, mesh: np.ndarray, lms: np.ndarray, spec: SyntheticSpec,
               truth: dict, work: Path, face_model: FaceModelOptions, focal_landmarks: str = "all",
               pose_source: str | None = None) -> dict:
    opts = preset(name)
    opts.face_model = face_model
    opts.tracker.focal_landmarks = focal_landmarks
    opts.tracker.pose_source = pose_source or opts.tracker.pose_source
    start = time.perf_counter()
    res = stabilize(paths, masks, mesh, lms, spec.size, spec.size, spec.fps, opts, work, progress=False)
    seconds = time.perf_counter() - start
    search = json.loads((work / "focal_search.json").read_text())
    return {"seconds": round(seconds, 1), "focal_grid_best": search["grid_best"], "focal": round(res["focal"], 1),
            "focal_error_pct": round((res["focal"] - spec.focal) / spec.focal * 100, 2),
            "grid_step": opts.tracker.focal.step,
            "landmark_fit": pose_errors(res["c2w_landmarks"], truth["c2w"]),
            "bundle_adjustment": pose_errors(res["c2w"], truth["c2w"]), "report": res["report"]}


def synthetic(frames: int, work: Path, presets: list[str]) -> dict:
    spec = SyntheticSpec(num_frames=frames, size=512, seed=0)
    root = generate(spec, work / "synthetic", progress=True)
    layout = DatasetLayout(root)
    truth = dict(np.load(root / "ground_truth.npz"))
    paths = [layout.frame(i) for i in range(frames)]
    masks = region_masks(layout, frames, preset(presets[0]).points.region)
    mesh = detect_mesh(paths, progress=False)
    noisy = noisy_landmarks(truth, 0)
    out = {"frames": frames, "size": 512, "true_focal": float(truth["focal"]), "truth_landmarks": {}, "facemesh": {}}
    template = FaceModelOptions(backend="template", template=str(root / "face_template.npy"))
    for name in presets:
        out["truth_landmarks"][name] = run_preset(name, paths, masks, mesh, noisy, spec, truth, work / f"truth_{name}",
                                                  template, "rigid")
        print("truth landmarks", name, json.dumps(out["truth_landmarks"][name]), flush=True)
    # the focal's spread over landmark-noise draws (focal search only)
    name = presets[0]
    out["focal_noise_draws"] = {"preset": name, "focal": []}
    for seed in (1, 2, 3):
        draw = run_preset(name, paths, masks, mesh, noisy_landmarks(truth, seed), spec, truth, work / f"draw_{seed}",
                          template, "rigid", pose_source="landmarks")
        out["focal_noise_draws"]["focal"].append(draw["focal"])
    print("focal over noise draws", out["focal_noise_draws"], flush=True)
    out["facemesh"][name] = run_preset(name, paths, masks, mesh, to_68(mesh)[..., :2], spec, truth,
                                       work / f"facemesh_{name}", FaceModelOptions())
    print("facemesh", name, json.dumps(out["facemesh"][name]), flush=True)
    return out


def real_clips(clips: list[Path], work: Path) -> dict:
    out = {}
    for clip in clips:
        report = run_ingest(clip, work / clip.stem, IngestOptions(progress=False))
        out[clip.stem] = report["poses"]
        print(clip.stem, json.dumps(report["poses"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--synthetic", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--clips", type=Path, nargs="*", default=sorted(REAL.glob("*.mp4")))
    parser.add_argument("--work", type=Path, default=None, help="keep the generated subject and outputs here")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "stabilizer.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        result = {"synthetic": synthetic(args.frames, work, args.presets) if args.synthetic else None,
                  "real": real_clips(args.clips, work)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
