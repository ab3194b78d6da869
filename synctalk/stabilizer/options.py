"""Settings of the Head-Sync Stabilizer, each the schema of its config node: the ``tracker`` and ``flow`` groups
and ``preprocess.points``, ``preprocess.bundle_adjustment`` (the ``face_model`` and ``landmark_detector`` groups are
classes, :mod:`synctalk.face.face_model` and :mod:`synctalk.face.landmark_detectors`). The algorithms take these
objects as they are (same names as in the YAML files); choices are enums, checked when the config is composed."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

from synctalk.choice import Choice
from synctalk.face.face_model import CanonicalFace, FaceModelSpec
from synctalk.face.landmark_detectors import FaceMesh, LandmarkDetector


class FocalLandmarks(Choice):
    all = "all"  # every landmark of the face model
    rigid = "rigid"  # only the landmarks expressions hardly move (nose, eye corners, upper jaw contour)
    inner = "inner"  # all but the jaw contour (a silhouette that slides over the face as it turns)


class PoseSource(Choice):
    landmarks = "landmarks"  # the face-model fit
    bundle_adjustment = "bundle_adjustment"  # head point tracking and bundle adjustment (kept when better)


@dataclass
class FocalRange:
    start: float = 500.0  # px at 512 px width
    stop: float = 1450.0  # inclusive
    step: float = 50.0


class FocalSource(Choice):
    landmarks = "landmarks"  # the landmark focal search alone
    points = "points"  # measured again on the tracked head points (bundle adjustment with the focal free)


@dataclass
class FocalPointsOptions:
    """The focal measured on the tracked head points (:mod:`synctalk.stabilizer.focal_from_points`)."""

    frames: int = 150  # frames spread over the clip that the focal is fitted on
    # the focal's own tracks of those frames: flow on contrast-normalised frames (Gaussian sigma, px at 512), since
    # shading moving over a turning head biases raw-flow tracks
    normalize_px: float = 3.0
    # and patch flow with no smoothness term (preprocess.points.flow_patch_px), since on compressed video the
    # smoothness term draws the faint skin texture's flow towards its neighbours and biases the focal short; both
    # equal to preprocess.points': the bundle adjustment's tracks are used
    flow_patch_px: int = 16
    rounds: int = 3  # fits, each after dropping the outliers of the one before
    outlier_factor: float = 2.0  # points / observations over this many times the median error are dropped
    huber_px: float = 1.0
    iterations: int = 40  # Levenberg-Marquardt steps per fit at most
    check_halves: bool = True  # also fit each half of the clip alone
    check_parts: bool = True  # also fit with each sixth of the head's points left out (spatial jackknife)
    max_std_pct: float = 3.0  # above (either deviation): not measurable on this clip, the landmark focal is kept
    max_halves_pct: float = 10.0  # halves further apart: the landmark focal is kept
    min_ratio: float = 0.33  # the accepted focal, times the landmark focal: at least
    max_ratio: float = 3.0  # and at most


@dataclass
class TrackerConfig:
    """The Head Motion Tracker: the focal search, the landmark fit, its checks and where the poses come from."""

    name: str = "synctalk"
    focal: FocalRange = field(default_factory=FocalRange)
    every_k: int = 10  # frames used for the focal search
    min_search_frames: int = 50  # every_k is lowered on short clips to search on at least this many frames
    max_search_frames: int = 500  # neither the grid nor the refinement fits more frames (long videos)
    steps: int = 2000  # Adam steps of each landmark fit
    lr: float = 0.3
    refine_points: int = 9  # focals tried between the winner's grid neighbours (0: no refinement)
    refine_every_k: int = 1  # frames used for the refinement
    focal_landmarks: FocalLandmarks = FocalLandmarks.all  # the landmarks that score a focal
    check_halves: bool = False  # also search the focal on each half of the video and report their agreement
    check_perspective: bool = False  # also measure how much of a change of perspective the landmark detector follows
    perspective_frames: int = 60  # frames warped to other focal lengths by the perspective check
    focal_expressions: bool = False  # score focal candidates with the expression components (default: a rigid face)
    pose_source: PoseSource = PoseSource.bundle_adjustment
    focal_source: FocalSource = FocalSource.points
    focal_points: FocalPointsOptions = field(default_factory=FocalPointsOptions)


class FlowBackend(Choice):
    opencv = "opencv"  # DIS optical flow
    cotracker = "cotracker"  # CoTracker (optional package, flow.checkpoint)


@dataclass
class FlowConfig:
    backend: FlowBackend = FlowBackend.opencv
    checkpoint: Optional[str] = None


class PointsRegion(Choice):
    head = "head"  # the parsing's head class, hair included
    face = "face"  # face skin
    upper_head = "upper_head"  # the head above the nose base
    upper_face = "upper_face"  # the face skin above the nose base


class PointsRule(Choice):
    stable = "stable"  # keypoints at minima of the temporal Laplacian score (the released code)
    salient = "salient"  # at its maxima (the paper)


@dataclass
class PointsOptions:
    region: PointsRegion = PointsRegion.head
    rule: PointsRule = PointsRule.stable
    window: int = 5  # extrema within window x window pixels
    min_distance: float = 5.0  # pixels between keypoints
    max_points: int = 400
    fb_threshold: float = 2.0  # forward-backward flow error (px) above which a point is not visible
    min_points: int = 20  # fewer trackable points is an error
    erode_px: int = 3  # the region mask is eroded by this much before choosing points
    score_frames: int = 500  # frames whose flow scores the keypoints (longer videos: 10 runs spread over it)
    workers: int = 0  # threads computing the flow (0: the job's current thread count)
    normalize_px: float = 0.0  # local contrast normalisation before the flow (Gaussian sigma, px at 512; 0: raw frames)
    flow_patch_px: int = 0  # 0: DIS's medium preset (8 px patches, a smoothness term); N: N px patches every 2 px, no
    # smoothness term (px at 512)


def focal_tracking(points: PointsOptions, focal_points: FocalPointsOptions) -> PointsOptions:
    """The point tracking the focal's own tracks use: ``points`` with the flow settings of ``focal_points``."""
    return replace(points, normalize_px=focal_points.normalize_px, flow_patch_px=focal_points.flow_patch_px)


class RobustLoss(Choice):
    huber = "huber"
    none = "none"  # squared error


@dataclass
class BundleAdjustmentOptions:
    points_steps: int = 500  # stage 1: 3D points only
    points_lr: float = 1e-3  # metres per step
    joint_steps: int = 2000  # stage 2: points, rotations and translations
    joint_lr: float = 1e-4  # metres per step for points; x1000 for poses (degrees, millimetres)
    lr_decay: float = 0.01  # the joint stage's learning rate falls exponentially to this fraction
    robust: RobustLoss = RobustLoss.huber
    huber_px: float = 1.0
    outlier_factor: float = 2.0  # drop tracks / observations over this many times the median error, re-run (0: off)
    max_drift_deg: float = 10.0  # BA rotations further than this (median) from the face-model fit are rejected
    smoothness: float = 0.0  # weight of the temporal second-difference prior on the poses
    batch_frames: int = 0  # frames per step (0: all)


@dataclass
class StabilizerOptions:
    """Everything the stabilizer reads from the config."""

    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    face_model: FaceModelSpec = field(default_factory=CanonicalFace)
    points: PointsOptions = field(default_factory=PointsOptions)
    bundle_adjustment: BundleAdjustmentOptions = field(default_factory=BundleAdjustmentOptions)
    flow: FlowConfig = field(default_factory=FlowConfig)
    detector: LandmarkDetector = field(default_factory=FaceMesh)  # the dataset's, for the perspective check
