"""Head-Sync Stabilizer accuracy and speed.

    python benchmarks/stabilizer.py                  # synthetic subject (truth known) + the real clips
    python benchmarks/stabilizer.py --frames 60      # a quicker synthetic run

Synthetic subject (512 px, focal 1350, +-10 deg yaw): for every tracker preset, the focal found on
the grid and after refinement, and the pose errors of the landmark fit and of bundle adjustment
(median relative rotation error in degrees against the first frame, median translation error in
% of the camera distance), with the time of the whole stabilizer. Real clips (no truth): jitter
before and after bundle adjustment, reprojection errors, time. Writes
benchmarks/results/stabilizer.json.
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
from synctalk.config.schema import TrackerConfig
from synctalk.data.ingest import IngestOptions, run_ingest
from synctalk.data.landmarks import detect_mesh, to_68
from synctalk.data.layout import DatasetLayout
from synctalk.data.synthetic import SyntheticSpec, generate
from synctalk.stabilizer.pipeline import StabilizerOptions, pose_errors, stabilize

REAL = Path(os.environ.get("SYNCTALK_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "real"))
PRESETS = ("synctalk", "ernerf", "fine50")


def preset(name: str) -> StabilizerOptions:
    tracker = OmegaConf.load(config_dir() / "tracker" / f"{name}.yaml")
    return StabilizerOptions(tracker=to_dataclass(tracker, TrackerConfig))


def synthetic(frames: int, work: Path) -> dict:
    spec = SyntheticSpec(num_frames=frames, size=512, seed=0)
    root = generate(spec, work / "synthetic", progress=True)
    layout = DatasetLayout(root)
    truth = np.load(root / "ground_truth.npz")
    paths = [layout.frame(i) for i in range(frames)]
    mesh = detect_mesh(paths, progress=False)
    lms = to_68(mesh)[..., :2]
    out = {"frames": frames, "size": 512, "true_focal": float(truth["focal"]), "landmarks": "MediaPipe FaceMesh",
           "presets": {}}
    for name in PRESETS:
        start = time.perf_counter()
        res = stabilize(paths, [layout.head_mask(i) for i in range(frames)], mesh, lms, 512, 512, spec.fps,
                        preset(name), work / f"stab_{name}", progress=False)
        seconds = time.perf_counter() - start
        search = json.loads((work / f"stab_{name}" / "focal_search.json").read_text())
        out["presets"][name] = {
            "seconds": round(seconds, 1), "focal_grid_best": search["grid_best"], "focal": round(res["focal"], 1),
            "focal_error_pct": round(abs(res["focal"] - spec.focal) / spec.focal * 100, 2),
            "landmark_fit": pose_errors(res["c2w_landmarks"], truth["c2w"], spec.distance),
            "bundle_adjustment": pose_errors(res["c2w"], truth["c2w"], spec.distance),
            "report": res["report"]}
        print(name, json.dumps(out["presets"][name]))
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
    parser.add_argument("--clips", type=Path, nargs="*", default=sorted(REAL.glob("*.mp4")))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "stabilizer.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {"synthetic": synthetic(args.frames, Path(tmp)), "real": real_clips(args.clips, Path(tmp))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
