"""Render a split of a trained run and score it under both GT modes."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from synctalk.audio import load_audio
from synctalk.data.datamodule import SubjectFrames
from synctalk.metrics.image import GtModeMetrics
from synctalk.metrics.lpips import find_backbone, load_lpips, missing_backbone_message
from synctalk.systems.head import HeadNeRFSystem
from synctalk.video import VideoWriter

log = logging.getLogger(__name__)


def lpips_or_note(backbone: str | None, config_key: str) -> tuple[torch.nn.Module | None, str | None]:
    """The LPIPS metric model, or None and a note saying why LPIPS is skipped (no AlexNet weights)."""
    path = find_backbone(backbone)
    if path is None:
        return None, f"lpips skipped: {missing_backbone_message(config_key)}"
    return load_lpips(path, config_key), None


def evaluate_split(system: HeadNeRFSystem, frames: SubjectFrames, gt_mode: str, mask_blur: int,
                   video_path: Path | None = None, fps: float = 25.0, lpips_backbone: str | None = None,
                   lpips_key: str = "model.loss.lpips_backbone") -> dict[str, float]:
    """Render every frame of ``frames`` and compute the metrics of both GT modes.

    ``gt_mode`` picks which mode the video shows and which PSNR is reported as ``psnr``.
    LPIPS is computed when the AlexNet weights are found (``lpips_backbone`` or the torch
    hub cache); otherwise ``notes`` says it was skipped.

    Returns:
        ``{"parsed/psnr": ..., "with_hair/psnr": ..., "psnr": ..., "frames": N, "notes": [...], ...}``.
    """
    lpips_model, note = lpips_or_note(lpips_backbone, lpips_key)
    if note:
        log.warning(note)
    metrics = GtModeMetrics(mask_blur, lpips_model)
    writer = None
    if video_path is not None:
        audio = _split_audio(frames, fps)
        writer = VideoWriter(video_path, fps, audio)
    try:
        for k in tqdm(range(len(frames)), desc=f"evaluate {frames.split}", leave=False):
            render = system.render_frame(frames, k)
            blended = metrics.update(render, frames.gt(k), frames.original(k), frames.face_mask(k))
            if writer is not None:
                writer.write((blended if gt_mode == "with_hair" else render).numpy())
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
    result = metrics.compute()
    result["psnr"] = result[f"{gt_mode}/psnr"]
    result["frames"] = len(frames)
    result["gt_mode"] = gt_mode
    result["notes"] = [note] if note else []
    return result


def _split_audio(frames: SubjectFrames, fps: float) -> np.ndarray | None:
    """The dataset audio under the split's frames (None when the dataset has no aud.wav)."""
    if not frames.layout.audio.is_file():
        return None
    audio = load_audio(frames.layout.audio)
    hop = 16000 / fps
    start, stop = int(frames.img_ids[0] * hop), int((frames.img_ids[-1] + 1) * hop)
    return audio[start:stop]

