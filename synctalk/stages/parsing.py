"""The ``parsing`` stage: per-frame head / neck / torso / background labels (``parsing/<i>.png``), the face-only
mask (``parsing/<i>_face.png``), the head mask (``face_mask/<i>.png``) and the static background ``bc.jpg``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
from tqdm import tqdm

from synctalk import threads
from synctalk.choice import Choice
from synctalk.errors import UserError
from synctalk.face.segmentation import (HEAD, BackgroundAccumulator, PersonSegmenter, face_oval_order,
                                        labels_from_classes, parse_frame, write_parsing)
from synctalk.io import atomic_path
from synctalk.stages.base import Stage, StageContext


class ParsingBackend(Choice):
    mediapipe = "mediapipe"  # selfie segmentation + the FaceMesh face oval (weight-free)
    bisenet = "bisenet"  # the 19-class face-parsing BiSeNet (preprocess.parsing.bisenet_checkpoint)


@dataclass
class ParsingOptions:
    """``preprocess.parsing``: how frames are parsed into head, neck, torso and background."""

    backend: ParsingBackend = ParsingBackend.mediapipe
    bisenet_checkpoint: Optional[str] = None  # 79999_iter.pth of the face-parsing BiSeNet


@dataclass
class ParsingStage(Stage):
    """``backend``: ``mediapipe`` (selfie segmentation + face mesh, weight-free) | ``bisenet`` (the 19-class
    face-parsing model at ``bisenet_checkpoint``); every ``background_every``-th frame feeds the background."""

    name = "parsing"
    needs = ("frames", "landmarks")
    outputs = ("parsing/*.png", "face_mask/*.png", "bc.jpg")

    backend: str = "mediapipe"
    bisenet_checkpoint: str | None = None
    background_every: int = 20

    def run(self, ctx: StageContext) -> dict:
        layout, n = ctx.layout, ctx.frame_count()
        mesh, oval = np.load(ctx.root / "landmarks_mesh.npy"), face_oval_order()
        bisenet = None
        if self.backend == "bisenet":
            from synctalk.face.bisenet import BiSeNetParser
            bisenet = BiSeNetParser(self.bisenet_checkpoint)
        background, head_fractions = None, []
        with (PersonSegmenter() as segmenter, atomic_path(ctx.root / "parsing") as parse_dir,
              atomic_path(ctx.root / "face_mask") as mask_dir):
            parse_dir.mkdir()
            mask_dir.mkdir()
            for i in tqdm(range(n), desc=f"parsing ({self.backend})", unit="frame", disable=not ctx.progress):
                threads.tick()
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
                if i % self.background_every == 0:
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
        return {"frames": n, "backend": self.backend, "background_filled_fraction": round(filled, 4),
                "head_area_fraction": round(float(np.mean(head_fractions)), 4)}
