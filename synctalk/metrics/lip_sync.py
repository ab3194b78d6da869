"""Lip sync measured without SyncNet: the mouth of the renders against the ground truth's, read by the same
face model on both, and a sync test.

The face reader is SyncTalk's Facial Animation Capturer, MediaPipe's Face Landmarker (``face_landmarker.task``):
its jaw and mouth blendshapes (:data:`MOUTH_BLENDSHAPES`) and its brow and eyelid ones
(:data:`UPPER_FACE_BLENDSHAPES`). Without the model file, FaceMesh's mouth opening and width (weight-free) stand in.

* ``mouth_corr``: per mouth coefficient, the Pearson correlation over the clip between render and ground truth,
  averaged with the ground truth's standard deviation as weight (the coefficients that move count);
  ``jaw_corr``: the same for ``jawOpen`` alone; ``mouth_error``: mean absolute difference x100.
* ``aue_upper`` / ``aue_lower`` (with the model): the AU error from the real blendshapes, mean absolute
  difference x100 of the upper-face and of the mouth sets.
* the sync test (:func:`sync_gap`): the same frames rendered with the audio shifted by +-``shift`` must
  match the ground truth's mouth worse than with the true audio. ``sync_gap`` = ``mouth_corr`` with the true
  audio minus its mean with the shifted audio; positive means the mouth follows this audio, 0 means it
  ignores it. ``sync_gap_gt`` is what the shift does to the ground truth itself (1 minus the correlation of
  its mouth with itself ``shift`` frames later), a scale for the gap.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from synctalk.face.blendshape_sets import BLENDSHAPE_NAMES, MOUTH_BLENDSHAPES, UPPER_FACE_BLENDSHAPES
GEOMETRIC_MOUTH = ["mouth_open", "mouth_width"]
MIN_STD = 0.01  # a coefficient whose ground truth varies less than this is not scored for correlation


class FaceReader:
    """Reads face coefficients from clips: the Face Landmarker's blendshapes when ``landmarker`` is a model
    file, else FaceMesh's geometric measures."""

    def __init__(self, landmarker: Path | None):
        self.landmarker = landmarker
        self.source = "face_landmarker" if landmarker else "facemesh geometry"

    def read(self, clip: np.ndarray) -> dict[str, np.ndarray]:
        """(N, H, W, 3) RGB uint8 -> ``mouth`` (N, K) and, with the model, ``upper`` (N, U); NaN rows where no
        face was found."""
        if self.landmarker:
            from synctalk.face.expressions import face_landmarker_blendshapes

            bs = face_landmarker_blendshapes(iter(clip), len(clip), self.landmarker, fps=None, progress=False)
            cols = {n: i for i, n in enumerate(BLENDSHAPE_NAMES)}
            return {"mouth": bs[:, [cols[n] for n in MOUTH_BLENDSHAPES]],
                    "upper": bs[:, [cols[n] for n in UPPER_FACE_BLENDSHAPES]]}
        from synctalk.face.expressions import face_action_measures
        from synctalk.face.landmark_detectors import FaceMesh

        measures = face_action_measures(FaceMesh().detect(iter(clip), len(clip), progress=False))
        return {"mouth": np.stack([measures[k] for k in GEOMETRIC_MOUTH], 1)}

    @property
    def mouth_names(self) -> list[str]:
        return MOUTH_BLENDSHAPES if self.landmarker else GEOMETRIC_MOUTH


def correlation(pred: np.ndarray, gt: np.ndarray) -> float:
    """Pearson correlation per column of (N, K) signals, averaged with the ground truth's standard deviation as
    weight, over the rows where both are finite and the columns where the ground truth varies (NaN if none)."""
    both = np.isfinite(pred).all(1) & np.isfinite(gt).all(1)
    pred, gt = pred[both], gt[both]
    if len(pred) < 3:
        return float("nan")
    std_p, std_g = pred.std(0), gt.std(0)
    live = std_g >= MIN_STD
    if not live.any():
        return float("nan")
    cov = ((pred - pred.mean(0)) * (gt - gt.mean(0))).mean(0)
    corr = np.where(std_p > 1e-9, cov / np.maximum(std_p * std_g, 1e-12), 0.0)
    return float(np.average(corr[live], weights=std_g[live]))


def mouth_agreement(pred: dict, gt: dict, names: list[str]) -> dict[str, float]:
    """``mouth_corr``, ``mouth_error`` (x100) and, for blendshapes, ``jaw_corr`` of read clips
    (:meth:`FaceReader.read`)."""
    p, g = pred["mouth"], gt["mouth"]
    both = np.isfinite(p).all(1) & np.isfinite(g).all(1)
    if not both.any():
        raise ValueError("no frame where the face reader finds a face in both clips")
    out = {"mouth_corr": correlation(p, g), "mouth_error": float(100 * np.abs(p[both] - g[both]).mean()),
           "mouth_face_found": float(both.mean())}
    if "jawOpen" in names:
        j = names.index("jawOpen")
        out["jaw_corr"] = correlation(p[:, [j]], g[:, [j]])
    return out


def blendshape_au_errors(pred: dict, gt: dict) -> dict[str, float]:
    """``aue_upper`` and ``aue_lower``: mean absolute blendshape difference x100 of the upper-face set and of
    the mouth set, over frames with a face in both clips (needs the Face Landmarker's reading)."""
    out = {}
    for key, part in (("aue_upper", "upper"), ("aue_lower", "mouth")):
        p, g = pred[part], gt[part]
        both = np.isfinite(p).all(1) & np.isfinite(g).all(1)
        if both.any():
            out[key] = float(100 * np.abs(p[both] - g[both]).mean())
    return out


def sync_gap(true_corr: float, shifted_corrs: list[float], gt_mouth: np.ndarray, shift: int) -> dict[str, float]:
    """The sync test's numbers from the mouth correlations with the true and the shifted audio.

    Args:
        gt_mouth: (N, K) the ground truth's mouth signals; shift: the audio shift in frames.
    """
    out = {"sync_gap": float(true_corr - np.mean(shifted_corrs)), "mouth_corr_shifted": float(np.mean(shifted_corrs))}
    if shift < len(gt_mouth) - 2:
        out["sync_gap_gt"] = float(1 - correlation(gt_mouth[shift:], gt_mouth[:-shift]))
    return out
