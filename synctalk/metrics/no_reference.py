"""No-reference image quality: NIQE and BRISQUE (lower is better for both).

* NIQE (Mittal et al., "Making a completely blind image quality analyzer", 2013): natural-scene
  statistics of 96 x 96 patches at two scales (36 features per patch), fitted by a Gaussian and
  compared with a Gaussian fitted to pristine images. The pristine model is a file: the MATLAB
  release's ``modelparameters.mat`` (``mu_prisparam``, ``cov_prisparam``) or an ``.npz`` with ``mu`` and
  ``cov`` (:func:`fit_niqe_model` writes one from images of your choice). Frames must exceed 192 px.
* BRISQUE: the ``brisque`` package and the LIVE-trained SVR model it ships.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from scipy.special import gamma

from synctalk.errors import UserError

NIQE_PATCH = 96
_SHAPES = np.arange(0.2, 10.0, 0.001)
_SHAPE_RATIO = gamma(2 / _SHAPES) ** 2 / (gamma(1 / _SHAPES) * gamma(3 / _SHAPES))


def mscn(gray: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients of a (H, W) image in 0-255 (Gaussian 7 x 7, sigma 7/6)."""
    mu = cv2.GaussianBlur(gray, (7, 7), 7 / 6, borderType=cv2.BORDER_REPLICATE)
    sigma = np.sqrt(np.abs(cv2.GaussianBlur(gray * gray, (7, 7), 7 / 6, borderType=cv2.BORDER_REPLICATE) - mu * mu))
    return (gray - mu) / (sigma + 1)


def aggd_fit(values: np.ndarray) -> tuple[float, float, float]:
    """Asymmetric generalised Gaussian fit (moment matching): shape, left scale, right scale."""
    v = values.ravel()
    left, right = v[v < 0], v[v > 0]
    left_std = np.sqrt(np.mean(left ** 2)) if left.size else 0.0
    right_std = np.sqrt(np.mean(right ** 2)) if right.size else 0.0
    if left_std == 0 or right_std == 0 or not np.any(v):
        return 10.0, 0.0, 0.0
    g = left_std / right_std
    r = np.mean(np.abs(v)) ** 2 / np.mean(v ** 2)
    r_norm = r * (g ** 3 + 1) * (g + 1) / (g ** 2 + 1) ** 2
    shape = float(_SHAPES[np.argmin((_SHAPE_RATIO - r_norm) ** 2)])
    k = np.sqrt(gamma(1 / shape) / gamma(3 / shape))
    return shape, float(left_std * k), float(right_std * k)


def _patch_features(coeffs: np.ndarray) -> np.ndarray:
    """18 features of one MSCN patch: GGD shape and scale, then shape, mean, left and right scale of the
    products with the right, lower, lower-right and lower-left neighbours."""
    shape, bl, br = aggd_fit(coeffs)
    feats = [shape, (bl + br) / 2]
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        pair = coeffs * np.roll(coeffs, (-dy, -dx), axis=(0, 1))
        s, bl, br = aggd_fit(pair)
        feats += [s, (br - bl) * gamma(2 / s) / gamma(1 / s), bl, br]
    return np.array(feats)


def niqe_features(image: np.ndarray, patch: int = NIQE_PATCH) -> np.ndarray:
    """(P, 36) NIQE features of the non-overlapping patches of an RGB uint8 or gray image."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    gray = gray.astype(np.float64)
    h, w = (gray.shape[0] // patch) * patch, (gray.shape[1] // patch) * patch
    if h < 2 * patch or w < 2 * patch:
        raise ValueError(f"NIQE needs frames of at least {2 * patch} px per side, got {gray.shape[1]}x{gray.shape[0]}")
    gray = gray[:h, :w]
    half = cv2.resize(gray, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    per_scale = []
    for img, size in ((gray, patch), (half, patch // 2)):
        c = mscn(img)
        per_scale.append(np.array([_patch_features(c[y:y + size, x:x + size])
                                   for y in range(0, c.shape[0] - size + 1, size)
                                   for x in range(0, c.shape[1] - size + 1, size)]))
    return np.hstack(per_scale)


def fit_niqe_model(images: list[np.ndarray], path: Path | None = None) -> dict[str, np.ndarray]:
    """Fit the pristine Gaussian (``mu`` (36,), ``cov`` (36, 36)) to the patches of ``images``; saved to ``path`` (.npz)."""
    feats = np.vstack([niqe_features(im) for im in images])
    model = {"mu": feats.mean(0), "cov": np.cov(feats.T)}
    if path is not None:
        np.savez(path, **model)
    return model


def load_niqe_model(path: str, config_key: str) -> dict[str, np.ndarray]:
    """The pristine model from ``modelparameters.mat`` (MATLAB release) or an ``.npz`` from :func:`fit_niqe_model`."""
    from synctalk.external import require_file

    file = require_file(path, "NIQE pristine model", config_key)
    try:
        if file.suffix == ".mat":
            from scipy.io import loadmat

            raw = loadmat(file)
            keys = ("mu_prisparam", "cov_prisparam") if "mu_prisparam" in raw else ("pop_mu", "pop_cov")
            model = {"mu": np.ravel(raw[keys[0]]), "cov": np.asarray(raw[keys[1]])}
        else:
            with np.load(file) as raw:
                model = {"mu": np.ravel(raw["mu"]), "cov": np.asarray(raw["cov"])}
    except (KeyError, ValueError, OSError) as e:
        raise UserError(f"{file} is not a NIQE model (mu_prisparam/cov_prisparam .mat or mu/cov .npz): {e}") from None
    if model["mu"].shape != (36,) or model["cov"].shape != (36, 36):
        raise UserError(f"{file}: a NIQE model has a 36-vector and a 36x36 covariance, got "
                        f"{model['mu'].shape} and {model['cov'].shape}")
    return model


def niqe(image: np.ndarray, model: dict[str, np.ndarray]) -> float:
    """NIQE score of one image against a pristine model (lower = more natural)."""
    feats = niqe_features(image)
    diff = feats.mean(0) - model["mu"]
    cov = (model["cov"] + np.cov(feats.T)) / 2
    return float(np.sqrt(diff @ np.linalg.pinv(cov) @ diff))


class Brisque:
    """BRISQUE with the LIVE model shipped in the ``brisque`` package; ``score`` takes an (H, W, 3) RGB uint8 image."""

    def __init__(self):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from brisque import BRISQUE
        self._model = BRISQUE(url=False)

    def score(self, image: np.ndarray) -> float:
        return float(self._model.score(image))
