"""``synctalk train``: train one stage of the head NeRF; ``synctalk demo`` runs it on the demo experiment."""
from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint

from synctalk import threads
from synctalk.config.schema import TrainConfig
from synctalk.data.layout import dataset_summary
from synctalk.distributed import ddp_ranks, global_rank
from synctalk.evaluation import evaluate_split
from synctalk.errors import UserError
from synctalk.io import write_json
from synctalk.metrics.lip_sync import report_audio_readout
from synctalk.runs import (AtomicCheckpointIO, LearningCurve, build_datamodule, build_loggers, build_system,
                           check_audio_features, check_resume, finish_loggers, load_stage_weights, write_run_info)

log = logging.getLogger(__name__)
SCHEMA = TrainConfig


def run(cfg: DictConfig) -> dict:
    """Train, evaluate the validation split, write ``metrics.json``; returns the metrics (rank 0; the other
    ranks of ``trainer=ddp`` only train and return {})."""
    out = Path(cfg.paths.output_dir)
    if str(cfg.trainer.get("accelerator")) in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError("this run asks for a CUDA GPU (trainer.accelerator=gpu, e.g. from experiment=synctalk or "
                        "trainer=gpu) and this machine has none: add trainer.accelerator=auto to train here anyway, "
                        "or use experiment=demo / experiment=lip_sync, the CPU recipes")
    if cfg.ckpt_path:
        check_resume(cfg.ckpt_path, cfg)
    check_audio_features(cfg.data.root, cfg.audio_encoder, reads_pauses=cfg.data.pause_share > 0)
    datamodule = build_datamodule(cfg)
    rank = global_rank()
    if rank == 0:
        write_run_info(out, cfg)
        datamodule.prepare_data()  # generates the synthetic subject before any other rank reads it
    with ddp_ranks(cfg):
        return _train(cfg, out, datamodule, rank)


def _train(cfg: DictConfig, out: Path, datamodule, rank: int) -> dict:
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule.setup()
    system = build_system(cfg, len(datamodule.train_frames), media_dir=str(out / "media"))
    if system.net.expression_region == "upper_face":
        system.set_upper_face_plane(datamodule.train_frames.upper_face_plane())
    if cfg.stage.init_from:
        load_stage_weights(system, cfg.stage.init_from, cfg)
    readout = report_audio_readout(datamodule.root, cfg.audio_encoder.name) if rank == 0 else {}
    loggers = build_loggers(cfg) if rank == 0 else []
    failed = True
    try:
        if loggers:
            from synctalk.sweep_report import flatten

            loggers[0].log_hyperparams(flatten(system.hparams.config))
        checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="step{step:06d}", auto_insert_metric_name=False,
                                     save_last=True, every_n_train_steps=cfg.trainer.val_check_interval)
        trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=[checkpoint, LearningCurve(out / "learning_curve.csv"),
                                                                          threads.TickEveryStep()],
                              plugins=[AtomicCheckpointIO()], default_root_dir=str(out))
        trainer.fit(system, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        system.to(trainer.strategy.root_device)  # Lightning hands the module back on the CPU: evaluate where it trained
        if not trainer.is_global_zero:
            failed = False
            return {}
        video = out / "media" / "val.mp4" if cfg.render_video else None
        metrics = evaluate_split(system, datamodule.val, cfg.gt_mode.name, cfg.gt_mode.mask_blur, cfg.metrics, video,
                                 cfg.data.fps, cfg.model.loss.lpips_backbone, out / "media" / "eval_sample.png",
                                 weights_root=cfg.paths.root_dir, mouth_signals_path=out / "mouth_signals.npz")
        metrics.update(step=int(trainer.global_step), stage=cfg.stage.name,
                       train_psnr=float(trainer.callback_metrics.get("train/psnr", float("nan"))),
                       mlp_dtype=str(system.net.density_net.compute_dtype(system.device)).removeprefix("torch."),
                       encoding_lookup=system.net.encoding.grid.lookup(system.device),
                       dataset={**dataset_summary(datamodule.root), **readout},
                       train_frames=len(datamodule.train_frames))
        threads.record(metrics)
        for logger in loggers:
            logger.log_metrics({f"final/{k}": v for k, v in metrics.items() if isinstance(v, float)},
                               step=trainer.global_step)
            if video is not None and video.is_file() and hasattr(logger, "log_video"):
                logger.log_video(key="val/video", videos=[str(video)], step=trainer.global_step)
        write_json(out / "metrics.json", metrics)
        log.info("validation PSNR %.2f dB (%s GT) after %d steps; run folder %s", metrics["psnr"],
                 cfg.gt_mode.name, trainer.global_step, out)
        failed = False
        return metrics
    finally:
        finish_loggers(loggers, failed)
