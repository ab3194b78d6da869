"""FID with torchmetrics (InceptionV3 pool features of torch-fidelity), the Inception weights read from a file.

The weights are torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` (the TensorFlow FID
Inception ported to PyTorch); they are taken from the configured path or from the torch hub cache where
torch-fidelity keeps them, and never downloaded here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from synctalk.errors import UserError

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"


def find_inception(path: str | None) -> str | None:
    """The configured Inception weights, else the torch hub cache's copy, else None."""
    if path:
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return str(cached) if cached.is_file() else None


def missing_inception_message(config_key: str) -> str:
    return f"FID needs the Inception weights: download {INCEPTION_URL} and set {config_key}=<path to {INCEPTION_FILE}>"


def load_fid(weights: str, config_key: str):
    """torchmetrics' FID (2048-d pool features) with the Inception weights of ``weights``."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if not Path(weights).is_file():
        raise UserError(f"Inception weights not found at {weights} (set {config_key})")
    try:
        fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=weights)
    except RuntimeError as e:
        raise UserError(f"{weights} is not torch-fidelity's FID Inception state dict: "
                        f"{str(e).splitlines()[0]}") from None
    fid.set_dtype(torch.float64)
    return fid


def frechet_inception_distance(fid, real: np.ndarray, fake: np.ndarray, batch: int = 16) -> float:
    """FID between two sets of (N, H, W, 3) RGB uint8 frames (N >= 2 each), with a metric from :func:`load_fid`
    (reset first, so one loaded metric serves many comparisons)."""
    fid.reset()
    for images, is_real in ((real, True), (fake, False)):
        for start in range(0, len(images), batch):
            fid.update(torch.from_numpy(images[start:start + batch]).permute(0, 3, 1, 2).contiguous(), real=is_real)
    return float(fid.compute())
