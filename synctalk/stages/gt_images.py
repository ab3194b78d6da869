"""The ``gt_images`` stage: ``gt_imgs/<i>.jpg`` (the frame over the static background) and ``torso_imgs/<i>.png``
(RGBA torso and neck, the neck continued behind the head)."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from tqdm import tqdm

from synctalk import threads
from synctalk.face.segmentation import PersonSegmenter, compose_gt_and_torso, read_parsing
from synctalk.io import atomic_path
from synctalk.stages.base import Stage, StageContext


@dataclass
class GtImagesStage(Stage):
    name = "gt_images"
    needs = ("frames", "parsing")
    outputs = ("gt_imgs/*.jpg", "torso_imgs/*.png")

    neck_gap: float = 0.08  # the neck is continued this share of the width up behind the head

    def run(self, ctx: StageContext) -> dict:
        layout, n = ctx.layout, ctx.frame_count()
        bc = cv2.imread(str(layout.background)).astype(np.float32)
        with (PersonSegmenter() as segmenter, atomic_path(ctx.root / "gt_imgs") as gt_dir,
              atomic_path(ctx.root / "torso_imgs") as torso_dir):
            gt_dir.mkdir()
            torso_dir.mkdir()
            for i in tqdm(range(n), desc="gt images", unit="frame", disable=not ctx.progress):
                threads.tick()
                bgr = cv2.imread(str(layout.frame(i)))
                gt, torso = compose_gt_and_torso(bgr.astype(np.float32), read_parsing(layout.parsing(i)),
                                                 segmenter(bgr), bc, neck_gap_px=round(self.neck_gap * bgr.shape[1]))
                cv2.imwrite(str(gt_dir / f"{i}.jpg"), gt, [cv2.IMWRITE_JPEG_QUALITY, 95])
                cv2.imwrite(str(torso_dir / f"{i}.png"), torso)
        return {"frames": n}
