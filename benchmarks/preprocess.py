"""Preprocessing speed and memory.

    python benchmarks/preprocess.py                      # the real clips in ../shared/data/real
    python benchmarks/preprocess.py --long-minutes 5     # also a 5-minute video made by looping a clip

Writes benchmarks/results/preprocess.json: per-stage seconds for every clip, and for the long
video the total time and the peak resident memory of the process (the target is under 4 GiB).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from synctalk.audio import load_audio
from synctalk.data.ingest import IngestOptions, run_ingest
from synctalk.video import VideoWriter

REAL = Path(os.environ.get("SYNCTALK_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "real"))


def stage_seconds(report: dict) -> dict:
    return {stage: r.get("elapsed_s") for stage, r in report.items()}


def looped_video(clip: Path, minutes: float, out: Path) -> Path:
    """A long talking-head video: the clip played forwards and backwards until ``minutes`` are filled."""
    with av.open(str(clip)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    audio = load_audio(clip)
    n = int(minutes * 60 * 25)
    order = np.concatenate([np.arange(len(frames)), np.arange(len(frames))[::-1]])
    reps = int(np.ceil(n / len(frames)))
    sound = np.concatenate([audio if r % 2 == 0 else audio[::-1] for r in range(reps)])[: int(n / 25 * 16000)]
    with VideoWriter(out, 25, sound) as w:
        for i in range(n):
            w.write(frames[order[i % len(order)]])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=Path, nargs="*", default=sorted(REAL.glob("*.mp4")))
    parser.add_argument("--long-minutes", type=float, default=0.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "preprocess.json")
    args = parser.parse_args()
    results = {"benchmark": "preprocess", "cpus": os.cpu_count(), "clips": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for clip in args.clips:
            start = time.perf_counter()
            report = run_ingest(clip, Path(tmp) / clip.stem, IngestOptions(progress=False))
            results["clips"][clip.name] = {"total_s": round(time.perf_counter() - start, 2),
                                           "frames": report["frames"]["frames"], "stages_s": stage_seconds(report),
                                           "rigid_jitter_px": report["landmarks"]["rigid_jitter_px"],
                                           "pose_reprojection_px": report["poses"]["mean_reprojection_error_px"]}
            print(clip.name, results["clips"][clip.name], flush=True)
        if args.long_minutes > 0:
            video = looped_video(args.clips[0], args.long_minutes, Path(tmp) / "long.mp4")
            start = time.perf_counter()
            report = run_ingest(video, Path(tmp) / "long", IngestOptions(progress=True))
            peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            results["long_video"] = {"minutes": args.long_minutes, "frames": report["frames"]["frames"],
                                     "total_s": round(time.perf_counter() - start, 1),
                                     "stages_s": stage_seconds(report), "peak_rss_mib": round(peak_mib)}
            print("long video", results["long_video"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
