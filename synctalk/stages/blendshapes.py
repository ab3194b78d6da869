"""The ``blendshapes`` stage: ``bs.npy`` (N, 52) ARKit blendshapes and ``blendshapes.png`` (blink, brow and jaw
curves over time)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synctalk.external import require_file
from synctalk.face.blendshape_sets import BLENDSHAPE_NAMES
from synctalk.face.expressions import blendshapes_from_face_landmarker, blendshapes_from_mesh
from synctalk.face.facemesh import fill_gaps
from synctalk.io import atomic_path, save_figure, subplots
from synctalk.stages.base import Stage, StageContext

log = logging.getLogger(__name__)


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


@dataclass
class BlendshapesStage(Stage):
    """``face_landmarker``: MediaPipe's face_landmarker.task (SyncTalk's Facial Animation Capturer); None:
    blendshapes estimated from the landmark geometry, with ``fallback_note`` saying why in the report.
    Faceless frames are filled as in the landmarks stage."""

    name = "blendshapes"
    needs = ("frames", "landmarks")
    outputs = ("bs.npy", "blendshapes.png")

    face_landmarker: str | None = None
    max_gap: int = 5
    max_missing_fraction: float = 0.1
    fallback_note: str | None = None

    def run(self, ctx: StageContext) -> dict:
        if self.face_landmarker:
            model = require_file(self.face_landmarker, "Face Landmarker model", "preprocess.face_landmarker")
            raw = blendshapes_from_face_landmarker(ctx.frame_paths(), model, ctx.fps, ctx.progress)
            bs = fill_gaps(raw[..., None], self.max_gap, self.max_missing_fraction)[0][..., 0]
        else:
            bs = blendshapes_from_mesh(np.load(ctx.root / "landmarks_mesh.npy"))
            if self.fallback_note:
                log.warning(self.fallback_note)
        with atomic_path(ctx.layout.blendshapes) as tmp:
            np.save(tmp, bs)
        plot_blendshape_curves(bs, ctx.fps, ctx.root / "blendshapes.png")
        report = {"frames": len(bs), "source": "face_landmarker" if self.face_landmarker else "landmark geometry",
                  "frames_blinking": int((bs[:, BLENDSHAPE_NAMES.index("eyeBlinkLeft")] > 0.5).sum())}
        if self.face_landmarker:
            report["face_landmarker"] = str(self.face_landmarker)
        elif self.fallback_note:
            report["note"] = self.fallback_note
        return report
