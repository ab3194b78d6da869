"""The ``crop`` stage: one fixed square box around the head for the whole video.

SyncTalk's data is a 512x512, 25 fps video with the head centred and the shoulders in view (the HDTF framing:
the face box about half the side, its centre a little below the middle). A phone video, a 720p desk
recording or a wide shot is not: the stage finds the face in frames spread over the whole clip, chooses a
square that frames the head that way with room for its motion, and the ``frames`` stage crops every frame
to it and resizes it to ``size``. A square video already framed like that is used whole.

Outputs: ``crop.json`` (the box in source pixels, the face size before and after resizing, the source
format) and ``crop.jpg`` (sampled source frames with the box in green and the detected face in red).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from synctalk.choice import Choice
from synctalk.errors import UserError
from synctalk.io import atomic_path, write_json
from synctalk.stages.base import Stage, StageContext
from synctalk.stages.source import expected_frames, probe_video, resampled_frames, upright_bgr


class CropMode(Choice):
    auto = "auto"  # the head box, unless the video is already a head-centred square
    off = "off"  # the frames as they are
    box = "box"  # the given box


@dataclass
class CropOptions:
    """``preprocess.crop``: how the head box is chosen."""

    mode: CropMode = CropMode.auto
    box: Optional[list] = None  # [x, y, side] in source pixels (mode=box)
    size: int = 512  # side in pixels of the cropped frames
    face_scale: float = 2.0  # box side / median face size (the HDTF framing)
    face_centre: float = 0.55  # face centre from the top of the box, share of its side
    motion_margin: float = 1.15  # the box holds this many times the face plus its motion
    full_frame_fraction: float = 0.75  # a square video whose box would be at least this share of it is used whole
    min_face_px: int = 64  # a smaller face in the source is an error
    samples: int = 60  # frames spread over the clip in which the face is detected
    min_seconds: float = 1.0  # a shorter clip is an error

log = logging.getLogger(__name__)


def detect_faces(images: list[np.ndarray], min_confidence: float = 0.5) -> list[np.ndarray]:
    """Faces in BGR images with MediaPipe's full-range face detector (faces up to about 5 m away).

    Returns:
        per image, (K, 5) boxes ``x, y, width, height, score`` in pixels, largest first (K may be 0).
    """
    import mediapipe as mp

    out = []
    with mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=min_confidence) as fd:
        for bgr in images:
            h, w = bgr.shape[:2]
            result = fd.process(np.ascontiguousarray(bgr[..., ::-1]))
            boxes = [(b.xmin * w, b.ymin * h, b.width * w, b.height * h, d.score[0])
                     for d in result.detections or [] for b in [d.location_data.relative_bounding_box]]
            boxes.sort(key=lambda b: -b[2] * b[3])
            out.append(np.array(boxes, np.float64).reshape(-1, 5))
    return out


def choose_box(faces: list[np.ndarray], width: int, height: int, face_scale: float = 2.0,
               face_centre: float = 0.55, motion_margin: float = 1.15) -> dict:
    """The square that frames the largest face of each sampled frame the HDTF way.

    Args:
        faces: per sampled frame, (K, 5) detections (:func:`detect_faces`); frames without one are ignored.
        face_scale: box side / median face size (the HDTF clips: 1.6-2.0; 2.0 leaves room for hair and shoulders).
        face_centre: where the face centre sits from the top of the box, as a fraction of its side.
        motion_margin: the box is at least this many times the face plus twice its 95th-percentile
            displacement from the median position, so a moving head stays inside.
    Returns:
        ``box`` [x, y, side] (integers, inside the frame), ``face_px`` (median face size), ``motion_px``,
        ``clipped`` (the frame was too small for the motion margin).
    """
    largest = np.array([f[0] for f in faces if len(f)])
    if not len(largest):
        raise ValueError("no face")
    size = float(np.median(np.sqrt(largest[:, 2] * largest[:, 3])))
    centres = largest[:, :2] + largest[:, 2:4] / 2
    centre = np.median(centres, axis=0)
    motion = float(np.percentile(np.abs(centres - centre).max(1), 95))
    wanted = max(face_scale * size, motion_margin * (size + 2 * motion))
    side = int(round(min(wanted, width, height)))
    x = int(round(np.clip(centre[0] - side / 2, 0, width - side)))
    y = int(round(np.clip(centre[1] - face_centre * side, 0, height - side)))
    return {"box": [x, y, side], "face_px": round(size, 1), "motion_px": round(motion, 1),
            "clipped": bool(motion_margin * (size + 2 * motion) > min(width, height))}


def crop_and_resize(bgr: np.ndarray, box: list[int] | None, size: int | None) -> np.ndarray:
    """The ``box`` [x, y, side] of a frame resized to ``size`` x ``size`` (None: that step is skipped)."""
    if box is not None:
        x, y, side = box
        bgr = bgr[y:y + side, x:x + side]
    if size is not None and bgr.shape[:2] != (size, size):
        shrink = bgr.shape[0] > size
        bgr = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return bgr


def _sheet(images: list[np.ndarray], faces: list[np.ndarray], box: list[int] | None, height: int = 360) -> np.ndarray:
    """Source frames side by side with the box (green) and the largest detected face (red)."""
    tiles = []
    for bgr, found in zip(images, faces):
        img = bgr.copy()
        thick = max(2, img.shape[0] // 200)
        if len(found):
            x, y, w, h = found[0, :4].astype(int)
            cv2.rectangle(img, (x, y), (x + w, y + h), (0, 0, 255), thick)
        if box is not None:
            x, y, side = box
            cv2.rectangle(img, (x, y), (x + side, y + side), (0, 255, 0), thick)
        tiles.append(cv2.resize(img, (round(img.shape[1] * height / img.shape[0]), height), interpolation=cv2.INTER_AREA))
    return np.concatenate(tiles, axis=1)


@dataclass
class CropStage(CropOptions, Stage):
    """Choose the head box (see the module docstring); the settings are :class:`CropOptions`
    (``preprocess.crop``)."""

    name = "crop"
    reads_source = True
    outputs = ("crop.json", "crop.jpg")

    def run(self, ctx: StageContext) -> dict:
        info = probe_video(ctx.video)
        source = {k: info[k] for k in ("width", "height", "fps", "duration_s", "codec", "rotation", "pixel_aspect")}
        if info["duration_s"] is not None and info["duration_s"] < self.min_seconds:
            raise UserError(f"{ctx.video} is {info['duration_s']:.2f} s long: a talking-head dataset needs at least "
                            f"{self.min_seconds:g} s of video (SyncTalk asks for 3-5 minutes)")
        w, h = info["width"], info["height"]
        images, faces = self._sample(ctx, info)
        report = {"mode": self.mode, "source": source, "sampled_frames": len(images)}
        if self.mode == "off":
            box, size, reason = None, None, "preprocess.crop.mode=off"
        elif self.mode == "box":
            box, size, reason = self._given_box(w, h), self.size, "preprocess.crop.box"
        else:
            box, size, reason = self._auto_box(faces, w, h, report, ctx)
        report.update({"applied": box is not None, "box": box, "resize_to": size, "reason": reason})
        out_side = size if size is not None else (box[2] if box else None)
        report["output_size"] = [out_side, out_side] if out_side else [w, h]
        if report.get("face_px"):
            scale = (out_side / (box[2] if box else min(w, h))) if out_side else 1.0
            report["face_px_output"] = round(report["face_px"] * scale, 1)
        sheet_ids = np.linspace(0, len(images) - 1, min(4, len(images))).round().astype(int)
        with atomic_path(ctx.root / "crop.jpg") as tmp:
            cv2.imwrite(str(tmp), _sheet([images[i] for i in sheet_ids], [faces[i] for i in sheet_ids], box),
                        [cv2.IMWRITE_JPEG_QUALITY, 90])
        write_json(ctx.root / "crop.json", report)
        return report

    def _sample(self, ctx: StageContext, info: dict) -> tuple[list[np.ndarray], list[np.ndarray]]:
        total = expected_frames(info, ctx.fps) or int(self.samples * ctx.fps)
        wanted = set(np.linspace(0, max(total - 1, 0), min(self.samples, max(total, 1))).round().astype(int).tolist())
        aspect = info.get("pixel_aspect", 1.0)
        images = [upright_bgr(frame, aspect) for i, frame in resampled_frames(ctx.video, ctx.fps) if i in wanted]
        if not images:
            raise UserError(f"no frames could be decoded from {ctx.video}")
        return images, detect_faces(images) if self.mode != "off" else [np.zeros((0, 5))] * len(images)

    def _given_box(self, w: int, h: int) -> list[int]:
        if self.box is None or len(self.box) != 3:
            raise UserError("preprocess.crop.mode=box needs preprocess.crop.box=[x,y,side] (source pixels)")
        x, y, side = (int(v) for v in self.box)
        if side <= 0 or x < 0 or y < 0 or x + side > w or y + side > h:
            raise UserError(f"preprocess.crop.box={[x, y, side]} is not inside the {w}x{h} video")
        return [x, y, side]

    def _auto_box(self, faces: list[np.ndarray], w: int, h: int, report: dict, ctx: StageContext):
        found = sum(len(f) > 0 for f in faces)
        several = sum(len(f) > 1 for f in faces)
        report.update({"frames_with_face": found, "frames_with_several_faces": several})
        if found == 0:
            raise UserError(f"no face was found in any of the {len(faces)} frames sampled from {ctx.video}: the "
                            "video needs one speaker facing the camera (or set preprocess.crop.box=[x,y,side] with "
                            "preprocess.crop.mode=box)")
        if several > 0.2 * found:
            log.warning("several faces in %d of %d sampled frames: the largest face is used; check crop.jpg, or set "
                        "preprocess.crop.box", several, len(faces))
        if found < 0.5 * len(faces):
            log.warning("a face was found in only %d of %d sampled frames: check crop.jpg", found, len(faces))
        chosen = choose_box(faces, w, h, self.face_scale, self.face_centre, self.motion_margin)
        report.update({k: chosen[k] for k in ("face_px", "motion_px", "clipped")})
        if w == h and chosen["box"][2] >= self.full_frame_fraction * w:
            return None, (self.size if w > self.size else None), "a head-centred square video: used whole"
        if chosen["face_px"] < self.min_face_px:
            raise UserError(f"the face is {chosen['face_px']:.0f} px in the source {w}x{h} video, below "
                            f"preprocess.crop.min_face_px={self.min_face_px}: too small for a head model (it would be "
                            f"upscaled {self.size / chosen['box'][2]:.1f}x). Record closer to the camera or at a "
                            "higher resolution")
        if chosen["clipped"]:
            log.warning("the head moves further than the %dx%d frame leaves room for: the box is the whole shorter "
                        "side (check crop.jpg)", w, h)
        return chosen["box"], self.size, "head box"
