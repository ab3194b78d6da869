"""Building a run from its config, and everything a run folder holds.

A run folder (owned by Hydra) contains ``.hydra/`` (the composed config and the
overrides), ``config_resolved.yaml``, ``run_info.json`` (git revision, versions,
command), ``checkpoints/``, ``metrics.json`` (written last: a run without it did not
finish), ``media/`` and the logger's files.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.plugins.io import TorchCheckpointIO

from synctalk import external
from synctalk.config import to_dataclass
from synctalk.config.schema import TrainConfig
from synctalk.data.datamodule import SubjectDataModule
from synctalk.errors import UserError
from synctalk.face.blendshape_sets import MOUTH_BLENDSHAPES
from synctalk.io import atomic_path, read_json, write_json
from synctalk.models.losses import LossConfig
from synctalk.models.occupancy import OccupancyConfig
from synctalk.synthetic.subject import SyntheticSpec, generate
from synctalk.systems.head import HeadNeRFSystem, StageConfig


def resolved_container(cfg: DictConfig) -> dict:
    """The config as plain, fully resolved Python data (without the ``hydra`` node)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    return data


def check_audio_features(root: str | Path, audio_cfg: DictConfig, reads_pauses: bool = False) -> None:
    """Fail when the dataset's ``aud_<name>.npy`` was written by the ``audio_features`` stage with other settings
    than ``audio_cfg`` (a setting either side lacks counts as its default); ``noise_floors_db`` (which makes
    ``aud_<name>_pause.npy``) only when the run ``reads_pauses``. Datasets without the stage's record (generated, or
    features copied in) are not checked."""
    from synctalk.audio.encoders import AudioConfig

    marker = Path(root) / ".stages" / "audio_features.json"
    if not marker.is_file():
        return
    written = read_json(marker).get("key", {}).get("settings", {}).get("audio")
    if not isinstance(written, dict) or written.get("name") != audio_cfg.name:
        return  # the record is of another encoder's features (the stage keeps the last one's)
    defaults = asdict(AudioConfig())
    wanted = {**defaults, **OmegaConf.to_container(audio_cfg, resolve=True)}
    written = {**defaults, **written}

    def shown(value: Any) -> str:  # as the command line writes it
        return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)

    changed = [f"audio_encoder.{k}={shown(written[k])} (this run: {shown(wanted[k])})"
               for k in defaults if written[k] != wanted[k] and (reads_pauses or k != "noise_floors_db")]
    if changed:
        raise UserError(f"{Path(root) / f'aud_{audio_cfg.name}.npy'} was computed with {', '.join(changed)}: run "
                        f"'synctalk preprocess data.video=<the source video> data.root={root} "
                        f"audio_encoder={audio_cfg.name}' with this run's audio_encoder settings (only the features "
                        f"stage runs), or train with the settings the features were written with")


def train_frames_kept(data_cfg: DictConfig) -> int | None:
    """How many of the training split's last frames ``data.train_seconds`` keeps (None: all)."""
    seconds = data_cfg.get("train_seconds")
    if seconds is None:
        return None
    frames = int(round(seconds * data_cfg.fps))
    if frames < 1:
        raise UserError(f"data.train_seconds={seconds} keeps no frame at {data_cfg.fps:g} fps")
    return frames


def data_fold(data_cfg: DictConfig) -> tuple[int, int, int] | None:
    """``(data.fold, data.folds, data.fold_gap)`` of a cross-validated run (None: the dataset's own split)."""
    folds = data_cfg.get("folds")
    if folds is None:
        return None
    if data_cfg.get("train_seconds") is not None:
        raise UserError("data.folds and data.train_seconds cannot be combined: a fold trains on the clip's other "
                        "blocks, not on the training split's last seconds")
    gap = int(data_cfg.get("fold_gap", 0))
    if gap < 0:
        raise UserError(f"data.fold_gap={gap} must be 0 or more frames")
    return int(data_cfg.get("fold", 0)), int(folds), gap


def build_datamodule(cfg: DictConfig) -> SubjectDataModule:
    d = cfg.data
    return SubjectDataModule(
        root=d.root, audio_name=cfg.audio_encoder.name, eye_names=list(cfg.blendshapes.names), scale=d.scale,
        downscale=d.downscale, mouth_downscale=d.get("mouth_downscale"), rays_per_step=d.rays_per_step,
        val_frames=d.val_frames, lips_ray_fraction=cfg.stage.lips_ray_fraction,
        smooth_window=cfg.blendshapes.smooth_window, smooth_order=cfg.blendshapes.smooth_order, cache_mb=d.cache_mb,
        audio_frames=cfg.model.net.get("smooth_frames", 1), patch_size=cfg.stage.patch_size,
        regions=cfg.stage.name != "torso" and cfg.model.loss.attention_weight > 0,
        pause_share=d.get("pause_share", 0.0), train_last=train_frames_kept(d), fold=data_fold(d),
        prepare=partial(generate, SyntheticSpec(**OmegaConf.to_container(d.synthetic)))
        if d.name == "synthetic" and d.get("synthetic") else None)


def build_system(cfg: DictConfig, num_train_frames: int, media_dir: str | None = None) -> HeadNeRFSystem:
    """The LightningModule of a run, with freshly initialised weights.

    ``num_train_frames`` sizes the per-frame latent codes of the head and the torso field.
    """
    check_backends(cfg)
    loss = to_dataclass(cfg.model.loss, LossConfig)
    mouth_dim = len(MOUTH_BLENDSHAPES) if loss.audio_mouth_weight > 0 else 0
    if cfg.model.net.get("mouth_condition") and not mouth_dim:
        raise UserError("model.net.mouth_condition=true needs the mouth head: set model.loss.audio_mouth_weight > 0")
    if (cfg.model.net.get("mouth_only") or loss.mouth_teacher > 0) and not cfg.model.net.get("mouth_condition"):
        raise UserError("model.net.mouth_only and model.loss.mouth_teacher act on the mouth the density network sees: "
                        "set model.net.mouth_condition=true (and model.loss.audio_mouth_weight > 0)")
    net = instantiate(cfg.model.net, num_frames=num_train_frames, mouth_dim=mouth_dim)
    torso = instantiate(cfg.model.torso, num_frames=num_train_frames) if cfg.stage.name == "torso" else None
    lpips = None
    if cfg.stage.patch_size and loss.patch == "lpips":
        from synctalk.metrics.lpips import load_lpips

        lpips = load_lpips(loss.lpips_backbone, "model.loss.lpips_backbone")
    return HeadNeRFSystem(net=net, optimizer=instantiate(cfg.model.optimizer), lr_grid=cfg.model.lr_grid,
                          lr_net=cfg.model.lr_net, lr_decay=cfg.model.lr_decay, max_steps=cfg.trainer.max_steps,
                          chunk=cfg.data.chunk, media_dir=media_dir, config=resolved_container(cfg), torso=torso,
                          torso_deform_weight=cfg.model.torso_deform_weight,
                          torso_entropy_weight=cfg.model.torso_entropy_weight, num_train_frames=num_train_frames,
                          loss=loss, stage=to_dataclass(cfg.stage, StageConfig), ema_decay=cfg.model.ema_decay,
                          occupancy=to_dataclass(cfg.model.occupancy, OccupancyConfig), lpips=lpips)


def check_backends(cfg: DictConfig) -> None:
    """Fail early, with install instructions, when the config selects a missing optional backend."""
    if cfg.encoding.backend == "tcnn":
        external.require("tinycudann", "encoding=tcnn")
        if not torch.cuda.is_available():
            raise UserError("encoding=tcnn runs on a CUDA GPU only; use encoding=torch on this machine")
    if cfg.flow.backend == "cotracker":
        external.require("cotracker", "flow=cotracker")
        external.require_file(cfg.flow.checkpoint, "CoTracker checkpoint", "flow.checkpoint")


def read_checkpoint(ckpt: str | os.PathLike, map_location: str = "cpu") -> dict:
    """A synctalk checkpoint's contents; a missing, unreadable or foreign file is a :class:`UserError`."""
    if not Path(ckpt).is_file():
        raise UserError(f"checkpoint not found: {ckpt}")
    try:
        state = torch.load(ckpt, map_location=map_location, weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"cannot read checkpoint {ckpt}: {e}") from None
    if not isinstance(state, dict) or (state.get("hyper_parameters") or {}).get("config") is None:
        raise UserError(f"{ckpt} is not a synctalk checkpoint (it stores no run config)")
    return state


def inference_device() -> torch.device:
    """Where trained runs render and are evaluated: the first CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_run(ckpt: str | os.PathLike, map_location: str = "cpu") -> tuple[DictConfig, HeadNeRFSystem]:
    """Rebuild a trained run from a checkpoint: its config and its system with the trained weights, in eval
    mode on :func:`inference_device`."""
    ckpt = Path(ckpt)
    state = read_checkpoint(ckpt, map_location)
    hparams = state["hyper_parameters"]
    try:  # keys added since the checkpoint was written take their schema defaults
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), hparams["config"])
    except OmegaConfBaseException as e:
        raise UserError(f"{ckpt} was written by an incompatible synctalk version: {e}") from None
    if cfg.stage.name == "torso" and not hparams.get("num_train_frames"):
        raise UserError(f"{ckpt} is a torso-stage checkpoint without its frame count; retrain the torso stage")
    system = build_system(cfg, hparams.get("num_train_frames") or 0)
    try:
        system.load_state_dict(state["state_dict"])
    except RuntimeError as e:  # weights of a model that this version builds differently
        raise UserError(f"{ckpt} was written by an incompatible synctalk version (its weights do not fit the "
                        f"model this version builds; retrain the run): {str(e).splitlines()[0]}") from None
    return cfg, system.eval().to(inference_device())


MODEL_KEYS = ("model.net", "encoding", "audio_encoder", "blendshapes")  # what the weights depend on


def model_mismatch(prev: DictConfig, cfg: DictConfig) -> list[str]:
    """The keys of :data:`MODEL_KEYS` whose settings differ between a checkpoint's config and ``cfg``; a key
    either side lacks (added to the schema since) counts as its default."""
    current = OmegaConf.create(resolved_container(cfg))
    schema = OmegaConf.structured(TrainConfig)

    def settings(config: DictConfig, key: str):
        node, default = OmegaConf.select(config, key), OmegaConf.select(schema, key)
        if not isinstance(node, DictConfig) or not isinstance(default, DictConfig):
            return node
        try:
            return OmegaConf.merge(default, node)
        except OmegaConfBaseException:  # a key the schema no longer has: compared as it is
            return node

    return [k for k in MODEL_KEYS if settings(prev, k) != settings(current, k)]


def check_resume(ckpt: str, cfg: DictConfig) -> None:
    """Refuse to resume (``ckpt_path``) from a checkpoint of another stage or another model config."""
    prev = OmegaConf.create(read_checkpoint(ckpt)["hyper_parameters"]["config"])
    if prev.stage.name != cfg.stage.name:
        raise UserError(f"ckpt_path={ckpt} is a '{prev.stage.name}' checkpoint but this run is stage="
                        f"{cfg.stage.name}; to start a new stage from it use stage.init_from={ckpt}")
    mismatch = model_mismatch(prev, cfg)
    if mismatch:
        raise UserError(f"ckpt_path={ckpt} was trained with a different {', '.join(mismatch)} config; resume "
                        f"with the settings of that run (its .hydra/overrides.yaml lists them)")


def load_stage_weights(system: HeadNeRFSystem, ckpt: str, cfg: DictConfig) -> None:
    """Start a stage from a previous stage's checkpoint (same model config required).

    The previous run's rendering weights (its EMA copy, when it kept one) become this
    run's starting weights; its occupancy grid is carried over.
    """
    prev_cfg, prev = load_run(ckpt)
    mismatch = model_mismatch(prev_cfg, cfg)
    if mismatch:
        raise UserError(f"stage.init_from={ckpt} was trained with a different {', '.join(mismatch)} config; "
                        f"use the same model.net, encoding, audio_encoder and blendshapes settings as that run")
    weights = prev.inference_net.state_dict()
    system.net.load_state_dict(weights)
    if system.ema is not None:
        system.ema.module.load_state_dict(weights)
    if system.occupancy is not None and prev.occupancy is not None \
            and prev.occupancy.density.shape == system.occupancy.density.shape:
        system.occupancy.load_state_dict(prev.occupancy.state_dict())


def build_loggers(cfg: DictConfig) -> list:
    """The configured Lightning logger (none when ``logger=none``)."""
    if not cfg.get("logger") or "_target_" not in cfg.logger:
        return []
    if "Wandb" in cfg.logger._target_:
        os.environ.setdefault("WANDB_SILENT", "true")
        if cfg.logger.get("offline", False):
            os.environ.setdefault("WANDB_MODE", "offline")
    return [instantiate(cfg.logger)]


def finish_loggers(loggers: list, failed: bool) -> None:
    """Close W&B runs even after an error, so a multirun never hangs on an open run."""
    for logger in loggers:
        if "Wandb" in type(logger).__name__:
            import wandb

            if wandb.run is not None:
                wandb.finish(exit_code=1 if failed else 0)


def git_revision() -> str:
    """The git commit of the synctalk source tree ('+dirty' when modified), or 'unknown'."""
    src = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_run_info(out_dir: Path, cfg: DictConfig) -> None:
    """Record what produced this run: resolved config, git revision, versions, command line, and the thread
    count chosen at its start with the cores it could use (``metrics.json``'s ``threads`` has the changes)."""
    import pytorch_lightning

    from synctalk import threads

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "config_resolved.yaml") as tmp:
        tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(resolved_container(cfg))))
    governor = threads.current()  # it found the usable cores when the job started
    write_json(out_dir / "run_info.json", {
        "git_revision": git_revision(), "command": [Path(sys.argv[0]).name] + sys.argv[1:],
        "python": platform.python_version(), "torch": torch.__version__,
        "pytorch_lightning": pytorch_lightning.__version__, "cuda_available": torch.cuda.is_available(),
        "optional_packages": external.report(), "torch_threads": torch.get_num_threads(),
        "usable_cores": governor.cores if governor else threads.usable_cores()[0],
        "threads_configured": cfg.get("threads"),
    })


class LearningCurve(Callback):
    """Appends one row per validation to ``<run>/learning_curve.csv`` (step, val/psnr, train/psnr, train/loss),
    whatever logger is chosen, so that reports can draw learning curves. A resumed run continues the file."""

    COLUMNS = ("step", "val/psnr", "train/psnr", "train/loss")

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        row = [str(trainer.global_step)] + [f"{float(metrics[k]):.5g}" if k in metrics else "" for k in self.COLUMNS[1:]]
        new = not self.path.is_file()
        with open(self.path, "a") as f:
            if new:
                f.write(",".join(self.COLUMNS) + "\n")
            f.write(",".join(row) + "\n")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file and renamed: a killed run never leaves a truncated one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
