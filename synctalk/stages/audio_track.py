"""The ``audio`` stage (``aud.wav``, 16 kHz mono) and the ``audio_features`` stage (``aud_<encoder>.npy``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synctalk.audio.encoders import AudioConfig, compute_features
from synctalk.audio.features import SAMPLE_RATE, load_audio, noise_floor, speech_level_db, write_wav
from synctalk.errors import UserError
from synctalk.io import atomic_path
from synctalk.stages.base import Stage, StageContext


@dataclass
class AudioStage(Stage):
    name = "audio"
    reads_source = True
    outputs = ("aud.wav",)

    def run(self, ctx: StageContext) -> dict:
        samples = load_audio(ctx.video)
        with atomic_path(ctx.layout.audio) as tmp:
            write_wav(tmp, samples)
        return {"seconds": len(samples) / SAMPLE_RATE}


def import_features(path: Path, num_frames: int, window: int, dim: int) -> np.ndarray:
    """Precomputed per-frame audio features (frames, window, dim), e.g. the original tools' aud_ds.npy.

    A count off by a couple of frames (rounding of the audio length) is padded or cut at the end.
    """
    if not path.is_file():
        raise UserError(f"audio_encoder.features_file={path} does not exist")
    feats = np.load(path)
    if feats.ndim == 2 and window == 1:  # one vector per frame, e.g. aud_ave.npy
        feats = feats[:, None]
    if feats.ndim != 3 or feats.shape[1:] != (window, dim):
        raise UserError(f"{path} has shape {feats.shape}; expected (frames, {window}, {dim})")
    if abs(len(feats) - num_frames) > 2:
        raise UserError(f"{path} has features for {len(feats)} frames but the video has {num_frames}")
    idx = np.minimum(np.arange(num_frames), len(feats) - 1)
    return feats[idx].astype(np.float32)


PAUSE_FRAMES = 250  # frames of pause features per noise floor (10 s at 25 fps)


@dataclass
class AudioFeaturesStage(Stage):
    """Features of the ``audio_encoder`` config for every frame: computed (mel, phones, speech_embedding, whisper,
    ave, hubert) or imported from ``audio.features_file``. With ``audio.noise_floors_db``, also those of pauses:
    a steady noise floor alone, that many dB below the clip's speech level
    (:func:`synctalk.audio.features.noise_floor`, seeded by the floor's place in the list;
    :func:`synctalk.audio.features.speech_level_db`), stacked in ``aud_<name>_pause.npy`` (floors, at most
    :data:`PAUSE_FRAMES` frames, window, dim)."""

    name = "audio_features"
    needs = ("frames", "audio")

    audio: AudioConfig = field(default_factory=AudioConfig)

    @property
    def outputs(self) -> tuple[str, ...]:
        name = self.audio.name
        return (f"aud_{name}.npy", *((f"aud_{name}_pause.npy",) if self.audio.noise_floors_db else ()))

    def run(self, ctx: StageContext) -> dict:
        n, cfg = ctx.frame_count(), self.audio
        if cfg.features_file:
            if cfg.noise_floors_db:
                raise UserError("audio_encoder.noise_floors_db needs features computed from the audio, not imported "
                                "(audio_encoder.features_file): set audio_encoder.noise_floors_db=[]")
            feats = import_features(Path(cfg.features_file), n, cfg.window, cfg.feature_dim)
        else:
            samples = load_audio(ctx.layout.audio)
            feats = compute_features(cfg, samples, n, ctx.fps, ctx.progress)
            if cfg.noise_floors_db:
                self._write_pauses(ctx, samples, n)
        if cfg.window == 1:  # one vector per frame is stored 2-D, as the original's aud_ave.npy
            feats = feats[:, 0]
        with atomic_path(ctx.layout.audio_features(cfg.name)) as tmp:
            np.save(tmp, feats)
        return {"shape": list(feats.shape), "noise_floors_db": list(cfg.noise_floors_db)}

    def _write_pauses(self, ctx: StageContext, samples: np.ndarray, n: int) -> None:
        """``aud_<name>_pause.npy`` (see the class)."""
        cfg, speech_db = self.audio, speech_level_db(samples)
        frames = min(n, PAUSE_FRAMES)
        length = int(np.ceil(frames / ctx.fps * SAMPLE_RATE))
        pauses = [compute_features(cfg, noise_floor(length, speech_db + float(floor), seed).astype(np.float32),
                                   frames, ctx.fps, ctx.progress) for seed, floor in enumerate(cfg.noise_floors_db)]
        with atomic_path(ctx.layout.pause_audio_features(cfg.name)) as tmp:
            np.save(tmp, np.stack(pauses))
