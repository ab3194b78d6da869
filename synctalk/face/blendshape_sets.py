"""The blendshape layout of ``bs.npy`` and the named subsets used to condition the eyes.

``bs.npy`` holds (N, 52) scores in MediaPipe Face Landmarker order, column 0 being
``_neutral`` (kept so column numbers equal MediaPipe category indices; it is never used
as a feature).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.signal import savgol_filter

from synctalk.errors import UserError

BLENDSHAPE_NAMES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft",
    "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft",
    "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft",
    "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
)
AU45 = "AU45"  # OpenFace blink intensity (au.csv), the alternative to blendshapes
#: the jaw and mouth blendshapes (what lip sync moves) and the brow and eyelid ones (the upper face)
MOUTH_BLENDSHAPES = [n for n in BLENDSHAPE_NAMES if n.startswith(("jaw", "mouth"))]
UPPER_FACE_BLENDSHAPES = [n for n in BLENDSHAPE_NAMES if n.startswith(("brow", "eyeBlink", "eyeSquint", "eyeWide"))]


def column_indices(names: list[str]) -> list[int]:
    unknown = [n for n in names if n not in BLENDSHAPE_NAMES]
    if unknown:
        raise UserError(f"unknown blendshape name(s) {unknown}; valid names are the MediaPipe categories, e.g. eyeBlinkLeft")
    return [BLENDSHAPE_NAMES.index(n) for n in names]


def smooth(values: np.ndarray, window: int, order: int) -> np.ndarray:
    """Savitzky-Golay smoothing over time of (N, K) curves; window 0 disables it."""
    if window <= 0 or len(values) < window:
        return values
    return savgol_filter(values, window, order, axis=0).astype(np.float32)


def load_eye_features(root: Path, names: list[str], smooth_window: int = 5, smooth_order: int = 3) -> np.ndarray:
    """The per-frame upper-face condition of a dataset.

    Args:
        root: dataset folder with ``bs.npy`` (or ``au.csv`` when ``names == ["AU45"]``).
        names: blendshape names of the selected set, or ``["AU45"]``.
    Returns:
        (N, len(names)) float32 in [0, 1].
    """
    if list(names) == [AU45]:
        path = root / "au.csv"
        if not path.is_file():
            raise UserError(f"blendshapes=au45 needs {path} (OpenFace AU45 intensities)")
        header = [h.strip() for h in path.read_text().splitlines()[0].split(",")]
        if "AU45_r" not in header:
            raise UserError(f"{path} has no AU45_r column (columns: {header})")
        au = np.loadtxt(path, delimiter=",", skiprows=1, usecols=header.index("AU45_r"), ndmin=1)
        values = (np.clip(au, 0.0, 2.0) / 2.0)[:, None]
    else:
        path = root / "bs.npy"
        if not path.is_file():
            raise UserError(f"{path} not found: the blendshape stage of 'synctalk preprocess' writes it")
        bs = np.load(path)
        if bs.ndim != 2 or bs.shape[1] != len(BLENDSHAPE_NAMES):
            raise UserError(f"{path} has shape {bs.shape}, expected (frames, {len(BLENDSHAPE_NAMES)})")
        values = bs[:, column_indices(list(names))]
    return np.clip(smooth(values.astype(np.float32), smooth_window, smooth_order), 0.0, 1.0)


def load_mouth_targets(root: Path) -> np.ndarray | None:
    """(N, len(MOUTH_BLENDSHAPES)) mouth blendshapes of a dataset's ``bs.npy`` in [0, 1], or None without one."""
    path = root / "bs.npy"
    if not path.is_file():
        return None
    bs = np.load(path)
    if bs.ndim != 2 or bs.shape[1] != len(BLENDSHAPE_NAMES):
        raise UserError(f"{path} has shape {bs.shape}, expected (frames, {len(BLENDSHAPE_NAMES)})")
    return np.clip(np.nan_to_num(bs[:, column_indices(MOUTH_BLENDSHAPES)].astype(np.float32)), 0.0, 1.0)
