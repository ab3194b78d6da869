"""The main job, end to end, exactly as a new user runs it: `synctalk demo`."""
from __future__ import annotations

import json

import pytest

from tests.conftest import latest_run


@pytest.mark.slow
def test_demo_trains_renders_and_evaluates(run_cli):
    assert run_cli("demo", "trainer.enable_progress_bar=false") == 0
    run = latest_run(run_cli.root, "demo")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 2000
    assert metrics["parsed/psnr"] > 27.0  # measured 30-31 dB; an untrained field scores about 18
    assert metrics["with_hair/psnr"] > metrics["parsed/psnr"]  # portrait mode pastes ground truth
    import av

    with av.open(str(run / "media" / "val.mp4")) as video:
        assert video.streams.video[0].frames == metrics["frames"] == 10
        assert len(video.streams.audio) == 1
    assert list((run / "wandb").glob("offline-run-*")), "the offline W&B run is missing"
