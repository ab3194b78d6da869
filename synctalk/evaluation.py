"""Render a split of a trained run and score it with the metric suite under both GT modes.

Per frame (:class:`~synctalk.metrics.image.GtModeMetrics`): PSNR, SSIM, MS-SSIM, LPIPS, and PSNR /
SSIM / LPIPS inside the face mask. Per clip (:class:`ClipScorers`, models loaded once): FID, NIQE and BRISQUE (of the
renders, and of the GT frames as a reference), LMD and the blendshape AU errors, LSE-C / LSE-D (of the
renders and of the GT). Keys are ``<gt mode>/<metric>``. A metric that cannot run (a weight file not
found, frames too small) is left out and ``notes`` says why; no number is ever made up.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch
from tqdm import tqdm

from synctalk import threads
from synctalk.audio.features import load_audio
from synctalk.data.datamodule import SubjectFrames
from synctalk.errors import UserError
from synctalk.io import atomic_path
from synctalk.metrics.image import GT_MODES, GtModeMetrics
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


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def evaluate_split(system: HeadNeRFSystem, frames: SubjectFrames, gt_mode: str, mask_blur: int, metrics_cfg: Any,
                   video_path: Path | None = None, fps: float = 25.0, lpips_fallback: str | None = None,
                   sample_path: Path | None = None, weights_root: str | None = None,
                   mouth_signals_path: Path | None = None) -> dict[str, Any]:
    """Render every frame of ``frames`` and compute the metric suite under both GT modes.

    Args:
        gt_mode: which mode the video shows and which PSNR is also reported as ``psnr``.
        metrics_cfg: the ``metrics`` config group (weight paths, switches).
        lpips_fallback: AlexNet weights to use when ``metrics_cfg.lpips_backbone`` is unset (the run's loss setting).
        sample_path: where to write the middle frame as render | parsed GT | render pasted on the frame | frame.
        weights_root: ``paths.root_dir``, where ``metrics.face_landmarker=auto`` also looks (``<root>/weights``).
        mouth_signals_path: where the lip-sync test writes its per-frame mouth readings (``mouth_signals.npz``:
            what :func:`synctalk.metrics.lip_sync.pooled_lip_sync` reads over the folds of a clip).
    Returns:
        ``{"parsed/psnr": ..., "with_hair/psnr": ..., "psnr": ..., "frames": N, "notes": [...], ...}``.
    """
    lpips_model, note = lpips_or_note(metrics_cfg.lpips_backbone or lpips_fallback, "metrics.lpips_backbone")
    notes = [note] if note else []
    per_frame = GtModeMetrics(mask_blur, lpips_model)
    clips: dict[str, tuple[list, list]] = {mode: ([], []) for mode in GT_MODES}
    audio = _split_audio(frames, fps)
    writer = VideoWriter(video_path, fps, audio) if video_path is not None else None
    try:
        for k in tqdm(range(len(frames)), desc=f"evaluate {frames.split}", leave=False):
            render, gt, original = system.render_frame(frames, k), frames.gt(k), frames.original(k)
            blended = per_frame.update(render, gt, original, frames.face_mask(k))
            threads.tick()
            for mode, pred, target in (("parsed", render, gt), ("with_hair", blended, original)):
                clips[mode][0].append(_to_uint8(pred))
                clips[mode][1].append(_to_uint8(target))
            if writer is not None:
                writer.write((blended if gt_mode == "with_hair" else render).numpy())
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
    if sample_path is not None:
        k = len(frames) // 2
        (pred, gt), (blend, original) = ((c[0][k], c[1][k]) for c in clips.values())
        sample_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(sample_path) as tmp:
            cv2.imwrite(str(tmp), np.concatenate([pred, gt, blend, original], 1)[..., ::-1])
    result: dict[str, Any] = per_frame.compute()
    if metrics_cfg.audio_response:
        try:
            result["mouth_audio_response"] = mouth_audio_response(system, frames, clips["parsed"][0])
        except ValueError as e:
            notes.append(f"mouth_audio_response skipped: {e}")
    landmarks = _landmarks_or_none(frames)
    contiguous = bool(np.all(np.diff(frames.img_ids) == 1))
    if not contiguous:
        notes.append("lse skipped: the split's frames are not consecutive, so there is no audio track under them")
    scorers = ClipScorers(metrics_cfg)
    for mode, (pred, target) in clips.items():
        values, mode_notes = scorers.score(np.stack(pred), np.stack(target), audio if contiguous else None, landmarks)
        result.update({f"{mode}/{k}": v for k, v in values.items()})
        notes += [n for n in mode_notes if n not in notes]
    if any(k.endswith("/aue_upper") for k in result):
        from synctalk.metrics.motion import AUE_KIND

        result["aue_kind"] = AUE_KIND
    if metrics_cfg.lip_sync:
        try:
            result.update(lip_sync_metrics(system, frames, clips, metrics_cfg, fps, weights_root, mouth_signals_path))
        except ValueError as e:
            notes.append(f"lip sync skipped: {e}")
    result["psnr"] = result[f"{gt_mode}/psnr"]
    result["frames"] = len(frames)
    result["gt_mode"] = gt_mode
    result["notes"] = notes
    for n in notes:
        log.warning(n)
    return result


def render_with_audio(system: HeadNeRFSystem, frames: SubjectFrames, audio_of: Callable[[int], torch.Tensor],
                      desc: str) -> list[np.ndarray]:
    """The split rendered again with frame k driven by the audio features ``audio_of(k)`` (its own pose, eyes and
    background): (H, W, 3) uint8 per frame."""
    images = []
    for k in tqdm(range(len(frames)), desc=desc, leave=False):
        images.append(_to_uint8(system.render_view(frames, frames.c2w[k], audio_of(k), frames.eye[k],
                                                   system.background(frames, k),
                                                   frame=k if frames.split == "train" else None)))
        threads.tick()
    return images


def mouth_audio_response(system: HeadNeRFSystem, frames: SubjectFrames, renders: list[np.ndarray]) -> float:
    """How much the mouth follows the audio, without any weights: every frame is rendered again with the audio
    of the frame half the split away (same pose, eyes and background), and the mean absolute change inside the
    mouth box is returned in 0-255 units. 0 means the mouth ignores the audio.

    Args:
        renders: the split's (H, W, 3) uint8 renders with their own audio.
    """
    n = len(frames)
    if n < 2:
        raise ValueError("it needs at least 2 frames")
    try:
        boxes = [frames.mouth_box(k) for k in range(n)]
    except UserError as e:
        raise ValueError(str(e)) from None
    smooth = system.inference_net.smooth_frames
    swapped = render_with_audio(system, frames, lambda k: frames.audio_context((k + n // 2) % n, smooth),
                                "mouth audio response")
    changes = []
    for k, (u0, v0, u1, v1) in enumerate(boxes):
        diff = np.abs(swapped[k][v0:v1 + 1, u0:u1 + 1].astype(np.float32) - renders[k][v0:v1 + 1, u0:u1 + 1])
        changes.append(float(diff.mean()))
    return float(np.mean(changes))


def lip_sync_metrics(system: HeadNeRFSystem, frames: SubjectFrames, clips: dict, metrics_cfg: Any, fps: float,
                     weights_root: str | None, signals_path: Path | None = None) -> dict[str, Any]:
    """The mouth of the renders against the ground truth's under both GT modes, the AU errors from the real
    blendshapes, and the sync test on the parsed renders (see :mod:`synctalk.metrics.lip_sync`).

    Args:
        clips: {mode: (renders, targets)} lists of (H, W, 3) uint8 frames.
        signals_path: where to write the parsed renders' mouth readings (:func:`write_mouth_signals`).
    """
    from synctalk.external import find_weight
    from synctalk.metrics.lip_sync import (FaceReader, blendshape_au_errors, correlation, lip_sync_intervals,
                                           lip_sync_verdict, mouth_agreement, sync_gap, write_mouth_signals)

    reader = FaceReader(find_weight(metrics_cfg.face_landmarker, "face_landmarker.task", "Face Landmarker model",
                                    "metrics.face_landmarker", weights_root))
    out: dict[str, Any] = {"lip_sync_source": reader.source}
    readings = {mode: (reader.read(np.stack(pred)), reader.read(np.stack(target))) for mode, (pred, target) in clips.items()}
    for mode, (pred, target) in readings.items():
        out.update({f"{mode}/{k}": v for k, v in mouth_agreement(pred, target, reader.mouth_names).items()})
        if reader.landmarker:
            out.update({f"{mode}/{k}": v for k, v in blendshape_au_errors(pred, target).items()})
    if reader.landmarker:
        out["aue_kind"] = ("AU error from the Face Landmarker's blendshapes: mean absolute difference x100 of the "
                           "brow and eyelid set (upper) and of the jaw and mouth set (lower)")
    shift = round(metrics_cfg.sync_shift_s * fps)
    pred_mouth, gt_mouth = readings["parsed"][0]["mouth"], readings["parsed"][1]["mouth"]
    shifted_mouths: list[np.ndarray] = []
    if shift > 0 and len(frames) >= 3:
        smooth = system.inference_net.smooth_frames
        shifted_mouths = [reader.read(np.stack(render_with_audio(
            system, frames, lambda k, s=s: frames.shifted_audio_context(k, s, smooth),
            f"sync test, audio {s:+d} frames")))["mouth"] for s in (shift, -shift)]
        out.update(sync_gap(out["parsed/mouth_corr"], [correlation(m, gt_mouth) for m in shifted_mouths], gt_mouth,
                            shift))
        out["sync_shift_frames"] = shift
        # what the rest of the condition explains: the audio of the middle frame throughout, true poses and eyes
        still = reader.read(np.stack(render_with_audio(system, frames,
                                                       lambda k: frames.audio_context(len(frames) // 2, smooth),
                                                       "sync test, still audio")))
        out["mouth_corr_still_audio"] = correlation(still["mouth"], gt_mouth)
    out.update(lip_sync_intervals(pred_mouth, gt_mouth, shifted_mouths))
    if signals_path is not None:
        write_mouth_signals(signals_path, frames.img_ids, pred_mouth, gt_mouth, shifted_mouths, shift)
    verdict = lip_sync_verdict(out)
    if verdict:
        out["lip_sync_verdict"] = verdict
        hint = ("; data.folds=K with a sweep over data.fold holds out the whole clip in turn"
                if verdict.startswith("these held-out frames cannot tell") else "")
        (log.info if verdict.startswith("the mouth follows") else log.warning)("%s (%d held-out frames)%s", verdict,
                                                                              len(frames), hint)
    return out


class ClipScorers:
    """The whole-clip metrics of a ``metrics`` config, their models loaded once and used for every GT mode.

    A metric whose weight file is not configured or found is not loaded, and :attr:`notes` says why.
    """

    def __init__(self, cfg: Any):
        self.landmarks, self.sync_vshift = cfg.landmarks, cfg.sync_vshift
        self.notes: list[str] = []
        from synctalk.metrics.fid import find_inception, load_fid, missing_inception_message

        inception = find_inception(cfg.fid_inception)
        self.fid = load_fid(inception, "metrics.fid_inception") if inception else None
        if inception is None:
            self.notes.append(f"fid skipped: {missing_inception_message('metrics.fid_inception')}")
        self.niqe_model = None
        if cfg.niqe_model:
            from synctalk.metrics.no_reference import load_niqe_model

            self.niqe_model = load_niqe_model(cfg.niqe_model, "metrics.niqe_model")
        else:
            self.notes.append("niqe skipped: set metrics.niqe_model=<modelparameters.mat of the NIQE release, or an "
                              ".npz fitted with synctalk.metrics.no_reference.fit_niqe_model>")
        self.brisque = None
        if cfg.brisque:
            from synctalk.metrics.no_reference import Brisque

            self.brisque = Brisque()
        self.syncnet = None
        if cfg.syncnet:
            from synctalk.metrics.sync import load_syncnet

            self.syncnet = load_syncnet(cfg.syncnet, "metrics.syncnet")
        else:
            from synctalk.metrics.sync import missing_syncnet_message

            self.notes.append(f"lse skipped: {missing_syncnet_message('metrics.syncnet')}")

    def score(self, pred: np.ndarray, gt: np.ndarray, audio: np.ndarray | None, landmarks: np.ndarray | None
              ) -> tuple[dict[str, float], list[str]]:
        """The whole-clip metrics of one GT mode.

        Args:
            pred, gt: (N, H, W, 3) RGB uint8 frames.
            audio: 16 kHz samples under the clip (None: no audio, LSE skipped).
            landmarks: (N, 68, 2) GT landmarks in pixels (face crops of LSE; None: LSE skipped).
        Returns:
            (values, notes): ``fid``, ``niqe``, ``niqe_gt``, ``brisque``, ``brisque_gt``, ``lmd``, ``aue_upper``,
            ``aue_lower``, ``face_found``, ``lse_d``, ``lse_c``, ``lse_offset``, ``lse_d_gt``, ``lse_c_gt``, as available;
            the notes include :attr:`notes`.
        """
        values: dict[str, float] = {}
        notes = list(self.notes)

        def attempt(name: str, compute: Callable[[], dict[str, float]]) -> None:
            try:
                values.update(compute())
            except ValueError as e:  # the input does not allow the metric (too small, too short)
                notes.append(f"{name} skipped: {e}")

        if self.fid is not None:
            from synctalk.metrics.fid import frechet_inception_distance

            if len(pred) < 2:
                notes.append("fid skipped: it needs at least 2 frames")
            else:
                attempt("fid", lambda: {"fid": frechet_inception_distance(self.fid, gt, pred)})
        if self.niqe_model is not None:
            from synctalk.metrics.no_reference import niqe

            attempt("niqe", lambda: {"niqe": float(np.mean([niqe(f, self.niqe_model) for f in pred])),
                                     "niqe_gt": float(np.mean([niqe(f, self.niqe_model) for f in gt]))})
        if self.brisque is not None:
            values["brisque"] = float(np.mean([self.brisque.score(f) for f in pred]))
            values["brisque_gt"] = float(np.mean([self.brisque.score(f) for f in gt]))
        if self.landmarks:
            from synctalk.metrics.motion import motion_metrics

            attempt("lmd and aue", lambda: motion_metrics(pred, gt))
        if self.syncnet is not None:
            if audio is None or landmarks is None:
                notes.append("lse skipped: the dataset has no aud.wav or no landmarks (.lms) for the face crops")
            else:
                attempt("lse", lambda: self._lse(pred, gt, audio, landmarks))
        return values, notes

    def _lse(self, pred: np.ndarray, gt: np.ndarray, audio: np.ndarray, landmarks: np.ndarray) -> dict[str, float]:
        from synctalk.metrics.sync import crop_faces, face_crop_boxes, lip_sync_error

        boxes = face_crop_boxes(landmarks)
        ours = lip_sync_error(self.syncnet, crop_faces(pred, boxes), audio, self.sync_vshift)
        ref = lip_sync_error(self.syncnet, crop_faces(gt, boxes), audio, self.sync_vshift)
        return {"lse_d": ours["lse_d"], "lse_c": ours["lse_c"], "lse_offset": float(ours["offset"]),
                "lse_d_gt": ref["lse_d"], "lse_c_gt": ref["lse_c"]}


def _landmarks_or_none(frames: SubjectFrames) -> np.ndarray | None:
    """(N, 68, 2) landmarks of the split at its resolution, or None when the dataset has none."""
    if not all(frames.layout.landmarks(int(i)).is_file() for i in frames.img_ids):
        return None
    return np.stack([frames.landmarks(k) for k in range(len(frames))])


def _split_audio(frames: SubjectFrames, fps: float) -> np.ndarray | None:
    """The dataset audio under the split's frames (None when the dataset has no aud.wav)."""
    if not frames.layout.audio.is_file():
        return None
    audio = load_audio(frames.layout.audio)
    hop = 16000 / fps
    start, stop = int(frames.img_ids[0] * hop), int((frames.img_ids[-1] + 1) * hop)
    return audio[start:stop]
