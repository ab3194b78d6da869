"""The ``poses`` stage: the Head-Sync Stabilizer (:func:`synctalk.stabilizer.pipeline.stabilize`) on the frames,
landmarks and head masks, written as ``transforms_train.json`` / ``transforms_val.json``; its steps' results
and plots are in ``stabilizer/``. A poses stage killed midway resumes after its last finished step."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from synctalk.choice import component_key
from synctalk.data.layout import Transforms, split_train_val
from synctalk.external import require_file
from synctalk.face.facemesh import to_68
from synctalk.stabilizer.options import StabilizerOptions
from synctalk.stabilizer.pipeline import region_masks, stabilize
from synctalk.stabilizer.pose_convention import transforms_jitter
from synctalk.stabilizer.truth import truth_errors
from synctalk.stages.base import Stage, StageContext


@dataclass
class PosesStage(Stage):
    """``ground_truth``: a synthetic subject's ground_truth.npz; the report then has the focal and pose errors."""

    name = "poses"
    needs = ("frames", "landmarks", "parsing")
    outputs = ("transforms_train.json", "transforms_val.json", "stabilizer/*.json", "stabilizer/*.png",
               "stabilizer/*.npz")

    stabilizer: StabilizerOptions = field(default_factory=StabilizerOptions)
    ground_truth: str | None = None

    def settings(self) -> dict:
        out = asdict(self)
        out["stabilizer"]["face_model"] = component_key(self.stabilizer.face_model)
        del out["stabilizer"]["detector"]  # the landmarks it gave are an input of this stage
        return out

    def run(self, ctx: StageContext) -> dict:
        layout = ctx.layout
        mesh = np.load(ctx.root / "landmarks_mesh.npy")
        n = len(mesh)
        height, width = cv2.imread(str(layout.frame(0))).shape[:2]
        masks = region_masks(layout, n, self.stabilizer.points.region)
        result = stabilize(ctx.frame_paths()[:n], masks, mesh, to_68(mesh)[..., :2], width, height, ctx.fps,
                           self.stabilizer, ctx.root / "stabilizer", ctx.progress, resume_key=ctx.run_key)
        focal, c2w = result["focal"], result["c2w"]
        train_ids, val_ids = split_train_val(n)
        for split, ids in (("train", train_ids), ("val", val_ids)):
            Transforms(focal, width / 2, height / 2, ids, ids, c2w[ids].astype(np.float32)).write(layout.transforms(split))
        out = {**result["report"], "train": len(train_ids), "val": len(val_ids),
               "jitter_written": transforms_jitter(ctx.root)}  # measured as a user would: from the written files
        if self.ground_truth:
            out["truth"] = truth_errors(result, require_file(self.ground_truth, "ground truth", "preprocess.ground_truth"))
        return out
