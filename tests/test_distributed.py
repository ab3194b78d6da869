"""Scaling out: sweeps on Hydra's joblib and submitit launchers, and trainer=ddp with two CPU processes (gloo)."""
from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

from tests.conftest import latest_run
from tests.conftest import SMOKE, synctalk


def _sweep_jobs(root):
    sweep = sorted((root / "outputs" / "train" / "multiruns").iterdir())[-1]
    return sweep, sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_sweeps_run_on_hydra_launchers_with_the_same_run_folders(tmp_path, launcher):
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else ["hydra.launcher.timeout_min=10"]
    out = synctalk("train", "-m", f"hydra/launcher={launcher}", *extra, *SMOKE, "render_video=false",
                   "trainer.max_steps=10", "model.lr_net=1e-3,3e-3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    sweep, jobs = _sweep_jobs(tmp_path)
    assert [j.name for j in jobs] == ["0", "1"]
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["step"] == 10 and (job / "checkpoints" / "last.ckpt").is_file()
        info = json.loads((job / "run_info.json").read_text())
        if launcher == "joblib":  # each of the 2 parallel runs uses at most its share of the cores
            share = max(1, (os.cpu_count() or 1) // 2)
            assert info["usable_cores"] == share and 1 <= info["torch_threads"] <= share
            assert json.loads((job / "metrics.json").read_text())["threads"]["limits"]["joblib_jobs"] == 2
    overrides = [yaml.safe_load((j / ".hydra" / "overrides.yaml").read_text()) for j in jobs]
    assert [[o for o in job if o.startswith("model.lr_net=")] for job in overrides] == [["model.lr_net=0.001"],
                                                                                        ["model.lr_net=0.003"]]
    report = synctalk("report", str(sweep), cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "2 of 2 runs finished" in (sweep / "report" / "report.md").read_text()


@pytest.mark.slow
def test_ddp_trains_with_two_processes_into_one_run_folder_and_resumes(tmp_path):
    args = ("train", *SMOKE, "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "render_video=false")
    out = synctalk(*args, "trainer.max_steps=10", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = latest_run(tmp_path)
    assert len(list((tmp_path / "outputs" / "train" / "runs").iterdir())) == 1  # the second rank wrote no folder
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 10 and metrics["psnr"] > 10
    assert (run / "train_rank1.log").is_file() and (run / "train.log").is_file()
    assert "trainer=ddp: 2 processes" in (run / "train.log").read_text()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 10
    # resume: both ranks load the checkpoint and continue to 16 steps
    resumed = synctalk(*args, "trainer.max_steps=16", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = latest_run(tmp_path)
    assert json.loads((again / "metrics.json").read_text())["step"] == 16
    # a plain sweep runs its jobs one after another in one process: each job starts its own ranks and group
    sweep = synctalk(*args[:1], "-m", *args[1:], "trainer.max_steps=4", "model.lr_net=1e-3,3e-3", cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    _, jobs = _sweep_jobs(tmp_path)
    assert [json.loads((j / "metrics.json").read_text())["step"] for j in jobs] == [4, 4]
    assert all((j / "train_rank1.log").is_file() for j in jobs)


@pytest.mark.slow
def test_gpu_benchmark_runs_in_its_tiny_mode_and_writes_json(tmp_path):
    """benchmarks/gpu.py is meant for CUDA machines; its --tiny mode keeps it working on a CPU."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
    out = subprocess.run([sys.executable, str(script), "--tiny", "--out", str(tmp_path / "gpu.json")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600, env={**os.environ, "SYNCTALK_ROOT": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    torch_eager = report["results"]["torch"]
    assert "error" not in torch_eager, torch_eager
    assert torch_eager["train_steps_per_s"] > 0 and torch_eager["render_fps"] > 0 and torch_eager["size"] == 32
    bf16 = report["results"]["torch_bf16"]  # runs where the CPU multiplies bf16 natively, else says why not
    from synctalk.models.head_nerf import native_bf16
    if native_bf16("cpu"):
        assert "error" not in bf16 and "skipped" not in bf16 and bf16["train_steps_per_s"] > 0, bf16
    else:
        assert bf16 == {"skipped": "the device has no native bf16"}


@pytest.mark.slow
def test_speedup_benchmark_times_a_git_revision_beside_the_working_tree(tmp_path):
    """benchmarks/speedup.py exports a revision with git archive and runs its own speed benchmark beside this
    tree's (tiny sizes here; the real measurement is 128 px, 1000 steps and the demo)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True).returncode:
        pytest.skip("not a git checkout: there is no revision to compare with")
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "speedup.py"), "--baseline", "HEAD", "--no-demo",
                          "--size", "32", "--steps", "20", "--rounds", "1", "--out", str(tmp_path / "speedup.json")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "SYNCTALK_ROOT": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "speedup.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    assert report["baseline"] == head and report["size"] == 32
    assert len(report["runs"]["baseline"]) == len(report["runs"]["current"]) == 1
    assert report["summary"]["train_steps_per_s_ratio"] > 0
