"""Typed schemas of every config group: a misspelled or unknown key is an error.

Each dataclass documents its fields; the YAML files under ``conf/`` give the values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from synctalk.data.synthetic import SyntheticSpec


@dataclass
class PathsConfig:
    root_dir: str = "."  # everything relative is resolved against this
    data_dir: str = "data"  # datasets (the synthetic subject is generated here)
    log_dir: str = "outputs"  # run folders: <log_dir>/<task_name>/runs|multiruns/...
    output_dir: str = "."  # the current run folder (set by Hydra)


@dataclass
class DataConfig:
    name: str = "synthetic"
    root: str = "???"  # the dataset folder
    video: Optional[str] = None  # source video for 'synctalk preprocess'
    fps: float = 25.0
    scale: float = 4.0  # metres -> NeRF units
    downscale: int = 1  # train and render at 1/downscale of the dataset resolution
    rays_per_step: int = 1024
    val_frames: int = 4  # validation frames rendered during training (0: all)
    chunk: int = 2048  # rays rendered at once at inference
    cache_mb: int = 2048  # decoded images kept in memory per split (least recently used dropped)
    synthetic: Optional[SyntheticSpec] = None  # set: the folder is generated from this spec


@dataclass
class AudioConfig:
    name: str = "mel"  # features are read from aud_<name>.npy
    feature_dim: int = 80  # size of one audio step
    window: int = 16  # audio steps per video frame
    checkpoint: Optional[str] = None  # weight file of encoders that need one
    features_file: Optional[str] = None  # precomputed features to import, e.g. aud_ds.npy of the original tools


@dataclass
class BlendshapesConfig:
    name: str = "upper7"
    names: list = field(default_factory=list)  # MediaPipe category names, or [AU45]
    smooth_window: int = 5  # Savitzky-Golay window (0: off)
    smooth_order: int = 3


@dataclass
class FocalRange:
    start: float = 500.0
    stop: float = 1450.0  # inclusive
    step: float = 50.0


@dataclass
class TrackerConfig:
    name: str = "synctalk"
    focal: FocalRange = field(default_factory=FocalRange)
    every_k: int = 10  # frames used for the focal search
    min_search_frames: int = 50  # every_k is lowered on short clips to search on at least this many frames
    max_search_frames: int = 500  # neither the grid nor the refinement fits more frames (long videos)
    steps: int = 2000
    lr: float = 0.3
    refine_points: int = 9  # focals tried between the winner's grid neighbours (0: no refinement)
    refine_every_k: int = 1  # frames used for the refinement
    focal_landmarks: str = "all"  # all | rigid (only landmarks expressions hardly move) | inner (no jaw contour)
    check_halves: bool = False  # also search the focal on each half of the video and report their agreement
    check_perspective: bool = False  # also measure how much of a change of perspective the landmark detector follows
    perspective_frames: int = 60  # frames warped to other focal lengths by the perspective check
    focal_expressions: bool = False  # score focal candidates with the expression components (default: a rigid face)
    pose_source: str = "bundle_adjustment"  # landmarks (face-model fit) | bundle_adjustment (+ tracking, BA)


@dataclass
class FlowConfig:
    backend: str = "opencv"  # opencv | cotracker
    checkpoint: Optional[str] = None


@dataclass
class StageConfig:
    name: str = "head"  # head | lips | torso
    init_from: Optional[str] = None  # checkpoint of the previous stage (weights only)
    lips_ray_fraction: float = 0.0  # share of rays sampled inside the mouth box
    patch_size: int = 0  # > 0: one square patch of rays per step for the patch losses (px at data resolution)
    patch_weight: float = 0.0  # patch loss on patches inside the face box (every other step)
    lips_patch_weight: float = 0.0  # patch loss on patches centred on the mouth (the other steps)


@dataclass
class GtModeConfig:
    name: str = "parsed"  # parsed | with_hair
    mask_blur: int = 9  # Gaussian blur of the face mask for portrait blending (odd, px at 512)


@dataclass
class MetricsConfig:
    """Which evaluation metrics run and where their weight files are; a metric whose file is missing is
    skipped with a note in metrics.json."""

    lpips_backbone: Optional[str] = None  # alexnet-owt-7be5be79.pth (default: model.loss.lpips_backbone, then the torch hub cache)
    fid_inception: Optional[str] = None  # weights-inception-2015-12-05-6726825d.pth (default: the torch hub cache)
    niqe_model: Optional[str] = None  # NIQE pristine model: modelparameters.mat or a fitted .npz
    brisque: bool = True  # BRISQUE with the LIVE model of the brisque package
    landmarks: bool = True  # LMD and the blendshape AU errors (FaceMesh on render and GT)
    audio_response: bool = True  # mouth_audio_response: the mouth box's change when another frame's audio drives it
    syncnet: Optional[str] = None  # syncnet_v2.model for LSE-C / LSE-D
    sync_vshift: int = 15  # audio-video offsets searched by LSE, frames
    lip_sync: bool = True  # mouth correlation / error against the GT and the sync test (synctalk.metrics.lip_sync)
    face_landmarker: Optional[str] = "auto"  # face_landmarker.task that reads the mouths (auto: the weight folders; none found: FaceMesh geometry)
    sync_shift_s: float = 0.5  # the sync test's audio shift, seconds (0: no sync test)


@dataclass
class EncodingConfig:
    _target_: str = "synctalk.models.encoding.TriPlaneHashEncoding"
    backend: str = "torch"  # torch | tcnn
    num_levels: int = 12
    features_per_level: int = 1
    log2_hashmap_size: int = 14
    base_resolution: int = 64
    max_resolution: int = 512
    bound: float = 1.0  # half-size of the scene box, NeRF units
    cpu_kernel: bool = True  # torch backend on a CPU: the fused C++ lookup (built on first use); false: tensor ops


@dataclass
class LossConfig:
    photometric: str = "mse"  # mse | l1, per ray
    uncertainty_start: float = 0.5  # fraction of the steps after which the photometric loss is uncertainty-weighted (>= 1: never)
    uncertainty_beta_min: float = 0.1  # smallest scale of the uncertainty weighting
    entropy_weight: float = 1.0e-4  # binary entropy of the ray opacities
    attention_weight: float = 1.0e-4  # masked attention loss, ramped up linearly over training
    patch: str = "ssim"  # patch loss of the lips stage: ssim (weight-free) | lpips (needs AlexNet weights)
    lpips_backbone: Optional[str] = None  # alexnet-owt-7be5be79.pth (default: the torch hub cache)
    audio_mouth_weight: float = 0.0  # auxiliary target: the audio embedding must predict the frame's mouth blendshapes (bs.npy)


@dataclass
class OccupancyConfig:
    enabled: bool = True  # skip ray samples in empty cells
    resolution: int = 64  # cells per side
    alpha_threshold: float = 0.01  # a cell is empty when one sample there stays below this opacity
    start_step: int = 200  # first grid update (every cell counts as occupied before)
    interval: int = 16  # steps between updates
    cells_per_update: int = 65536  # random cells re-measured per update (0: all)
    frames_per_update: int = 2  # random training frames whose conditions are measured (max density)


@dataclass
class ModelConfig:
    net: Any = None  # _target_ node of the network (synctalk.models.head_nerf.HeadNeRF)
    optimizer: Any = None  # _partial_ optimizer, finished with the parameter groups
    lr_grid: float = 1e-2  # learning rate of the hash-grid tables
    lr_net: float = 1e-3  # learning rate of the MLPs
    lr_decay: float = 0.1  # learning rates are multiplied by lr_decay ** (step / max_steps)
    ema_decay: float = 0.95  # exponential moving average of the head weights, used to render (0: off)
    loss: LossConfig = field(default_factory=LossConfig)
    occupancy: OccupancyConfig = field(default_factory=OccupancyConfig)
    torso: Any = None  # _target_ node of the torso field (built for stage=torso)
    torso_deform_weight: float = 1e-5  # weight of the torso's mean squared deformation
    torso_entropy_weight: float = 1e-4  # weight of the torso alpha entropy


@dataclass
class SubjectGroups:
    """The groups that describe a dataset and how it is made (shared by train and preprocess)."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    audio_encoder: AudioConfig = field(default_factory=AudioConfig)
    blendshapes: BlendshapesConfig = field(default_factory=BlendshapesConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)


@dataclass
class TrainConfig(SubjectGroups):
    task_name: str = "train"
    threads: Optional[int] = None  # CPU threads (None: the free cores, re-decided as the job runs; synctalk.threads)
    seed: int = 42
    ckpt_path: Optional[str] = None  # resume this run's checkpoint (continues the step count)
    render_video: bool = True  # render the validation split to media/val.mp4 after training
    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    gt_mode: GtModeConfig = field(default_factory=GtModeConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logger: Any = None  # _target_ node of a Lightning logger, or empty for none
    trainer: Any = None  # _target_ node: pytorch_lightning.Trainer
    experiment: Optional[str] = None


@dataclass
class EvaluateConfig:
    task_name: str = "evaluate"
    threads: Optional[int] = None  # CPU threads (None: the free cores, re-decided as the job runs; synctalk.threads)
    ckpt: str = "???"
    data_root: Optional[str] = None  # evaluate on another dataset folder (default: the run's)
    split: str = "val"
    paths: PathsConfig = field(default_factory=PathsConfig)
    gt_mode: GtModeConfig = field(default_factory=GtModeConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    render_video: bool = False


@dataclass
class RenderConfig:
    task_name: str = "render"
    threads: Optional[int] = None  # CPU threads (None: the free cores, re-decided as the job runs; synctalk.threads)
    ckpt: str = "???"
    audio: str = "???"  # any audio or video file with sound
    output: str = "???"  # .mp4
    poses: str = "replay"  # replay (back and forth) | smoothed (replay, Gaussian-smoothed) | still
    pose_smoothing: float = 2.0  # Gaussian sigma in frames for poses=smoothed
    downscale: Optional[int] = None  # render at 1/downscale of the dataset resolution (default: the run's)
    paths: PathsConfig = field(default_factory=PathsConfig)
    gt_mode: GtModeConfig = field(default_factory=GtModeConfig)


@dataclass
class ReportConfig:
    task_name: str = "report"
    sweep_dir: str = "???"
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class LandmarkOptions:
    max_gap: int = 5  # longest run of frames without a face that is interpolated
    max_missing_fraction: float = 0.1  # above this share of faceless frames the stage fails


@dataclass
class FaceModelOptions:
    backend: str = "canonical"  # canonical (metric face, weight-free) | subject (the subject's FaceMesh) | template | bfm (Basel Face Model 2009)
    bfm_dir: Optional[str] = None  # folder with the BFM files (backend=bfm)
    template: Optional[str] = None  # 68 x 3 face shape, .npy or text (backend=template)
    num_exp: int = 10  # expression components of the subject model
    id_reg: float = 0.5  # weight of mean(identity^2) in the landmark fit
    exp_reg: float = 0.5  # weight of mean(expression^2)


@dataclass
class PointsOptions:
    region: str = "head"  # head (parsing head class, with hair) | face (face skin) | upper_head | upper_face
    rule: str = "stable"  # stable (score minima, released code) | salient (maxima, paper)
    window: int = 5  # extrema within window x window pixels
    min_distance: float = 5.0  # pixels between keypoints
    max_points: int = 400
    fb_threshold: float = 2.0  # forward-backward flow error (px) above which a point is not visible
    min_points: int = 20  # fewer trackable points is an error
    erode_px: int = 3  # the region mask is eroded by this much before choosing points
    score_frames: int = 500  # frames whose flow scores the keypoints (longer videos: 10 runs spread over it)
    workers: int = 0  # threads computing the flow (0: one per core)


@dataclass
class BundleAdjustmentOptions:
    points_steps: int = 500  # stage 1: 3D points only
    points_lr: float = 1e-3  # metres per step
    joint_steps: int = 2000  # stage 2: points, rotations and translations
    joint_lr: float = 1e-4  # metres per step for points; x1000 for poses (degrees, millimetres)
    lr_decay: float = 0.01  # the joint stage's learning rate falls exponentially to this fraction
    robust: str = "huber"  # huber | none
    huber_px: float = 1.0
    outlier_factor: float = 2.0  # drop tracks / observations over this many times the median error, re-run (0: off)
    max_drift_deg: float = 10.0  # BA rotations further than this (median) from the face-model fit are rejected
    smoothness: float = 0.0  # weight of the temporal second-difference prior on the poses
    batch_frames: int = 0  # frames per step (0: all)


@dataclass
class ParsingOptions:
    backend: str = "mediapipe"  # mediapipe (weight-free) | bisenet (19-class face-parsing checkpoint)
    bisenet_checkpoint: Optional[str] = None  # 79999_iter.pth of the face-parsing BiSeNet


@dataclass
class CropOptions:
    mode: str = "auto"  # auto (head box unless a head-centred square) | off (frames as they are) | box (the given box)
    box: Optional[list] = None  # [x, y, side] in source pixels (mode=box)
    size: int = 512  # side in pixels of the cropped frames
    face_scale: float = 2.0  # box side / median face size (the HDTF framing)
    face_centre: float = 0.55  # face centre from the top of the box, share of its side
    motion_margin: float = 1.15  # the box holds this many times the face plus its motion
    full_frame_fraction: float = 0.75  # a square video whose box would be at least this share of it is used whole
    min_face_px: int = 64  # a smaller face in the source is an error
    samples: int = 60  # frames spread over the clip in which the face is detected
    min_seconds: float = 1.0  # a shorter clip is an error


@dataclass
class PreprocessOptions:
    force: list = field(default_factory=list)  # stages to redo even when cached
    crop: CropOptions = field(default_factory=CropOptions)
    landmarks: LandmarkOptions = field(default_factory=LandmarkOptions)
    parsing: ParsingOptions = field(default_factory=ParsingOptions)
    background_every: int = 20  # every k-th frame is used for the static background
    overlay_every: int = 25  # every k-th frame gets a checking image in overlays/
    face_landmarker: Optional[str] = "auto"  # face_landmarker.task with blendshapes; auto: found in the weight folders; None: landmark geometry
    face_model: FaceModelOptions = field(default_factory=FaceModelOptions)
    points: PointsOptions = field(default_factory=PointsOptions)
    bundle_adjustment: BundleAdjustmentOptions = field(default_factory=BundleAdjustmentOptions)
    ground_truth: Optional[str] = None  # ground_truth.npz of a synthetic subject: the poses stage reports focal and pose errors


@dataclass
class PreprocessConfig(SubjectGroups):
    task_name: str = "preprocess"
    threads: Optional[int] = None  # CPU threads (None: the free cores, re-decided as the job runs; synctalk.threads)
    preprocess: PreprocessOptions = field(default_factory=PreprocessOptions)
