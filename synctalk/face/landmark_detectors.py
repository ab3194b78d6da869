"""Landmark detectors: MediaPipe's 478-point face mesh on every frame of a video.

The ``landmark_detector`` config group chooses one (``conf/landmark_detector/<name>.yaml`` names the class by
``_target_`` and sets its fields). Every detector gives the same topology, MediaPipe's 478 points (468 mesh +
10 iris points), because the face oval of the parsing, the 68-point layout (:func:`synctalk.face.facemesh.to_68`),
the subject face model and the geometric blendshapes index it.

Adding a detector: a dataclass subclass of :class:`LandmarkDetector` (settings as fields, :meth:`detect`) and a
YAML file ``conf/landmark_detector/<name>.yaml`` with its ``_target_``; ``synctalk preprocess
landmark_detector=<name>`` then uses it, and the ``landmarks`` stage's cache key holds its class and settings
(:func:`synctalk.choice.component_key`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

import cv2
import numpy as np
from tqdm import tqdm

from synctalk.errors import UserError

MESH_POINTS = 478


def read_rgb(paths: Iterable[Path]) -> Iterator[np.ndarray]:
    """(H, W, 3) RGB uint8 images of image files, in order; an unreadable file is a :class:`UserError`."""
    for path in paths:
        bgr = cv2.imread(str(path))
        if bgr is None:
            raise UserError(f"cannot read frame {path}")
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@dataclass
class LandmarkDetector:
    """A face landmark detector; subclasses are dataclasses whose fields are their settings."""

    def detect(self, frames: Iterable[np.ndarray], count: int, fps: float = 25.0, progress: bool = True) -> np.ndarray:
        """Landmarks of ``count`` (H, W, 3) RGB uint8 frames of one video, in order (tracking between frames).

        Returns:
            (count, 478, 3): pixel x, y and a depth in pixels (x's scale); NaN where no face was found.
        """
        raise NotImplementedError

    def detect_files(self, paths: list[Path], fps: float = 25.0, progress: bool = True) -> np.ndarray:
        """:meth:`detect` of image files."""
        return self.detect(read_rgb(paths), len(paths), fps, progress)


@dataclass
class FaceMesh(LandmarkDetector):
    """MediaPipe FaceMesh with iris refinement (the legacy solution; its model ships in the mediapipe wheel)."""

    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5

    def detect(self, frames: Iterable[np.ndarray], count: int, fps: float = 25.0, progress: bool = True) -> np.ndarray:
        import mediapipe as mp

        os.environ.setdefault("GLOG_minloglevel", "2")
        out = np.full((count, MESH_POINTS, 3), np.nan, np.float32)
        with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=True,
                                             min_detection_confidence=self.min_detection_confidence,
                                             min_tracking_confidence=self.min_tracking_confidence) as mesh:
            for i, rgb in enumerate(tqdm(frames, total=count, desc="landmarks", unit="frame", disable=not progress)):
                result = mesh.process(np.ascontiguousarray(rgb))
                if result.multi_face_landmarks:
                    out[i] = _pixels(result.multi_face_landmarks[0].landmark, rgb.shape)
        return out


def face_landmarker_results(images: Iterable[np.ndarray], count: int, model_path, fps: float | None,
                            blendshapes: bool, desc: str, progress: bool = True,
                            min_confidence: float = 0.5) -> Iterator[tuple[np.ndarray, object]]:
    """Run MediaPipe's Face Landmarker (``face_landmarker.task``) on ``count`` RGB frames.

    Args:
        fps: the frames' rate: video mode (tracking between frames); None: each frame read alone (image mode).
        blendshapes: also score the 52 blendshapes.
        min_confidence: face detection, presence and tracking confidence.
    Yields:
        (frame, result) per frame, result being MediaPipe's ``FaceLandmarkerResult``.
    """
    import mediapipe as mp

    os.environ.setdefault("GLOG_minloglevel", "2")
    vision = mp.tasks.vision
    mode = vision.RunningMode.VIDEO if fps else vision.RunningMode.IMAGE
    options = vision.FaceLandmarkerOptions(
        base_options=mp.tasks.BaseOptions(model_asset_path=str(model_path)), running_mode=mode,
        output_face_blendshapes=blendshapes, num_faces=1, min_face_detection_confidence=min_confidence,
        min_face_presence_confidence=min_confidence, min_tracking_confidence=min_confidence)
    with vision.FaceLandmarker.create_from_options(options) as landmarker:
        for i, rgb in enumerate(tqdm(images, total=count, desc=desc, unit="frame", disable=not progress)):
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
            yield rgb, (landmarker.detect_for_video(image, int(round(i * 1000 / fps))) if fps
                        else landmarker.detect(image))


@dataclass
class FaceLandmarker(LandmarkDetector):
    """MediaPipe's Face Landmarker task model (``face_landmarker.task``, the model the blendshapes come from).

    ``model``: the file; ``auto`` finds face_landmarker.task in the weight folders (``$SYNCTALK_WEIGHTS``,
    ``<weights_root>/weights``, ``~/.cache/synctalk``) and it is an error when there is none.
    """

    model: Optional[str] = "auto"
    min_confidence: float = 0.5
    weights_root: Optional[str] = field(default=None, metadata={"key": False})

    def model_file(self) -> Path:
        from synctalk.external import find_weight, weight_search_dirs

        found = find_weight(self.model, "face_landmarker.task", "Face Landmarker model", "landmark_detector.model",
                            self.weights_root)
        if found is None:
            places = ", ".join(str(d) for d in weight_search_dirs(self.weights_root))
            raise UserError(f"landmark_detector=face_landmarker needs face_landmarker.task; it is in none of {places}: "
                            "put it there or set landmark_detector.model=/path/to/face_landmarker.task")
        return found

    def detect(self, frames: Iterable[np.ndarray], count: int, fps: float = 25.0, progress: bool = True) -> np.ndarray:
        out = np.full((count, MESH_POINTS, 3), np.nan, np.float32)
        results = face_landmarker_results(frames, count, self.model_file(), fps, blendshapes=False, desc="landmarks",
                                          progress=progress, min_confidence=self.min_confidence)
        for i, (rgb, result) in enumerate(results):
            if result.face_landmarks:
                out[i] = _pixels(result.face_landmarks[0], rgb.shape)
        return out


def _pixels(landmarks, shape: tuple) -> np.ndarray:
    """MediaPipe's normalised landmarks -> (478, 3) pixels (depth in units of the image width)."""
    h, w = shape[:2]
    return np.array([(p.x * w, p.y * h, p.z * w) for p in landmarks], np.float32)
