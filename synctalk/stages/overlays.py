"""The ``overlays`` stage: ``overlays/<i>.jpg`` for every k-th frame, the landmarks, parsing and face mask drawn
over the frame, and ``overlays/crop.jpg`` (the crop stage's box on source frames), for a person to check."""
from __future__ import annotations

import shutil
from dataclasses import dataclass

import cv2
import numpy as np

from synctalk.face.segmentation import overlay, read_parsing
from synctalk.io import atomic_path
from synctalk.stages.base import Stage, StageContext


@dataclass
class OverlaysStage(Stage):
    name = "overlays"
    needs = ("crop", "frames", "landmarks", "parsing")
    outputs = ("overlays/*.jpg",)

    every: int = 25

    def run(self, ctx: StageContext) -> dict:
        layout, every = ctx.layout, max(1, self.every)
        ids = range(0, ctx.frame_count(), every)
        with atomic_path(ctx.root / "overlays") as out:
            out.mkdir()
            for i in ids:
                face = cv2.imread(str(layout.face_only_mask(i)), cv2.IMREAD_GRAYSCALE) > 127
                image = overlay(cv2.imread(str(layout.frame(i))), read_parsing(layout.parsing(i)), face,
                                np.loadtxt(layout.landmarks(i)))
                cv2.imwrite(str(out / f"{i}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            shutil.copyfile(ctx.root / "crop.jpg", out / "crop.jpg")
        return {"images": len(ids)}
