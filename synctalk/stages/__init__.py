"""Preprocessing: the stages that turn a video into a dataset folder, in order.

========================  ===================================================  ==========================
stage                     writes                                               reads
========================  ===================================================  ==========================
``crop``                  crop.json, crop.jpg (the head box)                   the source video
``frames``                ori_imgs/<i>.jpg at the dataset fps, cropped         the source video, crop
``landmarks``             ori_imgs/<i>.lms, landmarks_mesh.npy                 frames
``parsing``               parsing/, face_mask/, bc.jpg                         frames, landmarks
``gt_images``             gt_imgs/, torso_imgs/                                frames, parsing
``overlays``              overlays/ (images to check by eye)                   frames, landmarks, parsing
``blendshapes``           bs.npy, blendshapes.png                              frames, landmarks
``poses``                 transforms_{train,val}.json, stabilizer/             frames, landmarks, parsing
``audio``                 aud.wav (16 kHz mono)                                the source video
``audio_features``        aud_<encoder>.npy                                    frames, audio
========================  ===================================================  ==========================

Each stage is a class in its own module (settings as fields, ``run(ctx)`` writes its outputs);
:class:`~synctalk.stages.base.StageRunner` skips the finished ones, so an interrupted run resumes where it
stopped and a stage whose outputs changed after it finished is redone. The source video is only read.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from synctalk.audio.encoders import AudioConfig
from synctalk.errors import UserError
from synctalk.face.landmark_detectors import FaceMesh, LandmarkDetector
from synctalk.stabilizer.options import StabilizerOptions
from synctalk.stages.audio_track import AudioFeaturesStage, AudioStage
from synctalk.stages.base import Stage, StageContext, StageRunner
from synctalk.stages.blendshapes import BlendshapesStage
from synctalk.stages.crop import CropStage
from synctalk.stages.frames import FramesStage
from synctalk.stages.gt_images import GtImagesStage
from synctalk.stages.landmarks import LandmarksStage
from synctalk.stages.overlays import OverlaysStage
from synctalk.stages.parsing import ParsingStage
from synctalk.stages.poses import PosesStage
from synctalk.stages.source import probe_video


@dataclass
class IngestOptions:
    """Settings of all stages (see ``conf/preprocess.yaml``)."""

    fps: float = 25.0
    crop: CropStage = field(default_factory=CropStage)
    audio: AudioConfig = field(default_factory=AudioConfig)  # the audio_encoder config group
    force: list = field(default_factory=list)
    detector: LandmarkDetector = field(default_factory=FaceMesh)  # the landmark_detector group
    max_gap: int = 5
    max_missing_fraction: float = 0.1
    background_every: int = 20
    stabilizer: StabilizerOptions = field(default_factory=StabilizerOptions)
    overlay_every: int = 25
    face_landmarker: str | None = None  # face_landmarker.task (None: blendshapes from landmark geometry)
    face_landmarker_note: str | None = None  # why there is none, for the blendshapes report
    ground_truth: str | None = None  # a synthetic subject's ground_truth.npz: the poses stage reports its errors
    parsing_backend: str = "mediapipe"
    bisenet_checkpoint: str | None = None
    progress: bool = True


def build_stages(opts: IngestOptions) -> list[Stage]:
    """The stages in the order they run."""
    gaps = {"max_gap": opts.max_gap, "max_missing_fraction": opts.max_missing_fraction}
    return [
        opts.crop,
        FramesStage(),
        LandmarksStage(**gaps, detector=opts.detector),
        ParsingStage(opts.parsing_backend, opts.bisenet_checkpoint, opts.background_every),
        GtImagesStage(),
        OverlaysStage(opts.overlay_every),
        BlendshapesStage(opts.face_landmarker, fallback_note=opts.face_landmarker_note, **gaps),
        PosesStage(replace(opts.stabilizer, detector=opts.detector), opts.ground_truth),
        AudioStage(),
        AudioFeaturesStage(opts.audio),
    ]


def run_ingest(video: Path, root: Path, opts: IngestOptions) -> dict:
    """Run every stage for one video into the dataset folder ``root``; returns {stage: report}."""
    info = probe_video(video)
    if not info["has_audio"]:
        raise UserError(f"{video} has no audio track: a talking-head dataset needs the speech")
    stages = build_stages(opts)
    names = [s.name for s in stages]
    unknown = sorted(set(opts.force) - set(names))
    if unknown:
        raise UserError(f"preprocess.force={unknown}: not a stage; the stages are {', '.join(names)}")
    runner = StageRunner(StageContext(video, Path(root), opts.fps, opts.progress), opts.force)
    return {stage.name: runner.run(stage) for stage in stages}
