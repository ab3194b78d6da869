"""A fast run of every experiment file, and W&B runs that always finish."""
from __future__ import annotations

import json

import pytest

from synctalk.config import config_dir
from tests.conftest import latest_run

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_a_few_steps(experiment, run_cli):
    assert run_cli("train", f"experiment={experiment}", "debug=fast", "logger=none",
                   "trainer.enable_progress_bar=false") == 0
    metrics = json.loads((latest_run(run_cli.root) / "metrics.json").read_text())
    assert metrics["step"] == 4


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
