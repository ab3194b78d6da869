"""``synctalk preprocess``: make a dataset folder.

``data=synthetic`` generates the synthetic subject (deterministic for its seed).
``data.video=PATH data.root=DIR`` runs the stages of :mod:`synctalk.data.ingest`.
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from synctalk.config.schema import PreprocessConfig
from synctalk.data.ingest import run_ingest
from synctalk.data.synthetic import SyntheticSpec, generate
from synctalk.errors import UserError

log = logging.getLogger(__name__)
SCHEMA = PreprocessConfig


def run(cfg: DictConfig) -> dict:
    root = Path(cfg.data.root)
    if cfg.data.get("synthetic"):
        spec = SyntheticSpec(**OmegaConf.to_container(cfg.data.synthetic))
        if "synthetic" in cfg.preprocess.force and (root / "synthetic_spec.json").is_file():
            (root / "synthetic_spec.json").unlink()
        generate(spec, root)
        log.info("synthetic subject ready in %s", root)
        return {"root": str(root)}
    if not cfg.data.video:
        raise UserError("set data.video=/path/to/video.mp4 (and data.root=/path/to/dataset), or use data=synthetic")
    lm = cfg.preprocess.landmarks
    report = run_ingest(Path(cfg.data.video), root, cfg.data.fps, cfg.audio_encoder.name, cfg.audio_encoder.window,
                        list(cfg.preprocess.force), max_gap=lm.max_gap, max_missing_fraction=lm.max_missing_fraction)
    log.warning("%s now holds frames, 68-point landmarks, 16 kHz audio and audio features; parsing, background, "
                "blendshapes and head poses are not produced by this version (use the original SyncTalk tools "
                "for those files, then train with data=subject data.root=%s)", root, root)
    return {"root": str(root), **report}
