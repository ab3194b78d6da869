"""Preprocessing stages that turn a video into the first files of a dataset folder:
frames, landmarks, parsing and background, GT and torso images, blendshapes, head poses and
the transforms json, audio and audio features.

Each stage writes its outputs atomically and then a marker ``.stages/<name>.json``
recording its settings; a stage whose marker matches is skipped, so an interrupted
preprocessing run resumes where it stopped. The source video is only read.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from synctalk.audio import SAMPLE_RATE, compute_features, load_audio, write_wav
from synctalk.data.blendshapes import BLENDSHAPE_NAMES
from synctalk.data.face_geometry import blendshapes_from_face_landmarker, blendshapes_from_mesh
from synctalk.data.landmarks import detect_mesh, fill_gaps, jitter, to_68
from synctalk.data.layout import DatasetLayout, Transforms, split_train_val
from synctalk.data.parsing import (HEAD, BackgroundAccumulator, PersonSegmenter, compose_gt_and_torso, face_oval_order,
                                   labels_from_classes, overlay, parse_frame, read_parsing, write_parsing)
from synctalk.config.schema import AudioConfig
from synctalk.errors import UserError
from synctalk.external import require_file
from synctalk.io import atomic_path, save_figure, subplots, write_json
from synctalk.stabilizer.pipeline import StabilizerOptions, region_masks, stabilize, transforms_jitter, truth_errors

log = logging.getLogger(__name__)


def probe_video(path: Path) -> dict:
    """Frame rate, size, duration and audio presence of a video file."""
    import av

    if not path.is_file():
        raise UserError(f"video not found: {path}")
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise UserError(f"{path} has no video stream")
            v = c.streams.video[0]
            rate = v.average_rate or v.guessed_rate
            duration = float(c.duration / 1e6) if c.duration else None
            return {"fps": float(rate) if rate else None, "width": v.codec_context.width,
                    "height": v.codec_context.height, "duration_s": duration, "has_audio": bool(c.streams.audio)}
    except av.error.FFmpegError as e:
        raise UserError(f"cannot read video {path}: {e}") from None


def ingest_frames(video: Path, out_dir: Path, fps: float, progress: bool = True) -> int:
    """Decode ``video`` and write frames resampled to ``fps`` as ``<out_dir>/<i>.jpg``.

    Frames are streamed (one in memory at a time); each output frame is the source frame
    shown at its timestamp, so variable frame rates are handled. Returns the frame count.
    """
    import av

    out_dir.mkdir(parents=True, exist_ok=True)
    step = Fraction(1) / Fraction(fps).limit_denominator(1001)
    written, next_t = 0, Fraction(0)
    try:
        with av.open(str(video)) as c:
            stream = c.streams.video[0]
            total = int(float(c.duration / 1e6) * fps) if c.duration else None
            bar = tqdm(total=total, desc="ingest frames", unit="frame", disable=not progress)
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            last, last_end = None, Fraction(0)

            def fill_until(t: Fraction) -> None:  # slots shown before time t take the previous frame
                nonlocal written, next_t
                while last is not None and next_t < t:
                    cv2.imwrite(str(out_dir / f"{written}.jpg"), last, [cv2.IMWRITE_JPEG_QUALITY, 95])
                    written, next_t = written + 1, next_t + step
                    bar.update()

            for frame in c.decode(stream):
                if frame.pts is None or frame.time_base is None:
                    continue
                t = Fraction(frame.pts) * frame.time_base
                fill_until(t)
                last = frame.to_ndarray(format="bgr24")
                shown = Fraction(frame.duration) * frame.time_base if frame.duration else 1 / Fraction(rate)
                last_end = t + shown
            fill_until(last_end)
            bar.close()
    except av.error.FFmpegError as e:
        raise UserError(f"{video} is corrupt or truncated ({e}); {written} frames were decoded") from None
    if written == 0:
        raise UserError(f"no frames could be decoded from {video}")
    return written


class StageRunner:
    """Runs named stages once; ``force`` redoes the named ones."""

    def __init__(self, root: Path, force: list[str] | None = None):
        self.root = root
        self.force = set(force or [])
        (root / ".stages").mkdir(parents=True, exist_ok=True)

    def done(self, name: str, settings: dict, outputs: list[Path]) -> bool:
        marker = self.root / ".stages" / f"{name}.json"
        return (name not in self.force and marker.is_file() and all(p.exists() for p in outputs)
                and json.loads(marker.read_text()).get("settings") == settings)

    def run(self, name: str, settings: dict, fn: Callable[[], dict], outputs: list[Path]) -> dict:
        """Run ``fn`` unless the stage is done with the same settings and its outputs exist; returns its report."""
        marker = self.root / ".stages" / f"{name}.json"
        if self.done(name, settings, outputs):
            log.info("stage %s: cached", name)
            return json.loads(marker.read_text())["report"]
        start = time.perf_counter()
        report = fn()
        report["elapsed_s"] = round(time.perf_counter() - start, 2)
        write_json(marker, {"settings": settings, "report": report})
        log.info("stage %s: %s", name, report)
        return report


def plot_blendshape_curves(bs: np.ndarray, fps: float, path: Path) -> None:
    """Save the blink, brow and jaw curves over time as a picture a person can check."""
    t = np.arange(len(bs)) / fps
    fig, ax = subplots(2, 1, figsize=(10, 4), sharex=True)
    for name in ("eyeBlinkLeft", "eyeBlinkRight"):
        ax[0].plot(t, bs[:, BLENDSHAPE_NAMES.index(name)], label=name)
    for name in ("browInnerUp", "jawOpen"):
        ax[1].plot(t, bs[:, BLENDSHAPE_NAMES.index(name)], label=name)
    for a in ax:
        a.set_ylim(-0.05, 1.05)
        a.legend(loc="upper right", fontsize=8)
    ax[1].set_xlabel("seconds")
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


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


def _stamp(path: Path) -> int | None:
    """Modification time of a stage output (None when absent)."""
    return path.stat().st_mtime_ns if path.exists() else None


@dataclass
class IngestOptions:
    """Settings of the preprocessing stages (see ``conf/preprocess.yaml``)."""

    fps: float = 25.0
    audio: AudioConfig = field(default_factory=AudioConfig)  # the audio_encoder config group
    force: list = field(default_factory=list)
    max_gap: int = 5
    max_missing_fraction: float = 0.1
    background_every: int = 20
    stabilizer: StabilizerOptions = field(default_factory=StabilizerOptions)
    overlay_every: int = 25
    face_landmarker: str | None = None
    ground_truth: str | None = None  # a synthetic subject's ground_truth.npz: the poses stage reports its errors
    parsing_backend: str = "mediapipe"
    bisenet_checkpoint: str | None = None
    progress: bool = True


def run_ingest(video: Path, root: Path, opts: IngestOptions) -> dict:
    """All stages for one video: ``frames``, ``landmarks``, ``parsing`` (with ``bc.jpg``), ``gt_images``,
    ``overlays``, ``blendshapes``, ``poses`` (the transforms json), ``audio`` and ``audio_features``."""
    fps, audio_encoder, window, progress = opts.fps, opts.audio.name, opts.audio.window, opts.progress
    info = probe_video(video)
    if not info["has_audio"]:
        raise UserError(f"{video} has no audio track: a talking-head dataset needs the speech")
    layout = DatasetLayout(root)
    runner = StageRunner(root, opts.force)
    source = {"video": str(video.resolve()), "size": video.stat().st_size, "mtime": video.stat().st_mtime_ns}

    def frame_count() -> int:
        return len(list((root / "ori_imgs").glob("*.jpg")))

    def frames() -> dict:
        with atomic_path(root / "ori_imgs") as tmp:
            n = ingest_frames(video, tmp, fps, progress)
        return {"frames": n, "source_fps": info["fps"], "width": info["width"], "height": info["height"]}

    def audio() -> dict:
        samples = load_audio(video)
        with atomic_path(layout.audio) as tmp:
            write_wav(tmp, samples)
        return {"seconds": len(samples) / SAMPLE_RATE}

    def features() -> dict:
        n = frame_count()
        if opts.audio.features_file:
            feats = import_features(Path(opts.audio.features_file), n, window, opts.audio.feature_dim)
        else:
            feats = compute_features(opts.audio, load_audio(layout.audio), n, fps, progress)
        if window == 1:  # one vector per frame is stored 2-D, as the original's aud_ave.npy
            feats = feats[:, 0]
        with atomic_path(layout.audio_features(audio_encoder)) as tmp:
            np.save(tmp, feats)
        return {"shape": list(feats.shape)}

    def landmarks() -> dict:
        n = frame_count()
        mesh = detect_mesh([layout.frame(i) for i in range(n)], progress)
        mesh, filled = fill_gaps(mesh, opts.max_gap, opts.max_missing_fraction)
        if filled:
            log.warning("no face in %d frame(s) (%s): interpolated from their neighbours", len(filled),
                        ", ".join(map(str, filled[:20])))
        lms = to_68(mesh)
        for i in range(n):
            with atomic_path(layout.landmarks(i)) as tmp:
                np.savetxt(tmp, lms[i], fmt="%.2f")
        with atomic_path(root / "landmarks_mesh.npy") as tmp:
            np.save(tmp, mesh)
        rigid = [36, 39, 42, 45, 27, 28]  # eye corners and nose bridge
        return {"frames": n, "interpolated": filled, "rigid_jitter_px": round(jitter(lms[:, rigid]), 3)}

    def parsing() -> dict:
        n, mesh, oval = frame_count(), np.load(root / "landmarks_mesh.npy"), face_oval_order()
        if opts.parsing_backend not in ("mediapipe", "bisenet"):
            raise UserError(f"preprocess.parsing.backend={opts.parsing_backend} is not one of mediapipe, bisenet")
        bisenet = None
        if opts.parsing_backend == "bisenet":
            from synctalk.models.face_parsing import BiSeNetParser
            bisenet = BiSeNetParser(opts.bisenet_checkpoint)
        background, head_fractions = None, []
        with (PersonSegmenter() as segmenter, atomic_path(root / "parsing") as parse_dir,
              atomic_path(root / "face_mask") as mask_dir):
            parse_dir.mkdir()
            mask_dir.mkdir()
            for i in tqdm(range(n), desc=f"parsing ({opts.parsing_backend})", unit="frame", disable=not progress):
                bgr = cv2.imread(str(layout.frame(i)))
                if background is None:
                    background = BackgroundAccumulator(margin_px=round(0.04 * bgr.shape[1]))
                jaw_shift = 4 * bgr.shape[1] / 512
                if bisenet is not None:
                    labels, face = labels_from_classes(bisenet(bgr), round(jaw_shift))
                else:
                    labels, face = parse_frame(segmenter(bgr), mesh[i], oval, jaw_shift=jaw_shift)
                write_parsing(parse_dir / f"{i}.png", labels)
                cv2.imwrite(str(parse_dir / f"{i}_face.png"), face.astype(np.uint8) * 255)
                cv2.imwrite(str(mask_dir / f"{i}.png"), (labels == HEAD).astype(np.uint8) * 255)
                if i % opts.background_every == 0:
                    background.add(bgr, labels)
                if i % 25 == 0:
                    head_fractions.append(float((labels == HEAD).mean()))
            try:
                bc, filled = background.result()
            except ValueError:
                raise UserError("the person covers the whole frame in every sampled frame: no static "
                                "background can be estimated") from None
            with atomic_path(layout.background) as tmp:
                cv2.imwrite(str(tmp), bc, [cv2.IMWRITE_JPEG_QUALITY, 95])
        return {"frames": n, "backend": opts.parsing_backend, "background_filled_fraction": round(filled, 4),
                "head_area_fraction": round(float(np.mean(head_fractions)), 4)}

    def gt_images() -> dict:
        n, bc = frame_count(), cv2.imread(str(layout.background)).astype(np.float32)
        with (PersonSegmenter() as segmenter, atomic_path(root / "gt_imgs") as gt_dir,
              atomic_path(root / "torso_imgs") as torso_dir):
            gt_dir.mkdir()
            torso_dir.mkdir()
            for i in tqdm(range(n), desc="gt images", unit="frame", disable=not progress):
                bgr = cv2.imread(str(layout.frame(i)))
                gt, torso = compose_gt_and_torso(bgr.astype(np.float32), read_parsing(layout.parsing(i)),
                                                 segmenter(bgr), bc, neck_gap_px=round(0.08 * bgr.shape[1]))
                cv2.imwrite(str(gt_dir / f"{i}.jpg"), gt, [cv2.IMWRITE_JPEG_QUALITY, 95])
                cv2.imwrite(str(torso_dir / f"{i}.png"), torso)
        return {"frames": n}

    frame_settings = {**source, "fps": fps}
    report = {"frames": runner.run("frames", frame_settings, frames, [root / "ori_imgs" / "0.jpg"])}
    report["landmarks"] = runner.run("landmarks", {**frame_settings, "max_gap": opts.max_gap,
                                                   "max_missing_fraction": opts.max_missing_fraction},
                                     landmarks, [root / "landmarks_mesh.npy", layout.landmarks(0)])
    # a stage depending on an earlier one records that stage's output time: redoing it redoes them
    report["parsing"] = runner.run("parsing", {"landmarks": _stamp(root / "landmarks_mesh.npy"),
                                               "background_every": opts.background_every,
                                               "backend": opts.parsing_backend,
                                               "bisenet_checkpoint": opts.bisenet_checkpoint}, parsing,
                                   [layout.parsing(0), layout.face_only_mask(0), layout.head_mask(0), layout.background])
    report["gt_images"] = runner.run("gt_images", {"background": _stamp(layout.background)}, gt_images,
                                     [layout.gt_image(0), layout.torso_image(0)])
    def overlays() -> dict:
        every = max(1, opts.overlay_every)
        with atomic_path(root / "overlays") as out:
            out.mkdir()
            ids = range(0, frame_count(), every)
            for i in ids:
                face = cv2.imread(str(layout.face_only_mask(i)), cv2.IMREAD_GRAYSCALE) > 127
                image = overlay(cv2.imread(str(layout.frame(i))), read_parsing(layout.parsing(i)), face,
                                np.loadtxt(layout.landmarks(i)))
                cv2.imwrite(str(out / f"{i}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        return {"images": len(ids)}

    def blendshapes() -> dict:
        if opts.face_landmarker:
            model = require_file(opts.face_landmarker, "Face Landmarker model", "preprocess.face_landmarker")
            raw = blendshapes_from_face_landmarker([layout.frame(i) for i in range(frame_count())], model, fps,
                                                   progress)
            bs, _ = fill_gaps(raw[..., None], opts.max_gap, opts.max_missing_fraction)
            bs = bs[..., 0]
        else:
            bs = blendshapes_from_mesh(np.load(root / "landmarks_mesh.npy"))
        with atomic_path(layout.blendshapes) as tmp:
            np.save(tmp, bs)
        plot_blendshape_curves(bs, fps, root / "blendshapes.png")
        return {"frames": len(bs), "source": "face_landmarker" if opts.face_landmarker else "landmark geometry",
                "frames_blinking": int((bs[:, BLENDSHAPE_NAMES.index("eyeBlinkLeft")] > 0.5).sum())}

    def poses() -> dict:
        mesh = np.load(root / "landmarks_mesh.npy")
        n = len(mesh)
        height, width = cv2.imread(str(layout.frame(0))).shape[:2]
        masks = region_masks(layout, n, opts.stabilizer.points.region)
        result = stabilize([layout.frame(i) for i in range(n)], masks, mesh,
                           to_68(mesh)[..., :2], width, height, fps, opts.stabilizer, root / "stabilizer", progress)
        focal, c2w = result["focal"], result["c2w"]
        train_ids, val_ids = split_train_val(n)
        for split, ids in (("train", train_ids), ("val", val_ids)):
            Transforms(focal, width / 2, height / 2, ids, ids, c2w[ids].astype(np.float32)).write(layout.transforms(split))
        out = {**result["report"], "train": len(train_ids), "val": len(val_ids),
               "jitter_written": transforms_jitter(root)}  # measured as a user would: from the written files
        if opts.ground_truth:
            out["truth"] = truth_errors(result, require_file(opts.ground_truth, "ground truth", "preprocess.ground_truth"))
        return out

    report["overlays"] = runner.run("overlays", {"parsing": _stamp(layout.background), "every": opts.overlay_every},
                                    overlays, [root / "overlays"])
    mesh_stamp = {"landmarks": _stamp(root / "landmarks_mesh.npy")}
    report["blendshapes"] = runner.run("blendshapes", {**mesh_stamp, "face_landmarker": opts.face_landmarker},
                                       blendshapes, [layout.blendshapes, root / "blendshapes.png"])
    report["poses"] = runner.run("poses", {**mesh_stamp, "masks": _stamp(layout.background),
                                           "stabilizer": asdict(opts.stabilizer), "ground_truth": opts.ground_truth},
                                 poses,
                                 [layout.transforms("train"), layout.transforms("val")])
    report["audio"] = runner.run("audio", source, audio, [layout.audio])
    report["audio_features"] = runner.run("audio_features", {**source, "fps": fps, "encoder": audio_encoder,
                                                             "window": window, "file": opts.audio.features_file,
                                                             "checkpoint": opts.audio.checkpoint}, features,
                                          [layout.audio_features(audio_encoder)])
    return report
