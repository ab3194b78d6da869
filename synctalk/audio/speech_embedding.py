"""A speech feature pretrained on many speakers: Google's speech embedding, as the openWakeWord package ships it.

The speech embedding model (Google, Apache-2.0; "Training Keyword Spotters with Limited and Synthesized Speech
Data", Lin et al., ICASSP 2020) was trained for keyword spotting on a large multi-speaker corpus, so what it
keeps of speech is what words are made of, not who speaks. The ``openwakeword`` package (0.5.1, the last
release whose wheel carries its models; later ones download them) ships it, with the log-mel front end it
expects, as two ONNX files: no download, no weight file to configure. Only these two files are used, not
openWakeWord's own wake-word models (which are under CC BY-NC-SA 4.0).

The front end gives 32 mel bins every 10 ms (32 ms windows); the embedding reads 76 of those rows (782 ms)
and gives 96 values. Per video frame the feature is ``window`` embeddings whose windows are centred
``step_seconds`` apart around the frame's centre (8 x 40 ms by default: centres from -120 to +160 ms), so the
head's audio network sees how the embedding changes across the frame, as it sees mel rows change.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from synctalk.audio.features import SAMPLE_RATE
from synctalk.errors import UserError
from synctalk.external import require

FEATURE_DIM = 96  # values per embedding
MEL_HOP = 160  # samples between front-end rows (10 ms)
MEL_WINDOW = 512  # samples per front-end row (32 ms)
EMBEDDING_ROWS = 76  # front-end rows per embedding (782 ms)
EMBEDDING_SPAN = (EMBEDDING_ROWS - 1) * MEL_HOP + MEL_WINDOW  # samples one embedding hears
SCALE = 0.1  # the embedding's values spread over about +-60; scaled to the mel features' few units
PACKAGE = "openwakeword"
INSTALL = "pip install 'openwakeword==0.5.1' onnxruntime"


def model_dir(folder: str | Path | None = None) -> Path:
    """The folder that holds ``melspectrogram.onnx`` and ``embedding_model.onnx``: ``folder`` when given (for
    example a copy of openWakeWord's ``resources/models``), else the installed ``openwakeword`` package's."""
    if folder:
        where = Path(folder).expanduser()
        hint = "set audio_encoder.checkpoint to a folder holding melspectrogram.onnx and embedding_model.onnx"
    else:
        spec = importlib.util.find_spec(PACKAGE)  # located, not imported: its __init__ needs scikit-learn
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"audio_encoder=speech_embedding needs the speech embedding model that the "
                            f"'{PACKAGE}' package ships, which is not installed. Install it with: {INSTALL}")
        where = Path(list(spec.submodule_search_locations)[0]) / "resources" / "models"
        hint = f"install the release whose wheel carries them: {INSTALL}"
    for name in ("melspectrogram.onnx", "embedding_model.onnx"):
        if not (where / name).is_file():
            raise UserError(f"{where / name} not found: {hint}")
    return where


@lru_cache(maxsize=2)
def _sessions(folder: str | None):
    """The front end's and the embedding's onnxruntime sessions, loaded once per model folder (:func:`model_dir`)."""
    where = model_dir(folder)
    ort = require("onnxruntime", "audio_encoder=speech_embedding")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return tuple(ort.InferenceSession(str(where / name), options, providers=["CPUExecutionProvider"])
                     for name in ("melspectrogram.onnx", "embedding_model.onnx"))
    except Exception as e:  # onnxruntime raises its own exception types for a corrupt or foreign file
        raise UserError(f"cannot load the speech embedding model from {where}: {e}") from None


def front_end(samples: np.ndarray, folder: str | Path | None = None) -> np.ndarray:
    """The embedding model's log-mel rows of 16 kHz ``samples`` in [-1, 1].

    Returns:
        (R, 32) float32; row ``j`` hears samples ``[160 j, 160 j + 512)``.
    """
    mel, _ = _sessions(str(folder) if folder else None)
    pcm = (np.asarray(samples, np.float32) * 32767.0)[None]  # the model reads 16-bit sample values
    return (mel.run(None, {"input": pcm})[0].reshape(-1, 32) / 10.0 + 2.0).astype(np.float32)  # openWakeWord's scaling


def speech_embeddings(samples: np.ndarray, times: np.ndarray, folder: str | Path | None = None,
                      batch_size: int = 512) -> np.ndarray:
    """The speech embedding of the 782 ms of ``samples`` centred on each of ``times``.

    Args:
        samples: (T,) 16 kHz audio in [-1, 1].
        times: (M,) seconds; audio before the start or after the end is silence.
    Returns:
        (M, 96) float32, scaled by :data:`SCALE`.
    """
    pad = EMBEDDING_SPAN // 2 + MEL_HOP
    rows = front_end(np.concatenate([np.zeros(pad, np.float32), np.asarray(samples, np.float32),
                                     np.zeros(pad, np.float32)]), folder)
    # the window starting at row i is centred on sample 160 i + EMBEDDING_SPAN / 2 of the padded audio
    starts = np.round((np.asarray(times) * SAMPLE_RATE + pad - EMBEDDING_SPAN / 2) / MEL_HOP).astype(int)
    starts = np.clip(starts, 0, len(rows) - EMBEDDING_ROWS)
    unique, inverse = np.unique(starts, return_inverse=True)
    _, embed = _sessions(str(folder) if folder else None)
    out = []
    for first in range(0, len(unique), batch_size):
        chunk = unique[first:first + batch_size]
        windows = rows[chunk[:, None] + np.arange(EMBEDDING_ROWS)[None]][..., None]  # (B, 76, 32, 1)
        out.append(embed.run(None, {"input_1": windows})[0].reshape(len(chunk), FEATURE_DIM))
    return (np.concatenate(out)[inverse] * SCALE).astype(np.float32)


def speech_embedding_features(samples: np.ndarray, num_frames: int, fps: float, window: int = 8,
                              step_seconds: float = 0.04, folder: str | Path | None = None) -> np.ndarray:
    """Per video frame, ``window`` speech embeddings centred ``step_seconds`` apart around the frame's centre
    (frame ``k`` is centred at ``(k + 0.5) / fps`` s, as the mel windows are).

    Returns:
        (num_frames, window, 96) float32.
    """
    offsets = (np.arange(window) - (window - 1) // 2) * step_seconds  # 8: -3 .. +4 steps
    times = (np.arange(num_frames) + 0.5)[:, None] / fps + offsets[None]
    return speech_embeddings(samples, times.reshape(-1), folder).reshape(num_frames, window, FEATURE_DIM)
