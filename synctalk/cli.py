"""The ``synctalk`` command: one Hydra app per job.

``synctalk <job> [key=value ...] [-m]``; ``synctalk --help`` lists the jobs.
"""
from __future__ import annotations

import importlib
import os
import sys

JOBS = {
    "preprocess": ("preprocess", "synctalk.apps.preprocess", "turn a video into a dataset folder (data=synthetic: generate the synthetic subject)"),
    "train": ("train", "synctalk.apps.train", "train a stage of the head NeRF: experiment=NAME stage=head|lips gt_mode=parsed|with_hair"),
    "evaluate": ("evaluate", "synctalk.apps.evaluate", "metrics of a trained run under both GT modes: ckpt=PATH"),
    "render": ("render", "synctalk.apps.render", "drive a trained head with new audio: ckpt=PATH audio=PATH output=PATH.mp4"),
    "report": ("report", "synctalk.apps.report", "one comparison table of a multirun folder: synctalk report SWEEP_DIR"),
    "demo": ("demo", "synctalk.apps.train", "the main job on the synthetic subject: generate, train, render, evaluate"),
}

USAGE = "usage: synctalk <job> [key=value ...] [-m] [--help]\n\njobs:\n" + "\n".join(
    f"  {name:<11} {text}" for name, (_, _, text) in JOBS.items()) + (
    "\n\nEach job is a Hydra app: 'synctalk <job> --help' shows its config groups and options;"
    "\n'-m' sweeps comma-separated values (multirun). Errors print one line; set HYDRA_FULL_ERROR=1 for a stack trace.")


#: settings that moved: the old key (a prefix when it ends with '.') -> the override to write now
RENAMED = {
    "preprocess.face_model.backend": "face_model={value}",
    "preprocess.face_model.": "face_model.{rest}={value}",
}


def renamed_override(args: list[str]) -> str | None:
    """The first command-line override that uses a moved key, as an error naming the new spelling; else None."""
    for arg in args:
        key, sep, value = arg.lstrip("+~").partition("=")
        for old, new in RENAMED.items():
            if sep and (key == old or (old.endswith(".") and key.startswith(old))):
                return f"{key} was renamed: write {new.format(value=value, rest=key[len(old):])}"
    return None


def _task(job: str, module, cfg):
    """The Hydra task: validate the config against the job's schema, then run the job."""
    from pathlib import Path

    from synctalk.config import validate

    from synctalk.threads import governed

    validate(cfg, module.SCHEMA)
    cfg.paths.root_dir = str(Path(cfg.paths.root_dir).resolve())  # saved configs hold absolute paths
    if "threads" not in cfg:  # a job that computes nothing (report)
        return module.run(cfg)
    with governed(cfg.threads):  # torch's threads: the free cores, re-decided as the job runs (synctalk.threads)
        return module.run(cfg)


def _one_line(err: BaseException) -> str:
    """A user error as one readable line."""
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(err, MissingMandatoryValue):
        return f"{err.full_key} has no value: set it on the command line, e.g. {err.full_key}=..."
    if isinstance(err, OSError) and err.filename:
        return f"{err.strerror or err}: {err.filename}"
    text = str(err).split("Config search path:")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 2 and lines[1].startswith("Available options"):
        return f"{lines[0]}; {lines[1]} {', '.join(lines[2:])}"
    return "; ".join(lines) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    job, rest = argv[0], argv[1:]
    if job not in JOBS:
        print(f"synctalk: unknown job '{job}'\n\n{USAGE}", file=sys.stderr)
        return 2
    if job == "report" and rest and "=" not in rest[0] and not rest[0].startswith("-"):
        rest[0] = f"sweep_dir={rest[0]}"
    moved = renamed_override(rest)
    if moved:
        print(f"synctalk {job}: error: {moved}", file=sys.stderr)
        return 2

    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from synctalk.config import config_dir
    from synctalk.errors import UserError

    config_name, module_name, _ = JOBS[job]

    # the job's module (torch, Lightning) is imported once the config has composed, so a typo is told in seconds
    def task(cfg):
        return _task(job, importlib.import_module(module_name), cfg)

    app = hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")(task)
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us; we decide how to print them
    saved_argv = sys.argv
    sys.argv = [f"synctalk {job}", *rest]
    try:
        app()
    except (UserError, HydraException, OmegaConfBaseException, OSError) as err:
        if full_error:
            raise
        print(f"synctalk {job}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"synctalk {job}: interrupted; completed outputs are kept, rerun to continue", file=sys.stderr)
        return 130
    finally:
        sys.argv = saved_argv
        if not full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
