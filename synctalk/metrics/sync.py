"""Lip-sync error (LSE-C, LSE-D) with the SyncNet model of "Out of time: automated lip sync in the wild".

The network is the released ``syncnet_v2.model`` architecture (module names kept, so the released
state dict loads by name): an audio tower over 13 MFCCs x 20 steps (0.2 s at 100 Hz) and a lip tower
over 5 face crops of 224 x 224 (BGR, 0-255). LSE-D is the mean embedding distance at the best
audio-video offset within +-``vshift`` frames; LSE-C is the median distance over the offsets minus that
minimum (higher = more confident sync). The weights are read from a configured file; nothing is
downloaded.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

from synctalk import external

SYNCNET_FILE = "syncnet_v2.model"
SYNCNET_URL = "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model"
CROP_SIZE = 224
FRAMES_PER_WINDOW = 5
MFCC_PER_FRAME = 4  # 100 Hz MFCC at 25 fps


def _block(conv: nn.Module, norm: nn.Module, pool: nn.Module | None = None) -> list[nn.Module]:
    return [conv, norm, nn.ReLU(inplace=True)] + ([pool] if pool is not None else [])


class SyncNet(nn.Module):
    """Audio and lip embedding towers.

    ``forward_aud``: (B, 1, 13, 20) MFCC -> (B, 1024). ``forward_lip``: (B, 3, 5, 224, 224) BGR 0-255 -> (B, 1024).
    """

    def __init__(self, embedding: int = 1024):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_block(nn.Conv2d(1, 64, 3, padding=1), nn.BatchNorm2d(64), nn.MaxPool2d(1, 1)),
            *_block(nn.Conv2d(64, 192, 3, padding=1), nn.BatchNorm2d(192), nn.MaxPool2d(3, (1, 2))),
            *_block(nn.Conv2d(192, 384, 3, padding=1), nn.BatchNorm2d(384)),
            *_block(nn.Conv2d(384, 256, 3, padding=1), nn.BatchNorm2d(256)),
            *_block(nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256), nn.MaxPool2d(3, 2)),
            *_block(nn.Conv2d(256, 512, (5, 4)), nn.BatchNorm2d(512)),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding))
        self.netcnnlip = nn.Sequential(
            *_block(nn.Conv3d(3, 96, (5, 7, 7), (1, 2, 2)), nn.BatchNorm3d(96), nn.MaxPool3d((1, 3, 3), (1, 2, 2))),
            *_block(nn.Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), nn.BatchNorm3d(256),
                    nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))),
            *_block(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_block(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_block(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256),
                    nn.MaxPool3d((1, 3, 3), (1, 2, 2))),
            *_block(nn.Conv3d(256, 512, (1, 6, 6)), nn.BatchNorm3d(512)),
        )

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, crops: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.netcnnlip(crops).flatten(1))


def missing_syncnet_message(config_key: str) -> str:
    return f"LSE needs the SyncNet weights: download {SYNCNET_URL} and set {config_key}=<path to {SYNCNET_FILE}>"


def load_syncnet(path: str, config_key: str) -> SyncNet:
    """The eval-mode SyncNet with the weights of ``path`` (a state dict with the released key names)."""
    return external.load_weights(SyncNet(), path, "SyncNet weights", config_key,
                                 f"a SyncNet state dict ({SYNCNET_FILE})").eval().requires_grad_(False)


def mfcc(audio: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """(13, T) MFCCs at 100 Hz, computed as the SyncNet tools compute them (python_speech_features defaults)."""
    import python_speech_features

    return python_speech_features.mfcc(audio, sample_rate).T.astype(np.float32)


def face_crop_boxes(landmarks: np.ndarray, scale: float = 0.4) -> np.ndarray:
    """Square crops around the face as the SyncNet tools cut them: the face box widened by ``scale`` on each
    side and shifted down so the mouth and chin are well inside.

    Args:
        landmarks: (T, 68, 2) pixel landmarks.
    Returns:
        (T, 4) integer boxes x0, y0, x1, y1 (may extend past the image; crops are padded).
    """
    lo, hi = landmarks.min(1), landmarks.max(1)
    centre = (lo + hi) / 2
    half = (hi - lo).max(1) / 2 * (1 + scale)
    centre[:, 1] += half * scale / 2
    return np.round(np.stack([centre[:, 0] - half, centre[:, 1] - half, centre[:, 0] + half, centre[:, 1] + half], 1)
                    ).astype(int)


def crop_faces(frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) RGB uint8 frames -> (T, 224, 224, 3) BGR uint8 crops (edge pixels repeated outside the frame)."""
    out = np.empty((len(frames), CROP_SIZE, CROP_SIZE, 3), np.uint8)
    for i, (frame, (x0, y0, x1, y1)) in enumerate(zip(frames, boxes)):
        pad = max(0, -x0, -y0, x1 - frame.shape[1], y1 - frame.shape[0])
        padded = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else frame
        crop = padded[y0 + pad:y1 + pad, x0 + pad:x1 + pad]
        out[i] = cv2.resize(crop, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA)[..., ::-1]
    return out


def offset_distances(lip: torch.Tensor, aud: torch.Tensor, vshift: int) -> torch.Tensor:
    """Embedding distance of every lip window to the audio windows shifted by -vshift..+vshift.

    Args:
        lip, aud: (N, D) embeddings of the same N windows.
    Returns:
        (N, 2 * vshift + 1): entry [i, k] compares lip window i with audio window i + k - vshift
        (audio outside the clip is zero-padded).
    """
    padded = torch.nn.functional.pad(aud, (0, 0, vshift, vshift))
    windows = padded.unfold(0, 2 * vshift + 1, 1).permute(0, 2, 1)  # (N, 2v+1, D)
    return torch.nn.functional.pairwise_distance(lip[:, None, :].expand_as(windows), windows)


def lip_sync_error(model: SyncNet, crops: np.ndarray, audio: np.ndarray, vshift: int = 15, batch: int = 16
                   ) -> dict[str, float]:
    """LSE-D, LSE-C and the best offset of a face video against its audio.

    Args:
        crops: (T, 224, 224, 3) BGR uint8 face crops at 25 fps (see :func:`crop_faces`).
        audio: 16 kHz mono samples of the same clip.
    Returns:
        ``{"lse_d", "lse_c", "offset"}``; offset in frames as the SyncNet tools report it (negative when
        each lip window matches later audio).
    """
    features = mfcc(audio)
    windows = min(len(crops), features.shape[1] // MFCC_PER_FRAME) - FRAMES_PER_WINDOW + 1
    if windows < 1:
        raise ValueError(f"LSE needs at least {FRAMES_PER_WINDOW} frames with audio, got {len(crops)}")
    video = torch.from_numpy(crops).float().permute(3, 0, 1, 2)  # (3, T, 224, 224)
    cc = torch.from_numpy(features)
    lips, auds = [], []
    with torch.no_grad():
        for start in range(0, windows, batch):
            idx = range(start, min(windows, start + batch))
            lips.append(model.forward_lip(torch.stack([video[:, i:i + FRAMES_PER_WINDOW] for i in idx])))
            auds.append(model.forward_aud(torch.stack([
                cc[None, :, i * MFCC_PER_FRAME:(i + FRAMES_PER_WINDOW) * MFCC_PER_FRAME] for i in idx])))
    dists = offset_distances(torch.cat(lips), torch.cat(auds), vshift).mean(0)
    best = int(torch.argmin(dists))
    return {"lse_d": float(dists[best]), "lse_c": float(dists.median() - dists[best]), "offset": vshift - best}
