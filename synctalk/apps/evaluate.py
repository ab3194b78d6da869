"""``synctalk evaluate ckpt=PATH``: score a trained run under both GT modes."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from synctalk import threads
from synctalk.config.schema import EvaluateConfig
from synctalk.data.datamodule import SubjectFrames
from synctalk.evaluation import evaluate_split
from synctalk.io import write_json
from synctalk.runs import check_audio_features, data_fold, load_run

log = logging.getLogger(__name__)
SCHEMA = EvaluateConfig


def run(cfg: DictConfig) -> dict:
    run_cfg, system = load_run(cfg.ckpt)
    root = cfg.data_root or run_cfg.data.root
    downscale = cfg.downscale or run_cfg.data.downscale
    check_audio_features(root, run_cfg.audio_encoder)
    fold = data_fold(run_cfg.data) if str(root) == str(run_cfg.data.root) else None  # the run's own held-out block
    frames = SubjectFrames(root, cfg.split, run_cfg.audio_encoder.name, list(run_cfg.blendshapes.names), downscale,
                           run_cfg.data.scale, run_cfg.blendshapes.smooth_window, run_cfg.blendshapes.smooth_order,
                           run_cfg.data.cache_mb, fold=fold)
    out = Path(cfg.paths.output_dir)
    video = out / f"{cfg.split}.mp4" if cfg.render_video else None
    metrics = evaluate_split(system, frames, cfg.gt_mode.name, cfg.gt_mode.mask_blur, cfg.metrics, video,
                             run_cfg.data.fps, run_cfg.model.loss.lpips_backbone, out / "eval_sample.png",
                             weights_root=cfg.paths.root_dir, mouth_signals_path=out / "mouth_signals.npz")
    metrics.update(ckpt=str(Path(cfg.ckpt).resolve()), data_root=str(root), split=cfg.split,
                   resolution=list(frames.size))
    threads.record(metrics)
    write_json(out / "metrics.json", metrics)
    for key, value in metrics.items():
        log.info("%-22s %s", key, f"{value:.4f}" if isinstance(value, float) else value)
    return metrics
