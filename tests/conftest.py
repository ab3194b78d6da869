"""Shared fixtures and helpers: a tiny synthetic dataset, config composition, running the CLI (in-process and as a
subprocess), a video made from the synthetic subject."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from synctalk.audio.features import load_audio
from synctalk.cli import main as cli_main
from synctalk.config import config_dir
from synctalk.stabilizer.options import StabilizerOptions, TrackerConfig
from synctalk.synthetic.subject import SyntheticSpec, generate
from synctalk.video import VideoWriter

REPO = Path(__file__).resolve().parent.parent
TINY = dict(num_frames=24, size=64)  # the smoke experiment's subject


def benchmark_module(name: str):
    """The script ``benchmarks/<name>.py`` loaded as a module (the benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def real_data_dir() -> Path:
    return Path(os.environ.get("SYNCTALK_REAL_DATA", REPO.parent / "shared" / "data" / "real"))


@pytest.fixture
def real_data() -> Path:
    """The real HDTF clips; the test is skipped, with the reason, when they are absent."""
    path = real_data_dir()
    if not (path / "WDA_KatieHill_000.mp4").is_file():
        pytest.skip(f"real clips not found in {path} (set SYNCTALK_REAL_DATA)")
    return path


@pytest.fixture
def face_landmarker_task() -> Path:
    """The real MediaPipe Face Landmarker model file; the test is skipped, with the reason, when it is absent."""
    path = Path(os.environ.get("SYNCTALK_WEIGHTS", REPO.parent / "shared" / "weights")) / "face_landmarker.task"
    if not path.is_file():
        pytest.skip(f"{path} not found (set SYNCTALK_WEIGHTS to its folder)")
    return path


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """The smoke experiment's synthetic subject (24 frames, 64 px), generated once per session."""
    root = tmp_path_factory.mktemp("data") / "tiny"
    return generate(SyntheticSpec(**TINY), root, progress=False)


def compose_config(name: str = "train", overrides: list[str] | None = None, root: Path | None = None,
                   hydra: bool = False):
    """Compose a job config the way the CLI does (without running it); ``hydra``: with its ``hydra`` node."""
    GlobalHydra.instance().clear()
    extra = [f"paths.root_dir={root}", f"paths.output_dir={root}/out"] if root else []
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose(name, overrides=extra + list(overrides or []), return_hydra_config=hydra)


@pytest.fixture
def run_cli(tmp_path, monkeypatch):
    """Run ``synctalk <args>`` in-process inside an empty project folder; returns (exit code, root)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SYNCTALK_ROOT", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")

    def run(*args: str) -> int:
        GlobalHydra.instance().clear()
        return cli_main(list(args))

    run.root = tmp_path
    return run


def latest_run(root: Path, task: str = "train") -> Path:
    runs = sorted((root / "outputs" / task / "runs").iterdir())
    assert runs, f"no run folder under {root}/outputs/{task}/runs"
    return runs[-1]


# the smoke experiment run quietly: seconds of training, no logger
SMOKE = ("experiment=smoke", "logger=none", "trainer.enable_progress_bar=false")

# the poses stage at its cheapest: the face-model fit alone, a short focal search
QUICK_POSES = {"stabilizer": StabilizerOptions(tracker=TrackerConfig(steps=200, refine_points=0, pose_source="landmarks",
                                                                focal_source="landmarks"))}


def synctalk(*args, cwd, env_extra=None) -> subprocess.CompletedProcess:
    """``python -m synctalk <args>`` in a subprocess whose project folder is ``cwd``."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(SYNCTALK_ROOT=str(cwd), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "synctalk", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def make_video(subject, path, fps=30, blank=(), audio=True, frames=30):
    """An mp4 of the synthetic subject's frames (``blank``: frames replaced by an empty image)."""
    sound = load_audio(subject / "aud.wav") if audio else None
    with VideoWriter(path, fps, sound) as w:
        for i in range(frames):
            frame = cv2.imread(str(subject / "ori_imgs" / f"{i}.jpg"))[..., ::-1]
            w.write(np.full_like(frame, 128) if i in blank else frame)
    return path

