"""``synctalk preprocess``: make a dataset folder.

``data=synthetic`` generates the synthetic subject (deterministic for its seed).
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from synctalk.config.schema import PreprocessConfig
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
    raise UserError("preprocessing a real video is not available in this version; "
                    "use data=synthetic, or a dataset folder made by the original SyncTalk tools with data=subject")
