"""The ``frames`` stage: ``ori_imgs/<i>.jpg``, the source resampled to the dataset frame rate and cropped to the
``crop`` stage's box."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
from tqdm import tqdm

from synctalk.errors import UserError
from synctalk.io import atomic_path, read_json
from synctalk.stages.base import Stage, StageContext
from synctalk.stages.crop import crop_and_resize
from synctalk.stages.source import expected_frames, resampled_frames, upright_bgr


@dataclass
class FramesStage(Stage):
    """Decode the source (streamed: one frame in memory), resample it to the dataset frame rate by timestamp, crop and
    resize it as ``crop.json`` says, and write JPEG frames."""

    name = "frames"
    needs = ("crop",)
    reads_source = True
    outputs = ("ori_imgs/*.jpg",)

    jpeg_quality: int = 95
    min_frames: int = 25  # fewer frames is an error (a clip under one second at 25 fps)

    def run(self, ctx: StageContext) -> dict:
        crop = read_json(ctx.root / "crop.json")
        info = crop["source"]  # the crop stage's probe of this video (its key holds the video's identity)
        bar = tqdm(total=expected_frames(info, ctx.fps), desc="frames", unit="frame", disable=not ctx.progress)
        n = 0
        with atomic_path(ctx.root / "ori_imgs") as out:
            out.mkdir()
            aspect = info.get("pixel_aspect", 1.0)  # absent from crop stages run before it was recorded
            for n, frame in resampled_frames(ctx.video, ctx.fps):
                image = crop_and_resize(upright_bgr(frame, aspect), crop["box"], crop["resize_to"])
                cv2.imwrite(str(out / f"{n}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
                bar.update()
            n += 1
            if n < self.min_frames:
                raise UserError(f"{ctx.video} gives {n} frames at {ctx.fps:g} fps: at least {self.min_frames} are "
                                "needed")
        bar.close()
        height, width = image.shape[:2]
        return {"frames": n, "fps": ctx.fps, "source_fps": info["fps"], "width": width, "height": height,
                "cropped": crop["applied"]}
