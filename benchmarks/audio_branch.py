"""How well the head's audio branch alone learns a clip's mouth: the upper bound of what the audio can drive.

    python benchmarks/audio_branch.py <dataset> [<dataset> ...]           # mel, 3 seeds each
    python benchmarks/audio_branch.py <dataset> --audio phones --noise 0.3
    python benchmarks/audio_branch.py <dataset> --folds 5                    # + the whole clip, cross-validated

The head's own audio modules (:class:`~synctalk.models.head_nerf.AudioNet`, the temporal smoother
:class:`~synctalk.models.head_nerf.AudioAttNet` and a linear mouth head, as ``model.loss.audio_mouth_weight``
trains them) are fitted, without any rendering, to the mouth blendshapes of the dataset's training frames
(``bs.npy``, the Face Landmarker's reading) and scored on its held-out frames with the lip-sync metrics'
``mouth_corr``. A head cannot follow the held-out audio better than its audio branch reads the mouth from it
unaided, so this says how much of ``mouth_corr`` a clip's speech makes learnable, in seconds instead of a
training run. ``--noise``: Gaussian noise on the features during fitting, as a fraction of their spread.
``--folds K``: also every frame of the clip read by a branch fitted without it (K contiguous folds), a steadier
figure than the held-out tail of 19-31 frames.

Writes ``--out`` (default benchmarks/results/audio_branch.json) and prints one line per dataset.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from synctalk.data.datamodule import SubjectFrames  # noqa: E402
from synctalk.io import write_json  # noqa: E402
from synctalk.metrics.lip_sync import correlation  # noqa: E402
from synctalk.models.head_nerf import AudioAttNet, AudioNet  # noqa: E402


class AudioBranch(torch.nn.Module):
    """Audio windows of neighbouring frames (B, smooth, window, dim) -> mouth blendshapes (B, K), as the head
    computes them, a batch at a time."""

    def __init__(self, in_dim: int, window: int, mouth_dim: int, smooth: int = 8, audio_dim: int = 32):
        super().__init__()
        self.audio_net = AudioNet(in_dim, window, audio_dim)
        self.smoother = AudioAttNet(audio_dim, smooth)
        self.mouth_head = torch.nn.Linear(audio_dim, mouth_dim)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        b, t = audio.shape[:2]
        embeddings = self.audio_net(audio.flatten(0, 1)).view(b, t, -1)  # (B, smooth, audio_dim)
        return self.mouth_head(self.smoother(embeddings))


def split_data(root: Path, audio: str, smooth: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per split: the frames' audio contexts (N, smooth, window, dim) and mouth blendshapes (N, K)."""
    out = {}
    for split in ("train", "val"):
        frames = SubjectFrames(root, split, audio, ["eyeBlinkLeft"], downscale=8)
        if frames.mouth is None:
            raise SystemExit(f"{root} has no bs.npy (mouth blendshapes): preprocess it with the Face Landmarker")
        out[split] = (torch.stack([frames.audio_context(k, smooth) for k in range(len(frames))]), frames.mouth)
    return out


def fit(x: torch.Tensor, y: torch.Tensor, seed: int, steps: int, noise: float, smooth: int) -> AudioBranch:
    """The branch fitted to audio contexts ``x`` (N, smooth, window, dim) and mouth blendshapes ``y`` (N, K)."""
    torch.manual_seed(seed)
    branch = AudioBranch(x.shape[-1], x.shape[-2], y.shape[1], smooth)
    optimizer = torch.optim.AdamW(branch.parameters(), lr=1e-3, weight_decay=0.0)
    spread = x.std()
    for _ in range(steps):
        pick = torch.randint(0, len(x), (32,))
        audio = x[pick] + noise * spread * torch.randn_like(x[pick]) if noise else x[pick]
        loss = torch.nn.functional.mse_loss(branch(audio), y[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return branch


def fit_and_score(data: dict, seed: int, steps: int, noise: float, smooth: int) -> tuple[float, float]:
    """``mouth_corr`` of the fitted branch on the held-out and on the training frames."""
    (x, y), (xv, yv) = data["train"], data["val"]
    branch = fit(x, y, seed, steps, noise, smooth)
    with torch.no_grad():
        return correlation(branch(xv).numpy(), yv.numpy()), correlation(branch(x).numpy(), y.numpy())


def cross_validated(data: dict, seed: int, steps: int, noise: float, smooth: int, folds: int) -> float:
    """``mouth_corr`` over every frame of the clip, each frame read by a branch fitted without its fold (``folds``
    contiguous runs of frames in time order; ``smooth`` frames either side of a fold also left out, so that no
    audio window it sees was trained on): the whole clip's reading, not only its last tenth's."""
    x = torch.cat([data["train"][0], data["val"][0]])  # the training frames, then the held-out tail: time order
    y = torch.cat([data["train"][1], data["val"][1]])
    n, read = len(x), np.zeros(tuple(y.shape), np.float32)
    for k in range(folds):
        lo, hi = k * n // folds, (k + 1) * n // folds
        keep = np.r_[0:max(lo - smooth, 0), min(hi + smooth, n):n]
        branch = fit(x[keep], y[keep], seed + 1000 * k, steps, noise, smooth)
        with torch.no_grad():
            read[lo:hi] = branch(x[lo:hi]).numpy()
    return correlation(read, y.numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--audio", default="mel", help="the audio features (aud_<name>.npy) of the datasets")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--noise", type=float, default=0.0)
    parser.add_argument("--smooth", type=int, default=8, help="frames mixed by the smoother (model.net.smooth_frames)")
    parser.add_argument("--folds", type=int, default=0,
                        help="also read the whole clip by cross-validation over this many contiguous folds")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "audio_branch.json")
    args = parser.parse_args()
    rows = []
    for root in args.datasets:
        data = split_data(root, args.audio, args.smooth)
        scores = [fit_and_score(data, s, args.steps, args.noise, args.smooth) for s in args.seeds]
        row = {"dataset": root.name, "train_frames": len(data["train"][1]), "held_out_frames": len(data["val"][1]),
               "held_out_mouth_corr": [s[0] for s in scores], "train_mouth_corr": [s[1] for s in scores]}
        line = ""
        if args.folds:
            row["folds"] = args.folds
            row["cross_validated_mouth_corr"] = [cross_validated(data, s, args.steps, args.noise, args.smooth,
                                                                 args.folds) for s in args.seeds]
            line = (f", whole clip in {args.folds} folds {np.mean(row['cross_validated_mouth_corr']):.2f} "
                    f"({', '.join(f'{v:.2f}' for v in row['cross_validated_mouth_corr'])})")
        rows.append(row)
        print(f"{root.name}: held-out mouth_corr {np.mean(row['held_out_mouth_corr']):.2f} "
              f"({', '.join(f'{v:.2f}' for v in row['held_out_mouth_corr'])}), training frames "
              f"{np.mean(row['train_mouth_corr']):.2f}{line}", flush=True)
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True).stdout.strip()
    write_json(args.out, {"command": " ".join(sys.argv), "revision": revision, "audio": args.audio,
                          "noise": args.noise, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
