"""``synctalk preprocess``: make a dataset folder.

``data=synthetic`` generates the synthetic subject (deterministic for its seed).
``data.video=PATH data.root=DIR`` runs the stages of :mod:`synctalk.stages` and writes a dataset
that ``synctalk train data=subject`` reads.
"""
from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from synctalk.audio.encoders import AudioConfig
from synctalk.config import to_dataclass
from synctalk.config.schema import PreprocessConfig
from synctalk.errors import UserError
from synctalk.metrics.lip_sync import report_audio_readout
from synctalk.stabilizer.options import (BundleAdjustmentOptions, FlowConfig, PointsOptions, StabilizerOptions,
                                         TrackerConfig)
from synctalk.stages import IngestOptions, run_ingest
from synctalk.stages.crop import CropOptions, CropStage
from synctalk.synthetic.subject import SyntheticSpec, generate

log = logging.getLogger(__name__)
SCHEMA = PreprocessConfig


def run(cfg: DictConfig) -> dict:
    root = Path(cfg.data.root)
    if cfg.data.name == "synthetic":
        spec = SyntheticSpec(**OmegaConf.to_container(cfg.data.synthetic))
        if "synthetic" in cfg.preprocess.force and (root / "synthetic_spec.json").is_file():
            (root / "synthetic_spec.json").unlink()
        generate(spec, root)
        log.info("synthetic subject ready in %s", root)
        return {"root": str(root)}
    if not cfg.data.video:
        raise UserError("set data.video=/path/to/video.mp4 (and data.root=/path/to/dataset), or use data=synthetic")
    p = cfg.preprocess
    stabilizer = StabilizerOptions(
        tracker=to_dataclass(cfg.tracker, TrackerConfig), face_model=instantiate(cfg.face_model),
        points=to_dataclass(p.points, PointsOptions),
        bundle_adjustment=to_dataclass(p.bundle_adjustment, BundleAdjustmentOptions),
        flow=to_dataclass(cfg.flow, FlowConfig))
    crop = CropStage(**vars(to_dataclass(p.crop, CropOptions)))
    landmarker, note = face_landmarker(p.face_landmarker, cfg.paths.root_dir)
    opts = IngestOptions(fps=cfg.data.fps, crop=crop, detector=instantiate(cfg.landmark_detector),
                         audio=to_dataclass(cfg.audio_encoder, AudioConfig),
                         force=list(p.force), max_gap=p.landmarks.max_gap,
                         max_missing_fraction=p.landmarks.max_missing_fraction, background_every=p.background_every,
                         stabilizer=stabilizer, overlay_every=p.overlay_every, face_landmarker=landmarker,
                         face_landmarker_note=note,
                         parsing_backend=p.parsing.backend, bisenet_checkpoint=p.parsing.bisenet_checkpoint, ground_truth=p.ground_truth)
    report = run_ingest(Path(cfg.data.video), root, opts)
    _keep_stabilizer_results(root, report["poses"])
    log.info("dataset ready in %s: train with 'synctalk train data=subject data.root=%s'", root, root)
    short = short_for_lip_sync(report["frames"]["frames"], report["frames"]["fps"])
    if short:
        log.warning(short)
    readout = report_audio_readout(root, cfg.audio_encoder.name)
    return {"root": str(root), **report, **readout}


LIP_SYNC_SECONDS = 60.0  # a shorter clip gets a warning: little of its own speech to learn the mouth from


def short_for_lip_sync(frames: int, fps: float) -> str | None:
    """A warning when a dataset of ``frames`` at ``fps`` is under :data:`LIP_SYNC_SECONDS` long, else None."""
    seconds = frames / fps
    if seconds >= LIP_SYNC_SECONDS:
        return None
    return (f"the dataset holds {seconds:.0f} s of video: a head learns how this face's mouth moves with speech from "
            "the clip's own speech, SyncTalk asks for 3-5 minutes, and heads trained on 8-20 s clips followed new "
            "speech on some faces and not on others (docs/lip_sync.md)")


def face_landmarker(configured: str | None, root_dir: str) -> tuple[str | None, str | None]:
    """The Face Landmarker model file to use (``auto``: found in the weight folders) and, when there is none
    although one was looked for, a note saying where it was looked for and what is used instead."""
    from synctalk.external import find_weight, weight_search_dirs

    found = find_weight(configured, "face_landmarker.task", "Face Landmarker model", "preprocess.face_landmarker",
                        root_dir)
    if found is not None or configured != "auto":
        return (str(found) if found else None), None
    places = ", ".join(str(d) for d in weight_search_dirs(root_dir))
    return None, (f"face_landmarker.task was not found ({places}): the blendshapes are estimated from landmark "
                  "geometry, a weaker stand-in for SyncTalk's Facial Animation Capturer; put the file in one of those "
                  "folders or set preprocess.face_landmarker=/path/to/face_landmarker.task")


def _keep_stabilizer_results(root: Path, poses: dict) -> None:
    """Copy the stabilizer's numbers (``metrics.json``) and plots into the Hydra run folder, so that the runs
    of a sweep such as ``-m tracker.focal.step=100,50`` can be compared with ``synctalk report``."""
    import shutil

    from hydra.core.hydra_config import HydraConfig

    from synctalk.io import write_json
    from synctalk.sweep_report import flatten

    if not HydraConfig.initialized():
        return
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    for name in ("focal_search.json", "focal_curve.png", "poses.png"):
        if (root / "stabilizer" / name).is_file():
            (run_dir / "stabilizer").mkdir(exist_ok=True)
            shutil.copy2(root / "stabilizer" / name, run_dir / "stabilizer" / name)
    numbers = {k: v for k, v in flatten(poses).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    write_json(run_dir / "metrics.json", numbers)
