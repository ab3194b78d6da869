"""A pretrained speech feature: phones recognised by pocketsphinx's US English acoustic model, as visemes.

pocketsphinx (BSD, on PyPI) ships its acoustic model, dictionary and a phone language model in the wheel, so
phone recognition with timings runs offline and needs no weight file. Its phone-loop search gives one best
phone sequence (no lattice, so no posteriors): each 10 ms row of the feature is the one-hot viseme of the
phone decoded there, plus the row's loudness. Visemes group the 39 phones of the CMU set by what the lips
do (closed for P/B/M, rounded for UW/W, open for AA/AH...), the units lip motion is made of.

Per video frame the features are a window of rows centred on the frame, as the mel features are, so the
head's audio network reads ``window`` x 10 ms of context (160 ms by default).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synctalk.audio.features import SAMPLE_RATE, frame_windows, mean_square_around
from synctalk.errors import UserError
from synctalk.external import require

ROWS_PER_SECOND = 100  # pocketsphinx's frame rate: one row every 10 ms
FRAME_CENTRE_ROWS = 1  # its frame i spans 25.6 ms from i x 10 ms: centred 1.3 rows after the row at i x 10 ms

#: visemes in feature order; each phone of the CMU set (pocketsphinx's en-us model) maps to one
VISEMES = ("silence", "closed", "lip_teeth", "tongue_teeth", "alveolar", "sibilant", "postalveolar", "velar",
           "rhotic", "rounded_close", "rounded_open", "open", "mid_spread", "close_spread")
_VISEME_PHONES = {
    "silence": ("SIL",),
    "closed": ("P", "B", "M"),
    "lip_teeth": ("F", "V"),
    "tongue_teeth": ("TH", "DH"),
    "alveolar": ("T", "D", "N", "L"),
    "sibilant": ("S", "Z"),
    "postalveolar": ("SH", "ZH", "CH", "JH"),
    "velar": ("K", "G", "NG", "HH"),
    "rhotic": ("R", "ER"),
    "rounded_close": ("W", "UW", "UH"),
    "rounded_open": ("AO", "OW", "OY"),
    "open": ("AA", "AH", "AE", "AW", "AY"),
    "mid_spread": ("EH", "EY"),
    "close_spread": ("IY", "IH", "Y"),
}
VISEME_OF_PHONE = {p: VISEMES.index(v) for v, phones in _VISEME_PHONES.items() for p in phones}
#: how far each viseme opens the jaw, 0 (closed) to 1, from phonetics and not fitted to any clip: lips shut for
#: P/B/M, teeth near together for F/V and the sibilants, vowels by their height (low AA/AE/AH widest, mid EH/AO/OW,
#: high IY/UW nearly closed)
JAW_OPENING = {"silence": 0.0, "closed": 0.0, "lip_teeth": 0.1, "tongue_teeth": 0.25, "alveolar": 0.25,
               "sibilant": 0.15, "postalveolar": 0.2, "velar": 0.35, "rhotic": 0.3, "rounded_close": 0.2,
               "rounded_open": 0.6, "open": 0.9, "mid_spread": 0.6, "close_spread": 0.3}
FEATURE_DIM = len(VISEMES) + 1  # the visemes and the loudness

LOUDNESS_WINDOW = 400  # samples (25 ms) per loudness row
LOUDNESS_RANGE_DB = 20.0  # loudness rows are dB below the clip's 95th percentile, in units of this
QUIETEST_REFERENCE_DB = -50.0  # dB of full scale: a clip quieter than this throughout is silence
SILENT_BELOW = -45.0 / LOUDNESS_RANGE_DB  # rows 45 dB below the clip's loud rows are silence, whatever was decoded


@dataclass(frozen=True)
class PhoneSegment:
    """One decoded phone: CMU phone name (``SIL`` for silence; noise such as ``+BREATH+`` as decoded) and its
    rows, ``start`` to ``end`` inclusive, in pocketsphinx frames of 10 ms."""

    phone: str
    start: int
    end: int


def _model_dir() -> Path:
    pocketsphinx = require("pocketsphinx", "audio_encoder=phones")
    folder = Path(pocketsphinx.get_model_path()) / "en-us"
    for part in ("en-us", "en-us-phone.lm.bin"):
        if not (folder / part).exists():
            raise UserError(f"the pocketsphinx package has no {folder / part}: reinstall it with "
                            f"'pip install --force-reinstall pocketsphinx' (its wheel ships the US English model)")
    return folder


def recognize_phones(samples: np.ndarray) -> list[PhoneSegment]:
    """The best phone sequence of 16 kHz ``samples`` under pocketsphinx's phone-loop search.

    Settings are CMU's for phone recognition: the phone bigram language model at weight 2 and wide beams.
    """
    pocketsphinx = require("pocketsphinx", "audio_encoder=phones")
    folder = _model_dir()
    decoder = pocketsphinx.Decoder(hmm=str(folder / "en-us"), allphone=str(folder / "en-us-phone.lm.bin"),
                                   lm=None, lw=2.0, beam=1e-20, pbeam=1e-20, samprate=SAMPLE_RATE,
                                   loglevel="ERROR")
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    return [PhoneSegment(s.word, int(s.start_frame), int(s.end_frame)) for s in decoder.seg()]


def viseme_rows(segments: list[PhoneSegment], num_rows: int) -> np.ndarray:
    """One-hot visemes of decoded phones, one row every 10 ms; rows no phone covers are silence.

    Returns:
        (num_rows, len(VISEMES)) float32.
    """
    labels = np.zeros(num_rows, np.int64)  # 0 = silence
    for seg in segments:
        lo, hi = seg.start + FRAME_CENTRE_ROWS, min(seg.end + FRAME_CENTRE_ROWS + 1, num_rows)
        if lo < hi:
            labels[lo:hi] = VISEME_OF_PHONE.get(seg.phone, 0)  # noise phones count as silence
    return np.eye(len(VISEMES), dtype=np.float32)[labels]


def loudness_rows(samples: np.ndarray, num_rows: int) -> np.ndarray:
    """Loudness every 10 ms, relative to the clip: RMS of 25 ms around each row in dB below the clip's 95th
    percentile (at least -50 dB of full scale), divided by 20 dB, in [-3, 0.5] (a recording's level does not
    matter).

    Returns:
        (num_rows,) float32.
    """
    centres = np.arange(num_rows) * (SAMPLE_RATE // ROWS_PER_SECOND)
    db = 10.0 * np.log10(mean_square_around(samples, centres, LOUDNESS_WINDOW) + 1e-10)
    reference = max(float(np.percentile(db, 95)), QUIETEST_REFERENCE_DB)
    return np.clip((db - reference) / LOUDNESS_RANGE_DB, -3.0, 0.5).astype(np.float32)


def phone_rows(samples: np.ndarray) -> tuple[np.ndarray, list[PhoneSegment]]:
    """The feature rows of 16 kHz ``samples``: visemes of the recognised phones and the loudness. Rows 45 dB
    below the clip's loud rows are silence whatever phone was decoded there.

    Returns:
        rows (ceil(len / 160), FEATURE_DIM) float32, one every 10 ms; the decoded phones.
    """
    if len(samples) < LOUDNESS_WINDOW:
        raise UserError(f"audio is {len(samples) / SAMPLE_RATE * 1000:.0f} ms long: phone recognition needs at "
                        f"least {LOUDNESS_WINDOW / SAMPLE_RATE * 1000:.0f} ms")
    num_rows = -(-len(samples) // (SAMPLE_RATE // ROWS_PER_SECOND))
    segments = recognize_phones(samples)
    visemes, loudness = viseme_rows(segments, num_rows), loudness_rows(samples, num_rows)
    visemes[loudness < SILENT_BELOW] = np.eye(len(VISEMES), dtype=np.float32)[0]  # digital silence decodes as S
    return np.concatenate([visemes, loudness[:, None]], axis=1), segments


def phone_features(samples: np.ndarray, num_frames: int, fps: float, window: int = 16) -> np.ndarray:
    """Viseme and loudness rows around every video frame (``audio_encoder=phones``).

    Returns:
        (num_frames, window, FEATURE_DIM) float32.
    """
    rows, _ = phone_rows(samples)
    return frame_windows(rows, num_frames, fps, window, ROWS_PER_SECOND)


def frame_opening(visemes: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
    """The jaw opening the visemes of 10 ms rows (rows, len(VISEMES)) imply at each video frame: the mean
    :data:`JAW_OPENING` of the rows inside the frame's 1 / fps; 0 (silence) for frames past the rows.

    Returns:
        (num_frames,) float64 in [0, 1].
    """
    per_row = np.asarray(visemes, np.float64) @ np.array([JAW_OPENING[v] for v in VISEMES])
    edges = np.clip(np.round(np.arange(num_frames + 1) / fps * ROWS_PER_SECOND).astype(int), 0, len(per_row))
    sums = np.concatenate([[0.0], np.cumsum(per_row)])
    counts = np.diff(edges)
    return np.where(counts > 0, (sums[edges[1:]] - sums[edges[:-1]]) / np.maximum(counts, 1), 0.0)


def phone_opening(samples: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
    """How open the phones recognised in 16 kHz ``samples`` say the jaw is at each video frame
    (:func:`frame_opening` of :func:`phone_rows`): what a mouth speaking this audio should do, read from the
    audio alone. The recogniser is US English; other languages are read as the English phones nearest them.

    Returns:
        (num_frames,) float64 in [0, 1].
    """
    rows, _ = phone_rows(samples)
    return frame_opening(rows[:, :len(VISEMES)], num_frames, fps)
