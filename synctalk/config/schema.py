"""Typed schemas of every config group: a misspelled or unknown key, or a choice that is not one of its options,
is an error when the config is composed.

Each dataclass documents its fields; the YAML files under ``conf/`` give the values. The settings of a component
live beside it (the stabilizer's in :mod:`synctalk.stabilizer.options`) and are composed here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from synctalk.audio.encoders import AudioConfig
from synctalk.models.losses import LossConfig
from synctalk.models.occupancy import OccupancyConfig
from synctalk.stabilizer.options import BundleAdjustmentOptions, FlowConfig, PointsOptions, TrackerConfig
from synctalk.stages.crop import CropOptions
from synctalk.stages.parsing import ParsingOptions
from synctalk.synthetic.subject import SyntheticSpec
from synctalk.systems.head import StageConfig


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
    mouth_downscale: Optional[int] = None  # mouth-box rays and mouth patches at 1/this (1: the dataset's); None: downscale
    rays_per_step: int = 1024
    val_frames: int = 4  # validation frames rendered during training (0: all)
    chunk: int = 2048  # rays rendered at once at inference
    cache_mb: int = 2048  # decoded images kept in memory per split (least recently used dropped)
    pause_share: float = 0.0  # items pairing a closed-mouth frame with a pause's features (aud_<name>_pause.npy)
    train_seconds: Optional[float] = None  # train on the training split's last this many seconds (None: all of it)
    folds: Optional[int] = None  # cross-validate the clip: its frames in this many contiguous blocks (None: off)
    fold: int = 0  # the block held out (0 .. folds - 1); the others train
    fold_gap: int = 0  # frames either side of the held-out block left out of training too
    synthetic: Optional[SyntheticSpec] = None  # set: the folder is generated from this spec


@dataclass
class BlendshapesConfig:
    name: str = "upper7"
    names: list = field(default_factory=list)  # MediaPipe category names, or [AU45]
    smooth_window: int = 5  # Savitzky-Golay window (0: off)
    smooth_order: int = 3


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
    gpu_kernel: bool = True  # torch backend on a CUDA GPU: the Triton lookup (compiled on first use); false: tensor ops


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
    downscale: Optional[int] = None  # evaluate at 1/downscale of the dataset resolution (default: the run's)
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
    measure_mouth: bool = True  # correlation of the mouth opening with the audio's phones and loudness
    face_landmarker: Optional[str] = "auto"  # the measure's reader (auto: found in the weight folders; else FaceMesh)
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
class PreprocessOptions:
    force: list = field(default_factory=list)  # stages to redo even when cached
    crop: CropOptions = field(default_factory=CropOptions)
    landmarks: LandmarkOptions = field(default_factory=LandmarkOptions)
    parsing: ParsingOptions = field(default_factory=ParsingOptions)
    background_every: int = 20  # every k-th frame is used for the static background
    overlay_every: int = 25  # every k-th frame gets a checking image in overlays/
    face_landmarker: Optional[str] = "auto"  # face_landmarker.task with blendshapes; auto: found in the weight folders; None: landmark geometry
    points: PointsOptions = field(default_factory=PointsOptions)
    bundle_adjustment: BundleAdjustmentOptions = field(default_factory=BundleAdjustmentOptions)
    ground_truth: Optional[str] = None  # ground_truth.npz of a synthetic subject: the poses stage reports focal and pose errors


@dataclass
class PreprocessConfig(SubjectGroups):
    task_name: str = "preprocess"
    threads: Optional[int] = None  # CPU threads (None: the free cores, re-decided as the job runs; synctalk.threads)
    preprocess: PreprocessOptions = field(default_factory=PreprocessOptions)
    landmark_detector: Any = None  # _target_ node: a synctalk.face.landmark_detectors.LandmarkDetector
    face_model: Any = None  # _target_ node: a synctalk.face.face_model.FaceModelSpec
