"""Where the Hydra configs live, the custom resolvers, and schema validation."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from synctalk.errors import UserError

if not OmegaConf.has_resolver("len"):
    OmegaConf.register_new_resolver("len", lambda seq: len(seq))


def run_group(task: str) -> str:
    """W&B group of a run: ``<task>-<sweep folder name>`` for the jobs of a multirun (one group per sweep),
    else the task name."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return f"{task}-{Path(HydraConfig.get().sweep.dir).name}"
    return task


if not OmegaConf.has_resolver("run_group"):
    OmegaConf.register_new_resolver("run_group", run_group)


def by_stage(stage: str, values: dict):
    """``${by_stage:${stage.name},{head: 60000, lips: 40000, torso: 50000}}``: the value of the training stage, so
    that one experiment file sets each stage's own (steps, patch size)."""
    if stage not in values:
        raise UserError(f"no value for stage '{stage}' in {dict(values)}")
    return values[stage]


if not OmegaConf.has_resolver("by_stage"):
    OmegaConf.register_new_resolver("by_stage", by_stage)


def config_dir() -> Path:
    """The ``conf/`` folder: the repository's in a clone or editable install, else the packaged copy."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package.parent / "conf", package / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise UserError(f"cannot find the synctalk configs next to {package}; reinstall the package")


def validate(cfg: DictConfig, schema: type) -> None:
    """Check a composed config against its dataclass schema.

    Unknown keys (typos, also inside experiment files) and wrong value types raise a
    :class:`UserError` naming the key.
    """
    plain = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]) if "hydra" in cfg else cfg
    try:
        OmegaConf.merge(OmegaConf.structured(schema), plain)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(e).splitlines()[0]
        raise UserError(f"config error at '{key}': {msg}" if key else f"config error: {msg}") from None


def to_dataclass(node, schema: type):
    """A config node as an instance of its schema dataclass (nested dataclasses included)."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
