"""The training losses of the head stages (SyncTalk section 4), each a small function.

Shapes: R rays, P x P patches; colours in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from synctalk.choice import Choice


class PhotometricLoss(Choice):
    mse = "mse"  # squared colour error
    l1 = "l1"  # absolute colour error


class PatchLoss(Choice):
    ssim = "ssim"  # 1 - SSIM (weight-free)
    lpips = "lpips"  # AlexNet LPIPS (needs the AlexNet weights)


@dataclass
class LossConfig:
    """``model.loss``: the losses' kinds and weights."""

    photometric: PhotometricLoss = PhotometricLoss.mse  # per ray
    uncertainty_start: float = 0.5  # fraction of the steps after which the photometric loss is uncertainty-weighted (>= 1: never)
    uncertainty_beta_min: float = 0.1  # smallest scale of the uncertainty weighting
    entropy_weight: float = 1.0e-4  # binary entropy of the ray opacities
    attention_weight: float = 1.0e-4  # masked attention loss, ramped up linearly over training
    patch: PatchLoss = PatchLoss.ssim  # patch loss of the lips stage
    lpips_backbone: Optional[str] = None  # alexnet-owt-7be5be79.pth (default: the torch hub cache)
    audio_mouth_weight: float = 0.0  # auxiliary target: the audio embedding must predict the frame's mouth blendshapes (bs.npy)
    mouth_teacher: float = 0.0  # with model.net.mouth_condition: the share of training steps whose density network sees the frame's true mouth blendshapes instead of the audio's

PHOTOMETRIC = ("l1", "mse")
PATCH_LOSSES = ("ssim", "lpips")


def photometric_error(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-ray error (R,): mean absolute (``l1``) or squared (``mse``) colour difference."""
    diff = pred - target
    if kind == "l1":
        return diff.abs().mean(-1)
    if kind == "mse":
        return diff.pow(2).mean(-1)
    raise ValueError(f"photometric loss {kind!r} is not one of {PHOTOMETRIC}")


def uncertainty_weighted(error: torch.Tensor, uncertainty: torch.Tensor, beta_min: float) -> torch.Tensor:
    """Negative log-likelihood of the per-ray error under a learned scale.

    ``beta = beta_min + uncertainty``; the loss ``error / beta + log(beta)`` lets rays the
    field cannot explain (hair strands, motion blur) count less, at the price of log(beta).
    Args: error, uncertainty (R,). Returns a scalar.
    """
    beta = beta_min + uncertainty
    return (error / beta + beta.log()).mean()


def opacity_entropy(opacity: torch.Tensor) -> torch.Tensor:
    """Mean binary entropy of the ray opacities (R,): pushes each ray to empty or solid."""
    o = opacity.clamp(1e-5, 1 - 1e-5)
    return -(o * o.log() + (1 - o) * (1 - o).log()).mean()


def masked_attention(audio_att: torch.Tensor, eye_att: torch.Tensor, lower_face: torch.Tensor) -> torch.Tensor:
    """Facial-aware masked attention loss.

    Audio attention is penalised outside the lower face, expression attention inside it.
    Args: audio_att, eye_att (R,) rendered attention magnitudes; lower_face (R,) bool
    (below the nose-tip row, inside the face box).
    """
    loss = audio_att.new_zeros(())
    if (~lower_face).any():
        loss = loss + audio_att[~lower_face].mean()
    if lower_face.any():
        loss = loss + eye_att[lower_face].mean()
    return loss


def patch_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, lpips_model: torch.nn.Module | None = None
               ) -> torch.Tensor:
    """Perceptual distance of two patches (P, P, 3): ``lpips`` (AlexNet LPIPS) or ``ssim`` (1 - SSIM).

    ``ssim`` needs no weights; ``lpips`` needs ``lpips_model`` (see :func:`synctalk.metrics.lpips.load_lpips`).
    """
    p, t = pred.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None]
    if kind == "ssim":
        return 1 - structural_similarity_index_measure(p, t, data_range=1.0, kernel_size=7)
    if kind == "lpips":
        if lpips_model is None:
            raise ValueError("patch loss 'lpips' needs an LPIPS model")
        return lpips_model(p * 2 - 1, t * 2 - 1).mean()
    raise ValueError(f"patch loss {kind!r} is not one of {PATCH_LOSSES}")
