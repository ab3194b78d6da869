"""``synctalk render ckpt=PATH audio=PATH output=PATH.mp4``: drive a trained head with new audio."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from synctalk import threads
from synctalk.audio.encoders import compute_features
from synctalk.audio.features import frames_for_audio, load_audio
from synctalk.config.schema import RenderConfig
from synctalk.errors import UserError
from synctalk.geometry import smooth_poses
from synctalk.io import write_json
from synctalk.metrics.image import blur_mask, portrait_blend
from synctalk.runs import build_datamodule, load_run
from synctalk.video import VideoWriter

log = logging.getLogger(__name__)
SCHEMA = RenderConfig
POSE_MODES = ("replay", "smoothed", "still")


def pose_schedule(mode: str, num_frames: int, num_poses: int) -> np.ndarray:
    """Which training frame lends its pose (and background) to each output frame.

    ``replay`` (and ``smoothed``) walk the training frames back and forth; ``still`` holds
    the first one.
    """
    if mode not in POSE_MODES:
        raise UserError(f"poses={mode!r} is not one of {POSE_MODES}")
    if mode == "still" or num_poses == 1:
        return np.zeros(num_frames, dtype=int)
    period = 2 * (num_poses - 1)
    t = np.arange(num_frames) % period
    return np.where(t < num_poses, t, period - t)


def run(cfg: DictConfig) -> dict:
    output = Path(cfg.output)
    if output.suffix.lower() != ".mp4":
        raise UserError(f"output={output} must end in .mp4")
    pose_schedule(cfg.poses, 1, 1)  # reject an unknown pose mode before loading anything
    run_cfg, system = load_run(cfg.ckpt)
    samples = load_audio(cfg.audio)
    fps = float(run_cfg.data.fps)
    n = frames_for_audio(samples, fps)
    features = torch.from_numpy(compute_features(run_cfg.audio_encoder, samples, n, fps))
    if cfg.downscale:  # render at another resolution than the run was trained at
        run_cfg.data.downscale = cfg.downscale
    frames = build_datamodule(run_cfg).frames("train")
    schedule = pose_schedule(cfg.poses, n, len(frames))
    poses = frames.c2w[schedule]  # (n, 4, 4)
    if cfg.poses == "smoothed":  # the replayed path, Gaussian-smoothed over time
        poses = torch.from_numpy(smooth_poses(poses.numpy(), cfg.pose_smoothing))
    portrait = cfg.gt_mode.name == "with_hair"
    kept = []  # the frames, at most 256 px, for the mouth measure
    with VideoWriter(output, fps, samples[: int(round(n / fps * 16000))]) as writer:
        for i in tqdm(range(n), desc="render", unit="frame"):
            k = int(schedule[i])
            image = system.render_audio(frames, features, i, k, poses[i])
            if portrait:
                image = portrait_blend(image, frames.original(k), blur_mask(frames.face_mask(k), cfg.gt_mode.mask_blur))
            writer.write(image.numpy())
            if cfg.measure_mouth:
                kept.append(at_most(image.numpy(), MEASURE_SIZE))
            threads.tick()
    log.info("wrote %s: %d frames, %.2f s of audio", output, n, len(samples) / 16000)
    result = {"output": str(output), "frames": n, "seconds": len(samples) / 16000}
    if cfg.measure_mouth:
        result.update(measure_mouth(np.stack(kept), samples, fps, frames.layout.root, cfg,
                                    audio_branch_opening(system, features), frames.img_ids[schedule]))
    write_json(output.with_suffix(".json"), result)
    return threads.record(result)


MEASURE_SIZE = 256  # frames are read for the mouth measure at most this size


def at_most(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) float in [0, 1] -> uint8, shrunk so that its longer side is at most ``size``."""
    rgb = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    scale = size / max(rgb.shape[:2])
    if scale >= 1:
        return rgb
    return cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), interpolation=cv2.INTER_AREA)


def audio_branch_opening(system, features: torch.Tensor) -> np.ndarray | None:
    """The ``jawOpen`` the head's audio branch reads from each frame's audio ``features`` (N, window, dim): its mouth
    head, trained on the footage's blendshapes (``model.loss.audio_mouth_weight`` > 0). (N,); None without one."""
    from synctalk.data.datamodule import temporal_context
    from synctalk.face.blendshape_sets import MOUTH_BLENDSHAPES

    net = system.inference_net
    if net.mouth_head is None:
        return None
    device, column = next(net.parameters()).device, MOUTH_BLENDSHAPES.index("jawOpen")
    with torch.no_grad():
        return np.array([float(net.predict_mouth(temporal_context(features, i, net.smooth_frames).to(device))[column])
                         for i in range(len(features))])


def measure_mouth(clip: np.ndarray, samples: np.ndarray, fps: float, dataset_root: Path, cfg: DictConfig,
                  branch_opening: np.ndarray | None = None, pose_frames: np.ndarray | None = None) -> dict:
    """How far the rendered mouth opens with the driving audio, beside the training footage's own measure
    (:func:`synctalk.metrics.lip_sync.mouth_follows_audio`, :func:`synctalk.metrics.lip_sync.dataset_mouth_audio`
    on the dataset at ``dataset_root``), how far the head's audio branch reads the audio's phones
    (``branch_opening``, :func:`audio_branch_opening`) and how far the mouth follows the footage's own at the
    dataset frames whose poses were replayed (``pose_frames`` (N,)). Args: clip (N, H, W, 3) uint8; samples 16 kHz;
    ``cfg.face_landmarker``."""
    from synctalk.external import find_weight
    from synctalk.metrics.lip_sync import (STILL_MOUTH_MOTION, FaceReader, dataset_mouth_audio, footage_jaw_open,
                                           mouth_follows_audio, mouth_motion)

    reader = FaceReader(find_weight(cfg.face_landmarker, "face_landmarker.task", "Face Landmarker model",
                                    "face_landmarker", cfg.paths.root_dir))
    jaw = footage_jaw_open(dataset_root)
    replayed = jaw[pose_frames] if pose_frames is not None and jaw is not None else None
    out = {**mouth_follows_audio(clip, samples, fps, reader, branch_opening, replayed),
           **dataset_mouth_audio(dataset_root, fps)}
    log.info("mouth opening (%s) against the driving audio: correlation %.2f with the opening its phones imply "
             "(%.2f within the speech), %.2f with its loudness; %+.3f more open in speech than in pauses (the "
             "training footage with its own audio: %.2f (%.2f), %.2f; %+.3f)", out["mouth_source"],
             out["mouth_phone_corr"], out["mouth_phone_corr_in_speech"], out["mouth_loudness_corr"],
             out["mouth_pause_opening"], out["dataset_mouth_phone_corr"], out["dataset_mouth_phone_corr_in_speech"],
             out["dataset_mouth_loudness_corr"], out["dataset_mouth_pause_opening"])
    if "audio_branch_phone_corr" in out:
        log.info("the head's audio branch reads the opening the phones imply at %.2f (%.2f within the speech; "
                 "%+.3f more open in speech than in pauses)", out["audio_branch_phone_corr"],
                 out["audio_branch_phone_corr_in_speech"], out["audio_branch_pause_opening"])
    motion = mouth_motion(out)
    if motion is not None:
        out["mouth_motion"] = motion
        if motion < STILL_MOUTH_MOTION:
            log.warning("the rendered mouth hardly moves with this audio: its opening varies %.0f%% as much as in "
                        "the training footage", 100 * motion)
    return out
