"""The ``landmarks`` stage: the configured landmark detector on every frame, gaps interpolated,
``ori_imgs/<i>.lms`` (68 points) and ``landmarks_mesh.npy`` (N, 478, 3)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from synctalk.choice import component_key
from synctalk.face.facemesh import fill_gaps, jitter, to_68
from synctalk.face.landmark_detectors import FaceMesh, LandmarkDetector
from synctalk.io import atomic_path
from synctalk.stages.base import Stage, StageContext

log = logging.getLogger(__name__)
RIGID_68 = [36, 39, 42, 45, 27, 28]  # eye corners and nose bridge


@dataclass
class LandmarksStage(Stage):
    """``detector``: the ``landmark_detector`` config group; ``max_gap``: the longest run of faceless frames that
    is interpolated; above ``max_missing_fraction`` of faceless frames the stage stops and lists them."""

    name = "landmarks"
    needs = ("frames",)
    outputs = ("landmarks_mesh.npy", "ori_imgs/*.lms")

    max_gap: int = 5
    max_missing_fraction: float = 0.1
    detector: LandmarkDetector = field(default_factory=FaceMesh)

    def settings(self) -> dict:
        out = {"max_gap": self.max_gap, "max_missing_fraction": self.max_missing_fraction}
        if self.detector != FaceMesh():  # the default keeps the key datasets were cached under before the choice
            out["detector"] = component_key(self.detector)
        return out

    def run(self, ctx: StageContext) -> dict:
        layout, n = ctx.layout, ctx.frame_count()
        mesh = self.detector.detect_files(ctx.frame_paths(), ctx.fps, ctx.progress)
        mesh, filled = fill_gaps(mesh, self.max_gap, self.max_missing_fraction)
        if filled:
            log.warning("no face in %d frame(s) (%s): interpolated from their neighbours", len(filled),
                        ", ".join(map(str, filled[:20])))
        lms = to_68(mesh)
        for i in range(n):
            with atomic_path(layout.landmarks(i)) as tmp:
                np.savetxt(tmp, lms[i], fmt="%.2f")
        with atomic_path(ctx.root / "landmarks_mesh.npy") as tmp:
            np.save(tmp, mesh)
        return {"frames": n, "detector": type(self.detector).__name__, "interpolated": filled,
                "rigid_jitter_px": round(jitter(lms[:, RIGID_68]), 3)}
