"""A fast run of every experiment file, and W&B runs that always finish."""
from __future__ import annotations

import json
import math
import shutil

import pytest

from synctalk.config import config_dir
from tests.conftest import compose_config, latest_run

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
# the toy size every experiment is run at: the tiny synthetic subject (a dataset folder), a few steps
TOY = ["trainer.max_steps=2", "trainer.val_check_interval=2", "data.val_frames=1", "render_video=false",
       "logger=none", "metrics.audio_response=false", "metrics.sync_shift_s=0",
       "trainer.accelerator=auto", "data.rays_per_step=256"]  # GPU recipes run here too, at toy size
TOY_SWEEPS = {"trainer.max_steps": "2,4"}  # a swept key of the toy list keeps two values
TOY_VALUES = {"data.train_seconds": "0.2,60"}  # swept values the tiny subject holds (60 s: all of its frames)


def swept(experiment: str, overrides: list[str]) -> dict[str, list[str]]:
    """The keys an experiment file sweeps (``hydra.sweeper.params``) with their values, after ``overrides``."""
    cfg = compose_config("train", [f"experiment={experiment}", *(o for o in overrides if "," not in o)], hydra=True)
    params = {k: str(v).split(",") for k, v in (cfg.hydra.sweeper.params or {}).items()}
    for override in overrides:
        key, value = override.split("=", 1)
        if key in params:
            params[key] = value.split(",")
    return params


def with_audio_features(dataset, copy, encoders: list[str]):
    """A copy of ``dataset`` holding the features of every audio encoder in ``encoders`` (the weight-free ones), as
    the features stage of ``synctalk preprocess audio_encoder=<name>`` writes them (the pauses' features included)."""
    from synctalk.audio.encoders import AudioConfig
    from synctalk.config import to_dataclass
    from synctalk.stages.audio_track import AudioFeaturesStage
    from synctalk.stages.base import StageContext

    shutil.copytree(dataset, copy)
    for encoder in encoders:
        cfg = compose_config("train", [f"audio_encoder={encoder}"]).audio_encoder
        stage = AudioFeaturesStage(to_dataclass(cfg, AudioConfig))
        if not all((copy / name).is_file() for name in stage.outputs):
            stage.run(StageContext(video=copy / "video.mp4", root=copy, progress=False))
    return copy


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_at_toy_size_and_reports(experiment, run_cli, tiny_dataset):
    """Each research question (an experiment file, a sweep where it has ``hydra.sweeper.params``) runs end to end on
    the tiny subject: one run folder per combination of its swept values, each with its metrics, and a report of
    them all."""
    root = run_cli.root
    sweeps = swept(experiment, ["data=subject"])
    chosen = compose_config("train", [f"experiment={experiment}"], hydra=True).hydra.runtime.choices.audio_encoder
    encoders = sweeps.get("audio_encoder") or [chosen]
    if encoders != ["mel"]:  # each encoder's features, as `synctalk preprocess audio_encoder=<name>` adds them
        tiny_dataset = with_audio_features(tiny_dataset, root / "tiny_features", encoders)
    data = ["data=subject"] + ([] if "data.root" in sweeps else [f"data.root={tiny_dataset}"])
    toy = [f"{key}={TOY_SWEEPS[key]}" if key in sweeps and key in TOY_SWEEPS else item
           for item in TOY for key in [item.split("=")[0]]]
    extra = [f"{key}={values}" for key, values in TOY_VALUES.items() if key in sweeps]
    for path in sweeps.get("data.root", []):  # datasets the experiment's preprocessing would make: the tiny one
        shutil.copytree(tiny_dataset, path)
    if "stage" in sweeps:  # a head run to start from
        assert run_cli("train", "experiment=demo", *data, *TOY) == 0
        extra.append(f"stage.init_from={latest_run(root) / 'checkpoints' / 'last.ckpt'}")
    if not sweeps:
        assert run_cli("train", f"experiment={experiment}", *data, *toy) == 0
        assert json.loads((latest_run(root) / "metrics.json").read_text())["step"] == 2
        return
    assert run_cli("train", "-m", f"experiment={experiment}", *data, *toy, *extra) == 0
    sweep_dir = root / "outputs" / "sweeps" / experiment
    runs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    expected = math.prod(len(values) for values in swept(experiment, data + toy + extra).values())
    assert len(runs) == expected and all((run / "metrics.json").is_file() for run in runs)
    assert run_cli("report", str(sweep_dir)) == 0
    assert (sweep_dir / "report" / "report.md").read_text().count("| done |") == expected


def test_wandb_run_is_finished_even_when_training_fails(run_cli, monkeypatch):
    import wandb

    from synctalk.systems.head import HeadNeRFSystem

    def broken(self, batch, batch_idx):
        raise RuntimeError("boom")

    monkeypatch.setattr(HeadNeRFSystem, "training_step", broken)
    with pytest.raises(RuntimeError, match="boom"):
        run_cli("train", "experiment=smoke", "logger=wandb", "trainer.enable_progress_bar=false")
    assert wandb.run is None
    run = latest_run(run_cli.root)
    assert list((run / "wandb").glob("offline-run-*"))
    assert not (run / "metrics.json").exists()
