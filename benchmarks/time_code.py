"""Does an audio feature carry the time in the clip, and did a trained head learn the footage's mouth by it?

    python benchmarks/time_code.py --clips WDA_KatieHill_000 May_13s
    python benchmarks/time_code.py --runs benchmarks/results/lip_sync_runs/WDA_KatieHill_000_whisper_s42

A feature that also encodes where in the clip a frame is (Whisper's encoder adds a position code to every state)
lets a head learn each training frame's mouth by its time and replay it for any audio that is as long. Two
readings, each against white noise of the clip's length, whose features carry nothing of the mouth but the time:

- ``--clips`` (datasets in ``--data-dir``, their ``aud.wav``): for each Whisper setting (``context_s`` 2 s: every
  frame encoded alone; null: the whole audio at once), the cosine of the clip's per-frame features with the
  noise's at the same frame, each taken as its departure from its own mean over the clip (0: nothing in common);
- ``--runs`` (trained runs with the mouth head of ``model.loss.audio_mouth_weight``): the ``jawOpen`` the run's
  audio branch reads from the noise's features (with the run's own ``audio_encoder`` settings) against the
  footage's ``jawOpen`` at the same frames, on the training frames and on the held-out ones, beside the same
  reading from the clip's own audio.

Writes ``--out`` (default benchmarks/results/time_code.json) and prints one line per clip and run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from synctalk.audio.encoders import AudioConfig, compute_features  # noqa: E402
from synctalk.audio.features import SAMPLE_RATE, frames_for_audio, load_audio  # noqa: E402
from synctalk.io import write_json  # noqa: E402

SETTINGS = {"context_s=2": AudioConfig("whisper", 384, 8, context_s=2.0), "whole audio": AudioConfig("whisper", 384, 8)}


def white_noise(num_samples: int, seed: int = 0) -> np.ndarray:
    """(num_samples,) float32 Gaussian noise at -26 dB full scale."""
    return (0.05 * np.random.default_rng(seed).standard_normal(num_samples)).astype(np.float32)


def aligned_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of the cosine between (N, window, D) features ``a`` and ``b`` at the same frame, each
    frame's window averaged and taken as its departure from the clip's mean."""
    a, b = a.mean(1) - a.mean((0, 1)), b.mean(1) - b.mean((0, 1))
    return float(np.mean((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)))


def clip_row(root: Path, fps: float) -> dict:
    samples = load_audio(root / "aud.wav")
    n, noise = frames_for_audio(samples, fps), white_noise(len(samples))
    row = {"clip": root.name, "frames": n}
    for name, cfg in SETTINGS.items():
        row[f"cosine with noise, {name}"] = aligned_cosine(compute_features(cfg, samples, n, fps, progress=False),
                                                           compute_features(cfg, noise, n, fps, progress=False))
    return row


def run_row(run: Path) -> dict:
    from synctalk.apps.render import audio_branch_opening
    from synctalk.data.layout import split_train_val
    from synctalk.metrics.lip_sync import footage_jaw_open
    from synctalk.runs import load_run

    cfg, system = load_run(run / "checkpoints" / "last.ckpt")
    root = Path(cfg.data.root)
    jaw = footage_jaw_open(root)
    if jaw is None:
        raise SystemExit(f"{root} has no bs.npy of the Face Landmarker: the footage's jawOpen is needed")
    samples = load_audio(root / "aud.wav")
    n = min(len(jaw), frames_for_audio(samples, float(cfg.data.fps)))
    train, held_out = split_train_val(n)
    row = {"run": str(run), "context_s": cfg.audio_encoder.get("context_s")}
    for name, audio in (("own audio", samples), ("noise", white_noise(len(samples)))):
        features = torch.from_numpy(compute_features(cfg.audio_encoder, audio, n, float(cfg.data.fps), progress=False))
        opening = audio_branch_opening(system, features)
        if opening is None:
            raise SystemExit(f"{run} has no mouth head (model.loss.audio_mouth_weight=0): nothing to read")
        for split, frames in (("train", train), ("held-out", held_out)):
            row[f"{name} vs footage, {split}"] = float(np.corrcoef(opening[frames], jaw[frames])[0, 1])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", nargs="*", default=[])
    parser.add_argument("--data-dir", type=Path, default=REPO / "benchmarks" / "results" / "lip_sync_data")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--runs", nargs="*", type=Path, default=[])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "time_code.json")
    args = parser.parse_args()
    if not args.clips and not args.runs:
        parser.error("name --clips, --runs or both")
    torch.set_grad_enabled(False)
    result = {"noise": "white, -26 dB full scale, seed 0", "sample_rate": SAMPLE_RATE, "clips": [], "runs": []}
    for clip in args.clips:
        result["clips"].append(clip_row(args.data_dir / clip, args.fps))
        print(" | ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in result["clips"][-1].items()))
    for run in args.runs:
        result["runs"].append(run_row(run))
        print(" | ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in result["runs"][-1].items()))
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
