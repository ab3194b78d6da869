"""How much of the mouth each audio feature carries, before any head is trained: a linear read-out.

    python benchmarks/audio_features.py                         # every real clip, every encoder
    python benchmarks/audio_features.py --encoders mel phones --clips May_13s German_20s
    python benchmarks/audio_features.py --encoders whisper --shifts 8    # is any clip's sound offset from its picture?

For every clip in ``--real-data``: the Face Landmarker's jaw and mouth blendshapes on every frame (the judge of
the lip-sync metrics), and each encoder's per-frame audio window (``audio_encoder=<name>``'s features, computed as
preprocessing computes them). A ridge regression from the flattened window to the blendshapes is then scored with
the lip-sync metrics' ``mouth_corr`` (the per-coefficient correlation, weighted by the coefficient's spread):

- ``within``: fitted on the clip's first 75% of frames, scored on the last 25% (what one clip's speech teaches
  about its own later speech, as a head trained on that clip must learn it);
- ``cross``: fitted on all the other clips, scored on this whole clip (a speaker it never saw);
- with ``--shifts K``, ``within_shift<s>`` for s in -K..K: the window of frame t + s paired with the mouth of frame
  t, fitted and scored over five contiguous blocks, each held out once. A clip whose sound is late or early against
  its picture (an audio-video offset) reads best away from s = 0; speech's own lead of the lips over the sound is
  a frame or two.

A read-out is not a trained head: it says which features make the mouth easy to learn, not what a head makes of
them. Needs ``face_landmarker.task`` (``--face-landmarker``, default ``$SYNCTALK_WEIGHTS/face_landmarker.task``).
Writes benchmarks/results/audio_features.json and prints the table.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from synctalk.audio.encoders import AudioConfig, compute_features  # noqa: E402
from synctalk.audio.features import load_audio  # noqa: E402
from synctalk.io import write_json  # noqa: E402
from synctalk.metrics.lip_sync import FaceReader, audio_mouth_readout, correlation, ridge  # noqa: E402
from synctalk.stages.source import resampled_frames, upright_bgr  # noqa: E402

CLIPS = ("WDA_KatieHill_000", "WDA_BobMenendez_000", "RD_Radio34_000", "May_13s", "German_20s", "portrait_1080x1920")
ENCODERS = {"mel": AudioConfig("mel", 80, 16), "phones": AudioConfig("phones", 15, 16),
            "speech_embedding": AudioConfig("speech_embedding", 96, 8),
            "whisper": AudioConfig("whisper", 384, 8, context_s=2.0),  # as conf/audio_encoder/whisper.yaml
            "whisper_whole_audio": AudioConfig("whisper", 384, 8)}  # context_s null: the runs before it existed
FPS = 25.0
READ_SIZE = 720  # frames are read by the Face Landmarker at most this many pixels on their longer side


def clip_frames(video: Path) -> np.ndarray:
    """The video's frames at 25 fps, upright, RGB, shrunk to at most READ_SIZE px: (N, H, W, 3) uint8."""
    import cv2

    frames = []
    for _, frame in resampled_frames(video, FPS):
        rgb = upright_bgr(frame)[..., ::-1]
        scale = READ_SIZE / max(rgb.shape[:2])
        if scale < 1:
            rgb = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)),
                             interpolation=cv2.INTER_AREA)
        frames.append(np.ascontiguousarray(rgb))
    return np.stack(frames)


def shifted_within(x: np.ndarray, mouth: np.ndarray, strength: float, shifts: range) -> dict:
    """The within-clip read-out (:func:`synctalk.metrics.lip_sync.audio_mouth_readout`: five contiguous blocks,
    each held out once) with the audio window of frame t + s paired with the mouth of frame t, for each shift s in
    frames (positive: the sound after the picture). x (N, D) every frame's window; mouth (N, K), NaN where no face
    was read. Returns {s: mouth_corr}."""
    n, out = len(x), {}
    for s in shifts:
        t = np.arange(max(0, -s), min(n, n - s))
        out[s] = audio_mouth_readout(x[t + s], mouth[t], strength=strength)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", nargs="+", default=list(CLIPS))
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    parser.add_argument("--real-data", type=Path,
                        default=Path(os.environ.get("SYNCTALK_REAL_DATA", REPO.parent / "shared" / "data" / "real")))
    parser.add_argument("--face-landmarker", type=Path, default=Path(os.environ.get(
        "SYNCTALK_WEIGHTS", REPO.parent / "shared" / "weights")) / "face_landmarker.task")
    parser.add_argument("--strength", type=float, default=1000.0, help="ridge penalty on standardised features")
    parser.add_argument("--shifts", type=int, default=0,
                        help="also the within read-out with the audio shifted by -K..K frames (an offset check)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "audio_features.json")
    args = parser.parse_args()
    if not args.face_landmarker.is_file():
        raise SystemExit(f"{args.face_landmarker} not found (set --face-landmarker or $SYNCTALK_WEIGHTS)")

    reader = FaceReader(args.face_landmarker)
    data = {}
    for clip in args.clips:
        video = args.real_data / f"{clip}.mp4"
        frames = clip_frames(video)
        mouth = reader.read(frames)["mouth"]
        samples = load_audio(video)
        feats = {e: compute_features(ENCODERS[e], samples, len(frames), FPS, progress=False).reshape(len(frames), -1)
                 for e in args.encoders}
        face = np.isfinite(mouth).all(1)
        data[clip] = {"mouth": mouth[face], **{e: f[face].astype(np.float64) for e, f in feats.items()}}
        if args.shifts:
            data[clip]["shifted"] = {e: shifted_within(f.astype(np.float64), mouth, args.strength,
                                                       range(-args.shifts, args.shifts + 1)) for e, f in feats.items()}
        print(f"{clip}: {len(frames)} frames, a face in {face.mean():.0%}", flush=True)

    rows = []
    for clip in args.clips:
        mouth = data[clip]["mouth"]
        split = int(len(mouth) * 0.75)
        row = {"clip": clip, "frames": len(mouth)}
        for e in args.encoders:
            x = data[clip][e]
            row[f"{e}/within"] = correlation(ridge(x[:split], mouth[:split], args.strength)(x[split:]), mouth[split:])
            others = [c for c in args.clips if c != clip]
            if others:
                fit = ridge(np.concatenate([data[c][e] for c in others]),
                            np.concatenate([data[c]["mouth"] for c in others]), args.strength)
                row[f"{e}/cross"] = correlation(fit(x), mouth)
            if args.shifts:
                shifted = data[clip]["shifted"][e]
                row.update({f"{e}/within_shift{s:+d}": r for s, r in shifted.items()})
                row[f"{e}/best_shift"] = max(shifted, key=shifted.get)
        rows.append(row)
        print(" | ".join([clip] + [f"{k} {v:.2f}" for k, v in row.items() if "/" in k]), flush=True)
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True).stdout.strip()
    medians = {k: float(np.median([r[k] for r in rows])) for k in rows[0] if "/" in k}
    write_json(args.out, {"command": " ".join(sys.argv), "revision": revision, "strength": args.strength,
                          "clips": rows, "median": medians})
    print("median: " + ", ".join(f"{k} {v:.2f}" for k, v in medians.items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
