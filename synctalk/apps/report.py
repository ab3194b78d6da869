"""``synctalk report SWEEP_DIR``: compare the runs of a multirun folder."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from synctalk.config.schema import ReportConfig
from synctalk.sweep_report import write_report

log = logging.getLogger(__name__)
SCHEMA = ReportConfig


def run(cfg: DictConfig) -> dict:
    path = write_report(Path(cfg.sweep_dir).resolve())
    print(path.read_text())
    log.info("wrote %s", path)
    return {"report": str(path)}
