"""Lip sync measured without SyncNet: the mouth of the renders against the ground truth's, read by the same
face model on both, and a sync test.

The face reader is SyncTalk's Facial Animation Capturer, MediaPipe's Face Landmarker (``face_landmarker.task``):
its jaw and mouth blendshapes (:data:`MOUTH_BLENDSHAPES`) and its brow and eyelid ones
(:data:`UPPER_FACE_BLENDSHAPES`). Without the model file, FaceMesh's mouth opening and width (weight-free) stand in.

* ``mouth_corr``: per mouth coefficient, the Pearson correlation over the clip between render and ground truth,
  averaged with the ground truth's standard deviation as weight (the coefficients that move count);
  ``jaw_corr``: the same for ``jawOpen`` alone; ``mouth_error``: mean absolute difference x100.
* ``aue_upper`` / ``aue_lower`` (with the model): the AU error from the real blendshapes, mean absolute
  difference x100 of the upper-face and of the mouth sets.
* the sync test (:func:`sync_gap`): the same frames rendered with the audio shifted by +-``shift`` must
  match the ground truth's mouth worse than with the true audio. ``sync_gap`` = ``mouth_corr`` with the true
  audio minus its mean with the shifted audio; positive means the mouth follows this audio, 0 means it
  ignores it. ``sync_gap_gt`` is what the shift does to the ground truth itself (1 minus the correlation of
  its mouth with itself ``shift`` frames later), a scale for the gap.
* ``mouth_corr_low`` / ``_high``, ``sync_gap_low`` / ``_high`` (:func:`lip_sync_intervals`): 90% intervals of the
  two from the held-out frames' effective number (smooth mouths make neighbouring frames dependent), and
  :func:`lip_sync_verdict`, whether those frames show the mouth following the audio at all (a few dozen frames
  often cannot).
* a clip cross-validated (``data.folds``: one run per block of the clip, each holding out its block): the runs'
  held-out mouth readings (``mouth_signals.npz``, :func:`write_mouth_signals`) read together by
  :func:`pooled_lip_sync`, the whole clip held out; ``synctalk report`` of the fold sweep shows them.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from synctalk.face.blendshape_sets import BLENDSHAPE_NAMES, MOUTH_BLENDSHAPES, UPPER_FACE_BLENDSHAPES

log = logging.getLogger(__name__)

GEOMETRIC_MOUTH = ["mouth_open", "mouth_width"]
MIN_STD = 0.01  # a coefficient whose ground truth varies less than this is not scored for correlation


class FaceReader:
    """Reads face coefficients from clips: the Face Landmarker's blendshapes when ``landmarker`` is a model
    file, else FaceMesh's geometric measures."""

    def __init__(self, landmarker: Path | None):
        self.landmarker = landmarker
        self.source = "face_landmarker" if landmarker else "facemesh geometry"

    def read(self, clip: np.ndarray) -> dict[str, np.ndarray]:
        """(N, H, W, 3) RGB uint8 -> ``mouth`` (N, K) and, with the model, ``upper`` (N, U); NaN rows where no
        face was found."""
        if self.landmarker:
            from synctalk.face.expressions import face_landmarker_blendshapes

            bs = face_landmarker_blendshapes(iter(clip), len(clip), self.landmarker, fps=None, progress=False)
            cols = {n: i for i, n in enumerate(BLENDSHAPE_NAMES)}
            return {"mouth": bs[:, [cols[n] for n in MOUTH_BLENDSHAPES]],
                    "upper": bs[:, [cols[n] for n in UPPER_FACE_BLENDSHAPES]]}
        from synctalk.face.expressions import face_action_measures
        from synctalk.face.landmark_detectors import FaceMesh

        measures = face_action_measures(FaceMesh().detect(iter(clip), len(clip), progress=False))
        return {"mouth": np.stack([measures[k] for k in GEOMETRIC_MOUTH], 1)}

    @property
    def mouth_names(self) -> list[str]:
        return MOUTH_BLENDSHAPES if self.landmarker else GEOMETRIC_MOUTH


def correlation(pred: np.ndarray, gt: np.ndarray) -> float:
    """Pearson correlation per column of (N, K) signals, averaged with the ground truth's standard deviation as
    weight, over the rows where both are finite and the columns where the ground truth varies (NaN if none)."""
    both = np.isfinite(pred).all(1) & np.isfinite(gt).all(1)
    pred, gt = pred[both], gt[both]
    if len(pred) < 3:
        return float("nan")
    std_p, std_g = pred.std(0), gt.std(0)
    live = std_g >= MIN_STD
    if not live.any():
        return float("nan")
    cov = ((pred - pred.mean(0)) * (gt - gt.mean(0))).mean(0)
    corr = np.where(std_p > 1e-9, cov / np.maximum(std_p * std_g, 1e-12), 0.0)
    return float(np.average(corr[live], weights=std_g[live]))


def jaw_correlation(pred: np.ndarray, gt: np.ndarray, names: list[str] = MOUTH_BLENDSHAPES) -> float:
    """``jaw_corr``: :func:`correlation` of the ``jawOpen`` column alone of (N, K) mouth signals whose columns are
    ``names``."""
    jaw = [names.index("jawOpen")]
    return correlation(pred[:, jaw], gt[:, jaw])


def mouth_agreement(pred: dict, gt: dict, names: list[str]) -> dict[str, float]:
    """``mouth_corr``, ``mouth_error`` (x100) and, for blendshapes, ``jaw_corr`` of read clips
    (:meth:`FaceReader.read`)."""
    p, g = pred["mouth"], gt["mouth"]
    both = np.isfinite(p).all(1) & np.isfinite(g).all(1)
    if not both.any():
        raise ValueError("no frame where the face reader finds a face in both clips")
    out = {"mouth_corr": correlation(p, g), "mouth_error": float(100 * np.abs(p[both] - g[both]).mean()),
           "mouth_face_found": float(both.mean())}
    if "jawOpen" in names:
        out["jaw_corr"] = jaw_correlation(p, g, names)
    return out


def blendshape_au_errors(pred: dict, gt: dict) -> dict[str, float]:
    """``aue_upper`` and ``aue_lower``: mean absolute blendshape difference x100 of the upper-face set and of
    the mouth set, over frames with a face in both clips (needs the Face Landmarker's reading)."""
    out = {}
    for key, part in (("aue_upper", "upper"), ("aue_lower", "mouth")):
        p, g = pred[part], gt[part]
        both = np.isfinite(p).all(1) & np.isfinite(g).all(1)
        if both.any():
            out[key] = float(100 * np.abs(p[both] - g[both]).mean())
    return out


def sync_gap(true_corr: float, shifted_corrs: list[float], gt_mouth: np.ndarray, shift: int) -> dict[str, float]:
    """The sync test's numbers from the mouth correlations with the true and the shifted audio.

    Args:
        gt_mouth: (N, K) the ground truth's mouth signals; shift: the audio shift in frames.
    """
    out = {"sync_gap": float(true_corr - np.mean(shifted_corrs)), "mouth_corr_shifted": float(np.mean(shifted_corrs))}
    if shift < len(gt_mouth) - 2:
        out["sync_gap_gt"] = float(1 - correlation(gt_mouth[shift:], gt_mouth[:-shift]))
    return out


INTERVAL_LEVEL = 0.9  # the confidence of the held-out frames' intervals


def effective_frames(pred: np.ndarray, gt: np.ndarray) -> float:
    """How many independent frames a correlation of two smooth (N, K) signals rests on (Bartlett's effective
    sample size: N / (1 + 2 sum_k (1 - k/N) r_pred(k) r_gt(k)) over lags up to N/4, the autocorrelations of the
    two signals), averaged over the columns with the ground truth's standard deviation as weight, as
    :func:`correlation` averages. Neighbouring frames of a mouth are far from independent: 19 frames at 25 fps
    count as a few."""
    both = np.isfinite(pred).all(1) & np.isfinite(gt).all(1)
    pred, gt = pred[both], gt[both]
    n = len(gt)
    if n < 3:
        return float(n)
    lags = np.arange(1, max(n // 4, 1) + 1)

    def autocorrelation(x: np.ndarray) -> np.ndarray:  # (n, K) -> (lags, K)
        x = x - x.mean(0)
        var = np.maximum((x * x).sum(0), 1e-12)
        return np.stack([(x[:-lag] * x[lag:]).sum(0) / var for lag in lags])

    weights = (1 - lags / n)[:, None]
    inflation = 1 + 2 * (weights * autocorrelation(pred) * autocorrelation(gt)).sum(0)
    std_g = gt.std(0)
    live = std_g >= MIN_STD
    if not live.any():
        return float(n)
    per_column = n / np.maximum(inflation[live], 1.0)
    return float(np.average(per_column, weights=std_g[live]))


def lip_sync_intervals(pred_mouth: np.ndarray, gt_mouth: np.ndarray, shifted_mouths: list[np.ndarray],
                       level: float = INTERVAL_LEVEL) -> dict[str, float]:
    """How far ``mouth_corr`` and ``sync_gap`` of a few held-out frames can be trusted: ``level`` intervals from
    Fisher's z with the frames' effective number (:func:`effective_frames`); the sync gap's from the two
    correlations' errors taken as independent (their shared ground truth makes the true error smaller, so the
    interval errs wide).

    Args:
        pred_mouth, gt_mouth: (N, K) mouth signals of the renders and of the ground truth.
        shifted_mouths: (N, K) mouth signals of the renders with the audio shifted (the sync test; may be empty).
    Returns:
        ``mouth_corr_low``, ``mouth_corr_high``, ``effective_frames`` and, with shifted renders, ``sync_gap_low``,
        ``sync_gap_high``; empty when the correlation is undefined. With 3 effective frames or fewer the
        intervals are the whole range.
    """
    from scipy.stats import norm

    corr = correlation(pred_mouth, gt_mouth)
    if not np.isfinite(corr):
        return {}
    frames = effective_frames(pred_mouth, gt_mouth)
    z = norm.ppf(0.5 + level / 2)

    def error(r: float) -> float:  # the standard error of a correlation r, Fisher's z mapped back at r
        return (1 - r * r) / np.sqrt(frames - 3) if frames > 3 else np.inf

    def bounds(r: float) -> tuple[float, float]:
        if frames <= 3:
            return -1.0, 1.0
        centre, half = np.arctanh(np.clip(r, -0.999999, 0.999999)), z / np.sqrt(frames - 3)
        return float(np.tanh(centre - half)), float(np.tanh(centre + half))

    low, high = bounds(corr)
    out = {"mouth_corr_low": low, "mouth_corr_high": high, "effective_frames": frames}
    if shifted_mouths:
        shifted = [correlation(s, gt_mouth) for s in shifted_mouths]
        gap, half = corr - float(np.mean(shifted)), z * np.hypot(error(corr), error(float(np.mean(shifted))))
        out.update(sync_gap_low=float(max(gap - half, -2.0)), sync_gap_high=float(min(gap + half, 2.0)))
    return out


def lip_sync_verdict(metrics: dict) -> str | None:
    """One line on whether the held-out frames show the mouth following the audio, from the sync test and its
    interval (:func:`lip_sync_intervals`); None without the sync test."""
    if "sync_gap" not in metrics:
        return None
    gap, low, high = metrics["sync_gap"], metrics.get("sync_gap_low", np.nan), metrics.get("sync_gap_high", np.nan)
    scale = f" (the ground truth's own {metrics['sync_gap_gt']:.2f})" if "sync_gap_gt" in metrics else ""
    where = f"sync gap {gap:.2f}, {INTERVAL_LEVEL:.0%} interval {low:.2f} to {high:.2f}{scale}"
    if low > 0:
        return f"the mouth follows the audio: {where}"
    if high <= 0:
        return f"the mouth ignores the audio: {where}"
    return f"these held-out frames cannot tell whether the mouth follows the audio: {where}"


def write_mouth_signals(path: Path, img_ids: np.ndarray, pred_mouth: np.ndarray, gt_mouth: np.ndarray,
                        shifted_mouths: list[np.ndarray], shift: int) -> None:
    """Save a lip-sync test's readings: ``img_ids`` (N,), ``pred`` and ``gt`` (N, K) mouth signals, ``shifted``
    (S, N, K) with the audio shifted by +-``shift`` frames (S = 0 without the sync test)."""
    from synctalk.io import atomic_path

    shifted = np.stack(shifted_mouths) if shifted_mouths else np.zeros((0, *pred_mouth.shape), pred_mouth.dtype)
    with atomic_path(path) as tmp:
        np.savez(tmp, img_ids=np.asarray(img_ids), pred=pred_mouth, gt=gt_mouth, shifted=shifted, shift=shift)


def pooled_lip_sync(paths: list[Path]) -> dict:
    """``mouth_corr``, the sync test and their intervals over the held-out frames of several runs read as one
    clip in time order (the folds of a cross-validated clip, each run's held-out block rendered by its own head):
    :func:`correlation`, :func:`sync_gap`, :func:`lip_sync_intervals` and :func:`lip_sync_verdict` as one run's
    evaluation computes them, on all the frames, with each run's signals centred on their own means first.

    One run's correlation is taken about the means of its own held-out frames; each fold is a separate head whose
    mouth coefficients sit at a level of their own, so the runs' signals are centred run by run (the pooled
    within-run correlation): a head that follows the audio within its block scores the same whatever level the
    other folds' heads sit at, and the clip's slow changes from block to block, which no single run is scored
    on, do not count.

    Args: paths: ``mouth_signals.npz`` files (:func:`write_mouth_signals`), with the same mouth coefficients.
    Returns: ``frames``, ``runs``, ``mouth_corr``, ``jaw_corr`` (blendshapes only), ``sync_gap`` (when every run
        has the sync test), the intervals and ``lip_sync_verdict``; ``overlapping_frames`` counts frames held out by
        more than one run.
    """
    parts = []
    for path in paths:  # each array read once (an .npz file reads an array from the archive at every access)
        with np.load(path) as signals:
            parts.append(dict(signals))
    if not parts:
        raise ValueError("no mouth_signals.npz to pool")
    if len({part["pred"].shape[1] for part in parts}) > 1:
        raise ValueError("the runs read different mouth coefficients (Face Landmarker in some, FaceMesh in others)")
    ids = np.concatenate([part["img_ids"] for part in parts])
    order = np.argsort(ids, kind="stable")

    def pooled(key: str, index: int | None = None) -> np.ndarray:  # (N, K): every run's signal on its own mean
        signals = [part[key] if index is None else part[key][index] for part in parts]
        return np.concatenate([_centred(s, part["pred"], part["gt"]) for s, part in zip(signals, parts)])[order]

    pred, gt = pooled("pred"), pooled("gt")
    out: dict = {"frames": int(len(ids)), "runs": len(parts), "overlapping_frames": int(len(ids) - len(set(ids)))}
    out["mouth_corr"] = correlation(pred, gt)
    if pred.shape[1] == len(MOUTH_BLENDSHAPES):  # the Face Landmarker's reading (FaceMesh's has no jawOpen)
        out["jaw_corr"] = jaw_correlation(pred, gt)
    shifted: list[np.ndarray] = []
    shifts = {int(part["shift"]) for part in parts}
    if all(len(part["shifted"]) for part in parts) and len(shifts) == 1:
        shifted = [pooled("shifted", s) for s in range(min(len(part["shifted"]) for part in parts))]
        out.update(sync_gap(out["mouth_corr"], [correlation(m, gt) for m in shifted], gt, shifts.pop()))
    out.update(lip_sync_intervals(pred, gt, shifted))
    verdict = lip_sync_verdict(out)
    if verdict:
        out["lip_sync_verdict"] = verdict
    return out


def _centred(signal: np.ndarray, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N, K) ``signal`` less its mean over the frames where it, ``pred`` and ``gt`` all have a face (the frames
    :func:`correlation` reads); NaN rows stay NaN."""
    rows = np.isfinite(signal).all(1) & np.isfinite(pred).all(1) & np.isfinite(gt).all(1)
    return signal - (signal[rows].mean(0) if rows.any() else 0.0)


LOUDNESS_WINDOW_S = 0.1  # the loudness of a frame: RMS over 100 ms centred on it
LOUDNESS_FLOOR_DB = -40.0  # below the clip's loudest frame; quieter frames count as this
PAUSE_DB = -30.0  # frames quieter than this (dB below the loudest frame) are pauses, the others speech
MIN_PAUSE_FRAMES = 5  # fewer pause (or speech) frames with a face: no pause measure
PAUSE_EDGE_FRAMES = 4  # frames this near a change between speech and pause count as neither (2 smoothing sigmas)
SMOOTHING_FRAMES = 2.0  # Gaussian sigma applied to the mouth opening and the loudness before they are compared


def loudness_per_frame(samples: np.ndarray, num_frames: int, fps: float, sample_rate: int = 16000) -> np.ndarray:
    """The audio's loudness at every video frame: RMS over 100 ms centred on the frame, in dB below the clip's
    loudest frame, floored at -40 dB.

    Returns:
        (num_frames,) float64, in [-40, 0].
    """
    from synctalk.audio.features import mean_square_around

    centres = np.round((np.arange(num_frames) + 0.5) / fps * sample_rate).astype(int)
    window = 2 * int(LOUDNESS_WINDOW_S * sample_rate / 2)
    db = 20.0 * np.log10(np.sqrt(mean_square_around(samples, centres, window)) + 1e-9)
    return np.maximum(db - db.max(), LOUDNESS_FLOOR_DB)


def mouth_opening(reading: dict, names: list[str]) -> np.ndarray:
    """How open the mouth is per frame, from a :meth:`FaceReader.read` result: ``jawOpen`` (Face Landmarker)
    or the lips' gap (FaceMesh geometry). (N,), NaN where no face was found."""
    column = names.index("jawOpen") if "jawOpen" in names else names.index("mouth_open")
    return reading["mouth"][:, column]


def mouth_follows_audio(clip: np.ndarray, samples: np.ndarray, fps: float, reader: FaceReader,
                        branch_opening: np.ndarray | None = None, replayed_opening: np.ndarray | None = None) -> dict:
    """Whether a clip's mouth opens with its audio, over the frames with a face: the mouth opening
    (:func:`mouth_opening`) against the audio's loudness and the opening its recognised phones imply, over all
    frames and over the speech alone, and how much more open it is in speech than in pauses
    (:func:`opening_against_audio`). Real footage of speech gives the scale (its own mouth with its own audio); a
    head driven by new audio should come near it.

    Args:
        clip: (N, H, W, 3) RGB uint8 frames; samples: their audio, 16 kHz, starting with the first frame.
        branch_opening: (N,) another reading of the mouth to score against the phones (the head's audio branch).
        replayed_opening: (N,) the footage's own ``jawOpen`` at the frames whose poses a render replays.
    Returns:
        ``mouth_loudness_corr``, ``mouth_phone_corr``, ``mouth_phone_corr_in_speech``, ``mouth_pause_opening``,
        ``mouth_opening_sd`` (how far the opening moves: its standard deviation), ``mouth_frames_with_face``,
        ``mouth_source``; with ``branch_opening``, the same four of it (``audio_branch_phone_corr``,
        ``audio_branch_phone_corr_in_speech``, ...: whether the audio branch reads each syllable where the
        rendered mouth does not); with ``replayed_opening``, ``mouth_replayed_corr`` (the mouth against the
        footage's mouth at the replayed poses: high when a head draws the mouth from the pose, not the audio).
    """
    from synctalk.audio.phones import phone_opening

    opening = mouth_opening(reader.read(clip), reader.mouth_names)
    phones = phone_opening(samples, len(clip), fps)
    face = np.isfinite(opening)
    out = {**opening_against_audio(opening, samples, fps, "mouth", phones),
           "mouth_opening_sd": float(opening[face].std()) if face.any() else float("nan"),
           "mouth_frames_with_face": int(face.sum()), "mouth_source": reader.source}
    if branch_opening is not None:
        out.update(opening_against_audio(np.asarray(branch_opening, np.float64), samples, fps, "audio_branch", phones))
    if replayed_opening is not None:
        out["mouth_replayed_corr"] = opening_correlation(opening, replayed_opening)
    return out


def opening_against_audio(opening: np.ndarray, samples: np.ndarray, fps: float, prefix: str,
                          phones: np.ndarray | None = None) -> dict:
    """A mouth opening (N,) (NaN where no face was read) against its audio (16 kHz, starting with frame 0):

    - ``<prefix>_loudness_corr``, ``<prefix>_phone_corr``: its correlation (:func:`opening_correlation`) with the
      loudness (:func:`loudness_per_frame`) and with the opening the recognised phones imply
      (:func:`synctalk.audio.phones.phone_opening`), over all frames: speech against pauses weighs in as much as
      each syllable;
    - ``<prefix>_phone_corr_in_speech``: the same with the phones over the speech frames only (louder than
      :data:`PAUSE_DB` below the loudest frame, and :data:`PAUSE_EDGE_FRAMES` or more from a pause, out of the
      smoothing's reach): whether the mouth opens with each syllable;
    - ``<prefix>_pause_opening``: how much more open the mouth is, on average, in speech than in pauses (``jawOpen``
      units; negative: open in the pauses, closed in the speech), both :data:`PAUSE_EDGE_FRAMES` or more from a
      change; NaN with fewer than :data:`MIN_PAUSE_FRAMES` such pause or speech frames.

    ``phones`` (N,): the phones' opening when already computed.
    """
    from scipy.ndimage import binary_erosion

    from synctalk.audio.phones import phone_opening

    loudness = loudness_per_frame(samples, len(opening), fps)
    phones = phone_opening(samples, len(opening), fps) if phones is None else phones
    speech = loudness >= PAUSE_DB
    inner = np.ones(2 * PAUSE_EDGE_FRAMES + 1, bool)
    in_speech = binary_erosion(speech, inner, border_value=1)
    in_pause = binary_erosion(~speech, inner, border_value=1)
    face = np.isfinite(opening)
    enough = min((face & in_speech).sum(), (face & in_pause).sum()) >= MIN_PAUSE_FRAMES
    return {f"{prefix}_loudness_corr": opening_correlation(opening, loudness),
            f"{prefix}_phone_corr": opening_correlation(opening, phones),
            f"{prefix}_phone_corr_in_speech": opening_correlation(opening, phones, in_speech),
            f"{prefix}_pause_opening": float(opening[face & in_speech].mean() - opening[face & in_pause].mean())
            if enough else float("nan")}


def opening_correlation(opening: np.ndarray, reference: np.ndarray, frames: np.ndarray | None = None) -> float:
    """Pearson correlation of a mouth opening (N,) (NaN where no face was read, filled from the neighbours for the
    smoothing and then left out) with a reading of the audio per frame (N,) (its loudness, its phones' opening),
    both Gaussian-smoothed by :data:`SMOOTHING_FRAMES`, over the frames with a face (and in ``frames`` (N,) bool,
    when given: the smoothing still sees the others); NaN when fewer than 3 frames count or either does not vary."""
    from scipy.ndimage import gaussian_filter1d

    face = np.isfinite(opening)
    if face.sum() < 3:
        return float("nan")
    index = np.arange(len(opening))
    filled = np.interp(index, index[face], opening[face])
    if frames is not None:
        face = face & np.asarray(frames, bool)
        if face.sum() < 3:
            return float("nan")
    a = gaussian_filter1d(filled, SMOOTHING_FRAMES)[face]
    b = gaussian_filter1d(np.asarray(reference, np.float64), SMOOTHING_FRAMES)[face]
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


FOOTAGE_MEASURE_VERSION = 1  # raise when opening_against_audio changes, so that kept footage measures are redone


def footage_jaw_open(root: Path) -> np.ndarray | None:
    """The dataset's ``jawOpen`` per frame (``bs.npy``, the blendshapes stage's reading of every frame), (N,)
    float64; None without ``bs.npy``."""
    from synctalk.data.layout import DatasetLayout

    path = DatasetLayout(Path(root)).blendshapes
    return np.load(path)[:, BLENDSHAPE_NAMES.index("jawOpen")].astype(np.float64) if path.is_file() else None


def dataset_mouth_audio(root: Path, fps: float) -> dict:
    """The scale of :func:`mouth_follows_audio` on the footage a head was trained on: the dataset's ``jawOpen``
    (``bs.npy``, the blendshapes stage's reading of every frame) against the loudness and the phones of its
    ``aud.wav``.

    The phone recognition takes about a quarter of the audio's duration, so the result is kept in the dataset
    (``mouth_audio.json``, keyed by the two files' contents and ``fps``) and read back while they are unchanged; a
    dataset folder that cannot be written is measured every time.

    Returns:
        ``dataset_mouth_loudness_corr``, ``dataset_mouth_phone_corr``, ``dataset_mouth_phone_corr_in_speech``,
        ``dataset_mouth_pause_opening`` (:func:`opening_against_audio`), ``dataset_mouth_opening_sd`` (the standard
        deviation of its ``jawOpen``); NaN when the dataset lacks either file.
    """
    import hashlib

    from synctalk.audio.features import load_audio
    from synctalk.data.layout import DatasetLayout
    from synctalk.io import read_json, write_json

    layout = DatasetLayout(Path(root))
    jaw = footage_jaw_open(root)
    if jaw is None or not layout.audio.is_file():
        return {f"dataset_mouth_{key}": float("nan") for key in (
            "loudness_corr", "phone_corr", "phone_corr_in_speech", "pause_opening", "opening_sd")}
    key = {"fps": float(fps), "measure_version": FOOTAGE_MEASURE_VERSION,
           **{p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in (layout.audio, layout.blendshapes)}}
    if layout.mouth_audio.is_file():
        try:
            kept = read_json(layout.mouth_audio)
            if kept.get("key") == key:
                return {k: float(v) for k, v in kept["measures"].items()}
        except (ValueError, KeyError, AttributeError, TypeError):
            pass  # unreadable: measured again and written over
    measures = {**opening_against_audio(jaw, load_audio(layout.audio), fps, "dataset_mouth"),
                "dataset_mouth_opening_sd": float(jaw.std())}
    try:
        write_json(layout.mouth_audio, {"key": key, "measures": measures})
    except OSError as error:
        log.info("the footage's mouth measure is not kept (%s): it is measured again by the next render", error)
    return measures


READOUT_BLOCKS = 5  # contiguous blocks of a clip, each held out once, in the audio read-out
READOUT_STRENGTH = 1000.0  # its ridge penalty on standardised features
#: a clip whose audio reads its own mouth under this has not taught the recipe's heads to follow the audio: over
#: whole clips cross-validated they came out 0.04-0.18 above the read-out (docs/lip_sync.md, "Before training")
READOUT_WEAK = 0.35


def ridge(x: np.ndarray, y: np.ndarray, strength: float):
    """The ridge regression y (M, K) ~ x (M, D) on standardised columns: returns the map (L, D) -> (L, K). With
    fewer rows than columns it is solved in its dual form (an M x M system; the same map)."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    xn, y_mean = (x - mean) / std, y.mean(0)
    if len(x) < x.shape[1]:
        w = xn.T @ np.linalg.solve(xn @ xn.T + strength * np.eye(len(x)), y - y_mean)
    else:
        w = np.linalg.solve(xn.T @ xn + strength * np.eye(x.shape[1]), xn.T @ (y - y_mean))
    return lambda z: ((z - mean) / std) @ w + y_mean


def readout_predictions(features: np.ndarray, mouth: np.ndarray, blocks: int = READOUT_BLOCKS,
                        strength: float = READOUT_STRENGTH) -> tuple[np.ndarray, np.ndarray]:
    """The audio read-out's held-out predictions: a ridge map from each frame's audio window to that frame's mouth
    coefficients, fitted on all but one of ``blocks`` contiguous blocks of the clip and applied to that block, each
    block held out once.

    Args:
        features: (N, ...) each frame's audio features (e.g. ``aud_whisper.npy``, (N, 8, 384)).
        mouth: (N, K) the mouth coefficients (e.g. the 27 jaw and mouth blendshapes); NaN rows (no face) are left out.
    Returns:
        (M, K) predictions and (M, K) the mouth they predict, over the M frames with a face; both empty (0, K) with
        fewer than 4 such frames per block.
    """
    x = np.asarray(features, np.float64).reshape(len(features), -1)
    y = np.asarray(mouth, np.float64)
    face = np.isfinite(y).all(1) & np.isfinite(x).all(1)
    x, y = x[face], y[face]
    if len(y) < 4 * blocks:
        return np.empty((0, y.shape[1])), np.empty((0, y.shape[1]))
    pred = np.empty_like(y)
    for held in np.array_split(np.arange(len(y)), blocks):
        pred[held] = ridge(np.delete(x, held, 0), np.delete(y, held, 0), strength)(x[held])
    return pred, y


def audio_mouth_readout(features: np.ndarray, mouth: np.ndarray, blocks: int = READOUT_BLOCKS,
                        strength: float = READOUT_STRENGTH) -> float:
    """How much of a clip's mouth its own audio carries, before any head is trained: the held-out predictions of
    :func:`readout_predictions` (same arguments) scored as ``mouth_corr`` is (:func:`correlation`); NaN with fewer
    than 4 frames with a face per block."""
    return correlation(*readout_predictions(features, mouth, blocks, strength))


def dataset_audio_readout(root: Path, audio_name: str) -> dict[str, float | None] | None:
    """:func:`audio_mouth_readout` of a dataset: its ``aud_<audio_name>.npy`` against the jaw and mouth blendshapes of
    its ``bs.npy``, every frame. Returns ``audio_mouth_readout`` (all 27, as ``mouth_corr`` scores them) and
    ``audio_jaw_readout`` (``jawOpen`` alone, as ``jaw_corr``; None where the jaw hardly moves); None without either
    file, when they cover different frame counts, or with too few frames."""
    from synctalk.data.layout import DatasetLayout
    from synctalk.face.blendshape_sets import load_mouth_targets

    layout = DatasetLayout(Path(root))
    path = layout.audio_features(audio_name)
    mouth = load_mouth_targets(layout.root)
    if mouth is None or not path.is_file():
        return None
    features = np.load(path, mmap_mode="r")
    if features.ndim < 2 or len(features) != len(mouth):
        return None
    pred, truth = readout_predictions(features, mouth)
    whole = correlation(pred, truth)
    if not np.isfinite(whole):
        return None
    jaw = jaw_correlation(pred, truth)
    return {"audio_mouth_readout": round(whole, 4), "audio_jaw_readout": round(jaw, 4) if np.isfinite(jaw) else None}


def report_audio_readout(root: Path, audio_name: str) -> dict[str, float | None]:
    """:func:`dataset_audio_readout`, logged (by ``synctalk preprocess`` when the dataset is ready and by ``synctalk
    train`` before it trains), as a warning when the whole mouth reads under :data:`READOUT_WEAK`. Both keys are
    None (and nothing is logged) for a dataset without ``bs.npy`` or those features."""
    readout = dataset_audio_readout(root, audio_name)
    if readout is None:
        return {"audio_mouth_readout": None, "audio_jaw_readout": None}
    mouth, jaw = readout["audio_mouth_readout"], readout["audio_jaw_readout"]
    jaw_text = f"its jaw opening (jawOpen) at {jaw:.2f}" if jaw is not None else "its jaw hardly moves"
    what = (f"the audio features (aud_{audio_name}.npy) read this clip's own mouth (bs.npy) at {mouth:.2f} and "
            f"{jaw_text} (audio_mouth_readout, audio_jaw_readout: a linear read-out, {READOUT_BLOCKS} blocks of the "
            "clip held out in turn)")
    if mouth < READOUT_WEAK:
        log.warning("%s; the mouth under %.2f: on the clips measured, heads trained on such a clip did not follow the "
                    "audio (cross-validated, their held-out mouth_corr came out 0.04-0.18 above the read-out; "
                    "docs/lip_sync.md, 'Before training'): more footage or another audio_encoder may read it better",
                    what, READOUT_WEAK)
    else:
        log.info("%s", what)
    return readout


STILL_MOUTH_MOTION = 0.25  # a driven mouth whose opening moves less than this share of the footage's hardly moves


def mouth_motion(measured: dict) -> float | None:
    """How far a driven head's mouth moves against its training footage's: ``mouth_opening_sd`` over
    ``dataset_mouth_opening_sd`` (:func:`mouth_follows_audio`, :func:`dataset_mouth_audio`). None unless the
    Face Landmarker read the render (FaceMesh's lip gap is not in ``jawOpen``'s units) and both vary."""
    render_sd = float(measured.get("mouth_opening_sd", np.nan))
    footage_sd = float(measured.get("dataset_mouth_opening_sd", np.nan))
    if measured.get("mouth_source") != "face_landmarker" or not np.isfinite(render_sd) or not footage_sd > 0:
        return None
    return render_sd / footage_sd
