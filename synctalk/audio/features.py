"""Audio input/output and the weight-free audio features (log-mel windows per video frame).

All audio inside the platform is 16 kHz mono float32 in [-1, 1].
"""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import torch
from scipy.signal import lfilter

from synctalk.errors import UserError

SAMPLE_RATE = 16000


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode any audio (or the audio track of a video) to mono float32 at ``sample_rate``.

    The audio of a video is placed on the frames' timeline, whose time 0 is the first video frame: a track that
    starts after it (a clip cut from a longer recording, a phone that starts the microphone late) is preceded by
    silence, one that starts before it loses what comes before, so the speech stays in sync with the frames.

    Returns:
        (T,) samples in [-1, 1]; sample ``j`` is heard at ``j / sample_rate`` seconds after the first video frame
        (after the first audio sample for a file without video).
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
            chunks, start = [], None
            for frame in container.decode(audio=0):
                if start is None:
                    start = float(frame.time) if frame.time is not None else 0.0
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        video_start = _first_video_frame_time(path)
    except av.error.FFmpegError as e:
        raise UserError(f"cannot decode audio from {path}: {e}") from None
    if not chunks:
        raise UserError(f"{path} contains no audio samples")
    samples = np.clip(np.concatenate(chunks).astype(np.float32), -1.0, 1.0)
    shift = round(((start or 0.0) - video_start) * sample_rate) if video_start is not None else 0
    return np.concatenate([np.zeros(shift, np.float32), samples]) if shift > 0 else samples[-shift:]


def _first_video_frame_time(path: Path) -> float | None:
    """Timestamp (s) of the first video frame of a file (None: no video, or no timestamp)."""
    import av

    with av.open(str(path)) as container:
        video = [v for v in container.streams.video if not v.disposition & av.stream.Disposition.attached_pic]
        if not video:
            return None
        for frame in container.decode(video[0]):
            if frame.time is not None:
                return float(frame.time)
    return None


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono float samples in [-1, 1] as 16-bit PCM wav."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())


def _hz_to_mel(f, scale: str):
    f = np.asarray(f, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    # Slaney: linear below 1 kHz, logarithmic above
    return np.where(f < 1000.0, 3.0 * f / 200.0, 15.0 + 27.0 * np.log(np.maximum(f, 1e-9) / 1000.0) / np.log(6.4))


def _mel_to_hz(m, scale: str):
    m = np.asarray(m, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    return np.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * np.exp((m - 15.0) * np.log(6.4) / 27.0))


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float, scale: str = "htk"
                   ) -> np.ndarray:
    """Triangular mel filters, shape (n_mels, n_fft // 2 + 1).

    ``scale="htk"``: peak-1 triangles on the HTK mel scale (the platform's own mel features).
    ``scale="slaney"``: area-normalised triangles on the Slaney mel scale, the filterbank of the
    lip-sync (Wav2Lip / SyncNet) mel spectrogram that the AVE encoder was trained on.
    """
    if scale not in ("htk", "slaney"):
        raise ValueError(f"mel scale must be htk or slaney, got {scale!r}")
    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin, scale), _hz_to_mel(fmax, scale), n_mels + 2), scale)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / (centre - lower)
    falling = (upper - freqs[None]) / (upper - centre)
    filters = np.maximum(0.0, np.minimum(rising, falling))
    if scale == "slaney":
        filters *= 2.0 / (upper - lower)
    return filters.astype(np.float32)


def log_mel(samples: np.ndarray, sample_rate: int = SAMPLE_RATE, n_mels: int = 80, hop_length: int = 160,
            n_fft: int = 800, fmin: float = 55.0, fmax: float = 7600.0, preemphasis: float = 0.0,
            mel_scale: str = "htk", pad_mode: str = "reflect") -> np.ndarray:
    """Log-mel spectrogram normalised to [-4, 4] (dB - 20, floor -100 dB).

    Returns:
        (T_mel, n_mels) with one row every ``hop_length`` samples (10 ms by default).
    """
    x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    if preemphasis:
        x = torch.cat([x[:1], x[1:] - preemphasis * x[:-1]])
    spec = torch.stft(x, n_fft, hop_length=hop_length, win_length=n_fft, window=torch.hann_window(n_fft),
                      center=True, pad_mode=pad_mode, return_complex=True).abs()  # (F, T)
    mel = torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax, mel_scale)) @ spec
    db = 20.0 * torch.log10(mel.clamp(min=1e-5)) - 20.0
    return ((db + 100.0) / 100.0 * 8.0 - 4.0).clamp(-4.0, 4.0).T.numpy()


def lipsync_mel(samples: np.ndarray) -> np.ndarray:
    """The mel spectrogram of the lip-sync models (AVE, SyncNet): pre-emphasis 0.97, 80 Slaney
    mel bins from 55 to 7600 Hz, 800-sample window, one row every 200 samples (80 rows/s).

    Returns:
        (T_mel, 80) in [-4, 4].
    """
    return log_mel(samples, hop_length=200, preemphasis=0.97, mel_scale="slaney", pad_mode="constant")


def mean_square_around(samples: np.ndarray, centres: np.ndarray, window: int) -> np.ndarray:
    """Mean square of the ``window`` samples centred on each of ``centres`` (sample indices), zeros outside the audio.

    Returns:
        (len(centres),) float64.
    """
    half = window // 2
    padded = np.pad(np.asarray(samples, np.float64), (half, window + max(0, int(centres.max()) - len(samples))))
    energy = np.cumsum(np.concatenate([[0.0], padded ** 2]))
    return (energy[centres + window] - energy[centres]) / window


SPEECH_LEVEL_PERCENTILE = 90  # the speech level: this percentile of the 40 ms frames' RMS


def speech_level_db(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """How loud the speech of ``samples`` is: the 90th percentile of the RMS of its 40 ms frames, in dB re full
    scale (speech is loud in most of its frames, so pauses and the noise floor hardly move it)."""
    frame = int(0.04 * sample_rate)
    count = max(len(samples) // frame, 1)
    frames = np.resize(np.asarray(samples, np.float64), count * frame).reshape(count, frame)
    rms = np.sqrt((frames ** 2).mean(1))
    return float(20 * np.log10(max(np.percentile(rms, SPEECH_LEVEL_PERCENTILE), 1e-9)))


def noise_floor(num_samples: int, level_db: float, seed: int) -> np.ndarray:
    """A steady noise floor of ``num_samples`` at an RMS of ``level_db`` dB re full scale, as a room, a microphone or
    a phone adds: Gaussian noise through a one-pole low-pass whose pole (0 to 0.95, from white to nearly brown
    noise) is drawn from ``seed``, as the noise itself is, so the same seed gives the same noise. (num_samples,)
    float64."""
    rng = np.random.default_rng(seed)
    pole = rng.uniform(0.0, 0.95)
    noise = lfilter([1.0], [1.0, -pole], rng.standard_normal(num_samples))
    return noise * 10 ** (level_db / 20) / max(float(noise.std()), 1e-12)


def frame_windows(rows: np.ndarray, num_frames: int, fps: float, window: int, rows_per_second: float
                  ) -> np.ndarray:
    """A window of feature rows centred on every video frame.

    Args:
        rows: (T, dim) features, row ``j`` at ``j / rows_per_second`` seconds.
    Returns:
        (num_frames, window, dim) float32; rows before the start or past the end repeat the edge row.
    """
    centres = np.round((np.arange(num_frames) + 0.5) / fps * rows_per_second).astype(int)
    idx = np.clip(centres[:, None] + np.arange(-(window // 2), window - window // 2)[None], 0, len(rows) - 1)
    return rows[idx].astype(np.float32)


def mel_windows(samples: np.ndarray, num_frames: int, fps: float, window: int = 16, n_mels: int = 80,
                sample_rate: int = SAMPLE_RATE, hop_length: int = 160) -> np.ndarray:
    """A window of log-mel rows centred on every video frame (:func:`frame_windows`).

    Returns:
        (num_frames, window, n_mels) float32.
    """
    mel = log_mel(samples, sample_rate, n_mels, hop_length)
    return frame_windows(mel, num_frames, fps, window, sample_rate / hop_length)


def frames_for_audio(samples: np.ndarray, fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Number of video frames that cover the audio (at least one frame of audio is required)."""
    n = int(np.floor(len(samples) / sample_rate * fps))
    if n < 1:
        raise UserError(f"audio is {len(samples) / sample_rate * 1000:.0f} ms long, shorter than one video frame "
                        f"({1000 / fps:.0f} ms at {fps:g} fps)")
    return n
