"""``synctalk preprocess``: make a dataset folder.

``data=synthetic`` generates the synthetic subject (deterministic for its seed).
``data.video=PATH data.root=DIR`` runs the stages of :mod:`synctalk.data.ingest` and writes a dataset
that ``synctalk train data=subject`` reads.
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from synctalk.config.schema import AudioConfig, PreprocessConfig
from synctalk.data.ingest import IngestOptions, run_ingest
from synctalk.data.synthetic import SyntheticSpec, generate
from synctalk.errors import UserError

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
    if cfg.tracker.pose_source != "landmarks":
        raise UserError(f"tracker.pose_source={cfg.tracker.pose_source} is not available in this version; "
                        f"use tracker.pose_source=landmarks")
    p = cfg.preprocess
    opts = IngestOptions(fps=cfg.data.fps, audio=AudioConfig(**OmegaConf.to_container(cfg.audio_encoder)),
                         force=list(p.force), max_gap=p.landmarks.max_gap,
                         max_missing_fraction=p.landmarks.max_missing_fraction, background_every=p.background_every,
                         focal_at_512=p.poses.focal_at_512, pose_smooth_window=p.poses.smooth_window,
                         overlay_every=p.overlay_every, face_landmarker=p.face_landmarker,
                         parsing_backend=p.parsing.backend, bisenet_checkpoint=p.parsing.bisenet_checkpoint)
    report = run_ingest(Path(cfg.data.video), root, opts)
    log.info("dataset ready in %s: train with 'synctalk train data=subject data.root=%s'", root, root)
    return {"root": str(root), **report}
