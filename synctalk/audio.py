"""Audio input/output and the weight-free audio features (log-mel windows per video frame).

All audio inside the platform is 16 kHz mono float32 in [-1, 1].
"""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import torch

from synctalk.errors import UserError

SAMPLE_RATE = 16000


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode any audio (or the audio track of a video) to mono float32 at ``sample_rate``.

    Returns:
        (T,) samples in [-1, 1].
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise UserError(f"audio file not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise UserError(f"{path} has no audio track")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            chunks = []
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except av.error.FFmpegError as e:
        raise UserError(f"cannot decode audio from {path}: {e}") from None
    if not chunks:
        raise UserError(f"{path} contains no audio samples")
    return np.clip(np.concatenate(chunks).astype(np.float32), -1.0, 1.0)


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono float samples in [-1, 1] as 16-bit PCM wav."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular mel filters (HTK mel scale), shape (n_mels, n_fft // 2 + 1)."""
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / (centre - lower)
    falling = (upper - freqs[None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def log_mel(samples: np.ndarray, sample_rate: int = SAMPLE_RATE, n_mels: int = 80, hop_length: int = 160,
            n_fft: int = 800, fmin: float = 55.0, fmax: float = 7600.0) -> np.ndarray:
    """Log-mel spectrogram normalised to [-4, 4].

    Returns:
        (T_mel, n_mels) with one row every ``hop_length`` samples (10 ms by default).
    """
    x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    spec = torch.stft(x, n_fft, hop_length=hop_length, win_length=n_fft, window=torch.hann_window(n_fft),
                      center=True, pad_mode="reflect", return_complex=True).abs()  # (F, T)
    mel = torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)) @ spec
    db = 20.0 * torch.log10(mel.clamp(min=1e-5)) - 20.0
    return ((db + 100.0) / 100.0 * 8.0 - 4.0).clamp(-4.0, 4.0).T.numpy()


def mel_windows(samples: np.ndarray, num_frames: int, fps: float, window: int = 16, n_mels: int = 80,
                sample_rate: int = SAMPLE_RATE, hop_length: int = 160) -> np.ndarray:
    """A window of log-mel rows centred on every video frame.

    Rows before the start or past the end of the audio repeat the edge row.

    Returns:
        (num_frames, window, n_mels) float32.
    """
    mel = log_mel(samples, sample_rate, n_mels, hop_length)
    rows_per_second = sample_rate / hop_length
    centres = np.round((np.arange(num_frames) + 0.5) / fps * rows_per_second).astype(int)
    idx = np.clip(centres[:, None] + np.arange(-(window // 2), window - window // 2)[None], 0, len(mel) - 1)
    return mel[idx].astype(np.float32)


def frames_for_audio(samples: np.ndarray, fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Number of video frames that cover the audio (at least one frame of audio is required)."""
    n = int(np.floor(len(samples) / sample_rate * fps))
    if n < 1:
        raise UserError(f"audio is {len(samples) / sample_rate * 1000:.0f} ms long, shorter than one video frame "
                        f"({1000 / fps:.0f} ms at {fps:g} fps)")
    return n


def compute_features(encoder: str, samples: np.ndarray, num_frames: int, fps: float, window: int) -> np.ndarray:
    """Per-frame audio features of new audio for a run's audio encoder.

    Returns:
        (num_frames, window, dim) float32.
    """
    if encoder == "mel":
        return mel_windows(samples, num_frames, fps, window)
    raise UserError(f"audio features '{encoder}' cannot be computed from new audio by this version; "
                    f"train with audio_encoder=mel to drive the head with arbitrary audio")
