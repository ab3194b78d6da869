"""Image metrics under the two ground-truth modes of SyncTalk.

* ``parsed``: the render (head over the static background and torso) against
  ``gt_imgs`` (the frame with its background replaced).
* ``with_hair`` (portrait mode): the render is blended onto the original frame with a
  blurred face mask, then compared with the original frame. Every pixel outside the
  mask is copied from the ground truth, which inflates the scores; the ``face`` scores
  (inside the face mask only) show the part that is really rendered.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torchmetrics.functional.image import (multiscale_structural_similarity_index_measure, peak_signal_noise_ratio,
                                           structural_similarity_index_measure)

GT_MODES = ("parsed", "with_hair")
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # the 5 scale weights of MS-SSIM
MS_SSIM_KERNEL = 11


def ms_ssim_scales(height: int, width: int) -> int:
    """How many of the 5 MS-SSIM scales fit an image: the coarsest must stay wider than the kernel."""
    side = min(height, width)
    return max(k for k in range(1, 6) if side > (MS_SSIM_KERNEL - 1) * 2 ** (k - 1))


def ms_ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    """MS-SSIM (data range 1) of (1, 3, H, W) images, with as many scales as the size allows
    (all 5 from 161 px; the weights of the scales used are renormalised)."""
    k = ms_ssim_scales(pred.shape[-2], pred.shape[-1])
    betas = torch.tensor(MS_SSIM_BETAS[:k])
    betas = tuple((betas / betas.sum()).tolist())
    return float(multiscale_structural_similarity_index_measure(pred, target, data_range=1.0,
                                                                kernel_size=MS_SSIM_KERNEL, betas=betas))


def blur_mask(mask: torch.Tensor, kernel_at_512: int) -> torch.Tensor:
    """Gaussian-blurred face mask (H, W) for portrait blending; the kernel scales with the image size."""
    k = max(1, int(round(kernel_at_512 * mask.shape[1] / 512)))
    k += 1 - k % 2
    return torch.from_numpy(cv2.GaussianBlur(mask.numpy().astype(np.float32), (k, k), 0))


def portrait_blend(render: torch.Tensor, original: torch.Tensor, soft_mask: torch.Tensor) -> torch.Tensor:
    """Paste the rendered face onto the original frame. Shapes (H, W, 3), (H, W, 3), (H, W)."""
    m = soft_mask[..., None]
    return render * m + original * (1 - m)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of a (H, W) map over the pixels where mask > 0.5; NaN when the mask is empty."""
    sel = mask > 0.5
    return float(values[sel].mean()) if sel.any() else float("nan")


def masked_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR (dB, data range 1) over the pixels where mask > 0.5; NaN when the mask is empty."""
    sel = mask > 0.5
    if not sel.any():
        return float("nan")
    mse = ((pred - target) ** 2)[sel].mean().clamp(min=1e-10)
    return float(-10 * torch.log10(mse))


class GtModeMetrics:
    """Accumulates per-frame PSNR / SSIM / MS-SSIM (and LPIPS, given a model) under both GT
    modes, and PSNR, SSIM (and LPIPS) inside the face mask (``face_*``: the SSIM and LPIPS maps
    averaged over the mask; MS-SSIM has no per-pixel map and is whole-frame only).

    Args:
        mask_blur: Gaussian kernel of the portrait blend (px at 512).
        lpips_model: an LPIPS module taking (B, 3, H, W) in [-1, 1] (see :mod:`synctalk.metrics.lpips`).
    """

    def __init__(self, mask_blur: int = 9, lpips_model: torch.nn.Module | None = None):
        self.mask_blur = mask_blur
        self.lpips_model = lpips_model
        self.values: dict[str, list[float]] = {}

    def _add(self, key: str, value: float) -> None:
        self.values.setdefault(key, []).append(value)

    def update(self, render: torch.Tensor, gt_parsed: torch.Tensor, original: torch.Tensor, face_mask: torch.Tensor
               ) -> torch.Tensor:
        """Score one frame; returns the portrait-mode (with_hair) image, (H, W, 3)."""
        blended = portrait_blend(render, original, blur_mask(face_mask, self.mask_blur))
        for mode, pred, target in (("parsed", render, gt_parsed), ("with_hair", blended, original)):
            p, t = pred.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None]
            self._add(f"{mode}/psnr", float(peak_signal_noise_ratio(p, t, data_range=1.0)))
            ssim, ssim_map = structural_similarity_index_measure(p, t, data_range=1.0, return_full_image=True)
            self._add(f"{mode}/ssim", float(ssim))
            self._add(f"{mode}/ms_ssim", ms_ssim(p, t))
            self._add(f"{mode}/face_psnr", masked_psnr(pred, target, face_mask))
            self._add(f"{mode}/face_ssim", masked_mean(ssim_map[0].mean(0), face_mask))
            if self.lpips_model is not None:
                self._add_lpips(mode, p * 2 - 1, t * 2 - 1, face_mask)
        return blended

    def _add_lpips(self, mode: str, p: torch.Tensor, t: torch.Tensor, face_mask: torch.Tensor) -> None:
        with torch.no_grad():
            self._add(f"{mode}/lpips", float(self.lpips_model(p, t).mean()))
            self.lpips_model.spatial = True  # the per-pixel distance map, (1, 1, H, W)
            try:
                self._add(f"{mode}/face_lpips", masked_mean(self.lpips_model(p, t)[0, 0], face_mask))
            finally:
                self.lpips_model.spatial = False

    def compute(self) -> dict[str, float]:
        """Mean of every metric over the frames seen (NaN frames ignored)."""
        return {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in sorted(self.values.items())}
