"""The dataset folder layout shared with the original SyncTalk / ER-NeRF tools.

::

    <root>/
      aud.wav                    16 kHz mono audio
      aud_<encoder>.npy          audio features per frame, e.g. aud_mel.npy (N, 16, 80)
      aud_<encoder>_pause.npy    (optional) features of pauses, K noise floors alone, (K, <=250, window, dim)
      ori_imgs/<i>.jpg, <i>.lms  frames and 68-point landmarks ("x y" per line)
      parsing/<i>.png            head red, neck green, torso blue, background white
      parsing/<i>_face.png       face-only mask (white) used for portrait blending
      face_mask/<i>.png          head mask (white)
      gt_imgs/<i>.jpg            frame with the background replaced by bc.jpg
      torso_imgs/<i>.png         RGBA torso and neck without the head
      bc.jpg                     static background
      bs.npy                     (N, 52) blendshapes;  au.csv (optional) AU45 blink
      mouth_audio.json           (made by the first render) the footage's mouth against its own audio
      transforms_train.json      focal_len, cx, cy, frames[img_id, aud_id, transform_matrix]
      transforms_val.json
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synctalk.errors import UserError
from synctalk.io import read_json, write_json



@dataclass(frozen=True)
class DatasetLayout:
    """Paths inside one dataset folder."""

    root: Path

    @property
    def audio(self) -> Path:
        return self.root / "aud.wav"

    def audio_features(self, encoder: str) -> Path:
        return self.root / f"aud_{encoder}.npy"

    def pause_audio_features(self, encoder: str) -> Path:
        return self.root / f"aud_{encoder}_pause.npy"

    def frame(self, i: int) -> Path:
        return self.root / "ori_imgs" / f"{i}.jpg"

    def landmarks(self, i: int) -> Path:
        return self.root / "ori_imgs" / f"{i}.lms"

    def parsing(self, i: int) -> Path:
        return self.root / "parsing" / f"{i}.png"

    def face_only_mask(self, i: int) -> Path:
        return self.root / "parsing" / f"{i}_face.png"

    def head_mask(self, i: int) -> Path:
        return self.root / "face_mask" / f"{i}.png"

    def gt_image(self, i: int) -> Path:
        return self.root / "gt_imgs" / f"{i}.jpg"

    def torso_image(self, i: int) -> Path:
        return self.root / "torso_imgs" / f"{i}.png"

    @property
    def background(self) -> Path:
        return self.root / "bc.jpg"

    @property
    def blendshapes(self) -> Path:
        return self.root / "bs.npy"

    @property
    def mouth_audio(self) -> Path:
        return self.root / "mouth_audio.json"

    def transforms(self, split: str) -> Path:
        return self.root / f"transforms_{split}.json"

    def check_ready(self) -> None:
        """Fail with a clear message when the folder is not a complete dataset."""
        if not self.root.is_dir():
            raise UserError(f"dataset folder {self.root} does not exist: run 'synctalk preprocess' first, "
                            f"or set data.root to an existing dataset")
        missing = [p.name for p in (self.transforms("train"), self.transforms("val"), self.background) if not p.is_file()]
        if missing:
            raise UserError(f"dataset folder {self.root} is incomplete (missing {', '.join(missing)}): "
                            f"run 'synctalk preprocess' on it")


@dataclass
class Transforms:
    """One split of a transforms json: intrinsics and per-frame camera-to-world poses."""

    focal: float
    cx: float
    cy: float
    img_ids: np.ndarray  # (N,) int
    aud_ids: np.ndarray  # (N,) int
    c2w: np.ndarray  # (N, 4, 4) float32

    @classmethod
    def read(cls, path: Path) -> "Transforms":
        d = read_json(path)
        frames = d["frames"]
        if not frames:
            raise UserError(f"{path} lists no frames")
        return cls(focal=float(d["focal_len"]), cx=float(d["cx"]), cy=float(d["cy"]),
                   img_ids=np.array([f["img_id"] for f in frames]),
                   aud_ids=np.array([f.get("aud_id", f["img_id"]) for f in frames]),
                   c2w=np.array([f["transform_matrix"] for f in frames], dtype=np.float32))

    def write(self, path: Path) -> None:
        write_json(path, {
            "focal_len": self.focal, "cx": self.cx, "cy": self.cy,
            "frames": [{"img_id": int(i), "aud_id": int(a), "transform_matrix": m.tolist()}
                       for i, a, m in zip(self.img_ids, self.aud_ids, self.c2w)],
        })


#: entries of the ``poses`` stage report that a training run records beside its image metrics
POSE_SUMMARY_KEYS = ("face_model", "focal_interior", "landmark_rms_px", "jitter_landmarks", "jitter_bundle_adjustment",
                     "poses_written", "jitter_written")


def dataset_summary(root: Path) -> dict:
    """What a trained run should carry of its dataset, so a sweep over datasets can be read in image quality:
    the focal length (pixels, and at 512 px width for comparison across sizes) and, for a preprocessed
    video, the stabilizer's numbers (:data:`POSE_SUMMARY_KEYS`) and where the blendshapes came from
    (``blendshape_source``: ``face_landmarker`` or ``landmark geometry``)."""
    layout = DatasetLayout(Path(root))
    if not layout.transforms("train").is_file():
        return {}
    t = Transforms.read(layout.transforms("train"))
    out = {"focal": round(t.focal, 2), "focal_at_512": round(t.focal * 512 / (2 * t.cx), 2)}
    marker = layout.root / ".stages" / "poses.json"
    if marker.is_file():
        report = read_json(marker).get("report", {})
        out.update({k: report[k] for k in POSE_SUMMARY_KEYS if k in report})
    marker = layout.root / ".stages" / "blendshapes.json"
    if marker.is_file():
        out["blendshape_source"] = read_json(marker).get("report", {}).get("source")
    return out


def split_train_val(num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The original split: the first 10/11 of the frames train, the rest validate."""
    cut = int(num_frames * 10 / 11)
    return np.arange(cut), np.arange(cut, num_frames)
