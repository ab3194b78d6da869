"""The synctalk command: jobs, run folders, resume, multirun, render, evaluate, report, bad input."""
from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import SMOKE, latest_run, synctalk


def test_help_lists_every_job(tmp_path):
    out = synctalk("--help", cwd=tmp_path)
    assert out.returncode == 0
    for job in ("preprocess", "train", "evaluate", "render", "report", "demo"):
        assert f"\n  {job} " in out.stdout


@pytest.mark.slow
def test_user_errors_are_one_line_without_traceback(tmp_path):
    out = synctalk("train", "experiment=smoke", "trainer.max_stepz=3", cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("synctalk train: error: Could not override 'trainer.max_stepz'")
    out = synctalk("train", "stage=torsoo", cwd=tmp_path)
    assert out.returncode == 2 and "Available options in 'stage': head, lips, torso" in out.stderr
    full = synctalk("train", "stage=torsoo", cwd=tmp_path, env_extra={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode != 0 and "Traceback" in full.stderr
    out = synctalk("unknownjob", cwd=tmp_path)
    assert out.returncode == 2 and "unknown job" in out.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a CUDA GPU")
def test_a_gpu_recipe_on_a_machine_without_one_says_what_to_do(run_cli, capsys):
    assert run_cli("train", "experiment=synctalk", "logger=none") == 2
    err = capsys.readouterr().err
    assert "asks for a CUDA GPU" in err and "trainer.accelerator=auto" in err


def test_missing_dataset_and_unwritable_output(run_cli, capsys):
    assert run_cli("train", "data=subject", "data.root=/nonexistent/ds", "logger=none") == 2
    assert "dataset folder /nonexistent/ds does not exist" in capsys.readouterr().err
    assert run_cli("train", "data=subject", "logger=none") == 2
    assert "data.root has no value" in capsys.readouterr().err
    blocker = run_cli.root / "file"
    blocker.write_text("not a folder")
    assert run_cli("train", *SMOKE, f"paths.log_dir={blocker}/sub") == 2
    assert "synctalk train: error:" in capsys.readouterr().err


def test_missing_optional_backends_say_how_to_install(run_cli, capsys):
    assert run_cli("train", *SMOKE, "encoding=tcnn") == 2
    assert "pip install" in capsys.readouterr().err
    assert run_cli("train", *SMOKE, "flow=cotracker") == 2
    assert "co-tracker" in capsys.readouterr().err


@pytest.mark.slow
def test_train_writes_a_complete_run_folder_and_resumes(run_cli):
    last_seconds = "data.train_seconds=0.6"  # the training split's last 15 frames
    assert run_cli("train", *SMOKE, "trainer.max_steps=10", "trainer.val_check_interval=5", last_seconds) == 0
    first = latest_run(run_cli.root)
    for name in ("metrics.json", "config_resolved.yaml", "run_info.json", "checkpoints/last.ckpt",
                 "media/val.mp4", ".hydra/config.yaml", ".hydra/overrides.yaml"):
        assert (first / name).is_file(), name
    metrics = json.loads((first / "metrics.json").read_text())
    assert metrics["step"] == 10 and 5 < metrics["parsed/psnr"] < 60 and metrics["train_frames"] == 15
    assert metrics["mlp_dtype"] in ("bfloat16", "float32")  # what model.net.mlp_precision=auto chose here
    assert metrics["encoding_lookup"] == "fused_cpu"  # the C++ compiler is part of the supported setup
    assert metrics["dataset"]["audio_mouth_readout"] > 0.5  # the synthetic subject's mouth is a function of its audio
    assert metrics["dataset"]["audio_jaw_readout"] > 0.5
    assert {"parsed/psnr", "with_hair/psnr", "parsed/face_psnr", "with_hair/ssim"} <= metrics.keys()
    info = json.loads((first / "run_info.json").read_text())
    assert info["git_revision"] and "torch" in info
    assert (first / "csv").exists() is False  # logger=none writes no logger files
    # resume: the step count continues from the checkpoint
    ckpt = first / "checkpoints" / "last.ckpt"
    assert run_cli("train", *SMOKE, "trainer.max_steps=16", f"ckpt_path={ckpt}", "render_video=false",
                   last_seconds) == 0
    second = latest_run(run_cli.root)
    assert second != first
    assert json.loads((second / "metrics.json").read_text())["step"] == 16
    assert torch.load(second / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 16


def test_a_killed_run_leaves_no_metrics_and_no_partial_checkpoint(run_cli, monkeypatch):
    from synctalk.systems.head import HeadNeRFSystem

    def crash(self, batch, batch_idx):
        if self.global_step >= 6:
            raise KeyboardInterrupt
        return original(self, batch, batch_idx)

    original = HeadNeRFSystem.training_step
    monkeypatch.setattr(HeadNeRFSystem, "training_step", crash)
    with pytest.raises(SystemExit) as exit_info:  # Lightning shuts down gracefully, then exits 1
        run_cli("train", *SMOKE, "trainer.max_steps=50", "trainer.val_check_interval=5")
    assert exit_info.value.code == 1
    run = latest_run(run_cli.root)
    assert not (run / "metrics.json").exists()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 5
    assert not list((run / "checkpoints").glob(".*partial*"))


def test_multirun_sweeps_two_values_and_reports_them(run_cli, capsys):
    assert run_cli("train", "-m", *SMOKE, "render_video=false", "model.lr_net=1e-3,3e-3") == 0
    sweeps = sorted((run_cli.root / "outputs" / "train" / "multiruns").iterdir())
    sweep = sweeps[-1]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    for job in jobs:
        assert (sweep / job / "metrics.json").is_file()
    (sweep / "1" / "metrics.json").unlink()  # pretend job 1 crashed
    capsys.readouterr()
    assert run_cli("report", str(sweep)) == 0
    report = (sweep / "report" / "report.md").read_text()
    assert "| job | model.lr_net | status |" in report
    assert "1 of 2 runs finished" in report and "failed or unfinished" in report
    assert "0.001" in report and "0.003" in report
    assert "## GT modes" in report and "| face: gain |" in report
    for plot in ("learning_curves", "samples"):  # (metrics_per_value needs two finished runs)
        assert (sweep / "report" / f"{plot}.png").is_file(), plot
    page = (sweep / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page



def test_a_fold_sweep_holds_out_each_block_of_the_clip_once_and_the_report_reads_them_together(run_cli, capsys):
    """``data.folds=2 data.fold=0,1``: each run trains on one half of the clip and is evaluated on the other; the
    report has the folds' table (here it says why there is no lip sync to pool: a smoke head shows no face)."""
    assert run_cli("train", "-m", *SMOKE, "render_video=false", "data.folds=2", "data.fold=0,1") == 0
    sweep = sorted((run_cli.root / "outputs" / "train" / "multiruns").iterdir())[-1]
    held = [json.loads((sweep / job / "metrics.json").read_text())["frames"] for job in ("0", "1")]
    assert held == [12, 12]  # the smoke subject's 24 frames, half held out by each fold
    assert run_cli("report", str(sweep)) == 0
    report = (sweep / "report" / "report.md").read_text()
    assert "## Lip sync over the held-out blocks of all folds" in report
    assert "| all runs | 0 of 2 |" in report and "lip sync skipped" in report
    assert run_cli("evaluate", f"ckpt={sweep / '1' / 'checkpoints' / 'last.ckpt'}", "render_video=false") == 0
    scored = json.loads((latest_run(run_cli.root, "evaluate") / "metrics.json").read_text())
    assert scored["frames"] == 12 and scored["parsed/psnr"] == pytest.approx(
        json.loads((sweep / "1" / "metrics.json").read_text())["parsed/psnr"], abs=0.01)  # its own held-out block
    assert run_cli("train", *SMOKE, "data.folds=2", "data.fold=2") == 2  # a fold that does not exist: a user error
    assert "data.fold=2 with data.folds=2" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_render_and_stage_chaining(run_cli, capsys):
    assert run_cli("train", *SMOKE, "render_video=false") == 0
    ckpt = latest_run(run_cli.root) / "checkpoints" / "last.ckpt"
    assert run_cli("evaluate", f"ckpt={ckpt}", "gt_mode=with_hair", "render_video=true") == 0
    ev = latest_run(run_cli.root, "evaluate")
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["psnr"] == metrics["with_hair/psnr"] and (ev / "val.mp4").is_file()
    assert "parsed/lpips" in metrics or "lpips skipped" in metrics["notes"][0]  # never a made-up number
    assert metrics["resolution"] == [64, 64]
    assert run_cli("evaluate", f"ckpt={ckpt}", "downscale=2") == 0
    assert json.loads((latest_run(run_cli.root, "evaluate") / "metrics.json").read_text())["resolution"] == [32, 32]
    # render new audio of another sample rate
    import numpy as np
    from synctalk.audio.features import write_wav
    wav = run_cli.root / "speech 22k.wav"
    write_wav(wav, (np.sin(np.linspace(0, 3000, 22050)) * 0.3).astype(np.float32), sample_rate=22050)
    out = run_cli.root / "novel.mp4"
    assert run_cli("render", f"ckpt={ckpt}", f"audio={wav}", f"output={out}", "poses=replay") == 0
    import av
    with av.open(str(out)) as c:
        assert c.streams.video[0].frames == 25 and len(c.streams.audio) == 1
    assert json.loads(out.with_suffix(".json").read_text())["frames"] == 25
    assert run_cli("render", f"ckpt={ckpt}", f"audio={wav}", f"output={out}", "measure_mouth=false") == 0
    assert "mouth_loudness_corr" not in json.loads(out.with_suffix(".json").read_text())
    assert run_cli("render", f"ckpt={ckpt}", f"audio={wav}", f"output={out}", "poses=spin") == 2
    assert "poses='spin'" in capsys.readouterr().err
    silence = run_cli.root / "silence.wav"
    write_wav(silence, np.zeros(8000, dtype=np.float32))  # half a second of silence, smoothed poses
    assert run_cli("render", f"ckpt={ckpt}", f"audio={silence}", f"output={out}", "poses=smoothed", "downscale=2") == 0
    with av.open(str(out)) as c:
        assert c.streams.video[0].frames == 12 and c.streams.video[0].width == 32  # half the 64 px of training
    # lips stage starts from the head checkpoint (here at half resolution, its mouth rays and patches at full)
    assert run_cli("train", *SMOKE, "stage=lips", f"stage.init_from={ckpt}", "trainer.max_steps=4",
                   "render_video=false", "data.downscale=2", "data.mouth_downscale=1", "stage.patch_size=8") == 0
    lips_run = latest_run(run_cli.root)
    assert json.loads((lips_run / "metrics.json").read_text())["stage"] == "lips"
    capsys.readouterr()
    assert run_cli("train", *SMOKE, "stage=lips", f"stage.init_from={ckpt}", f"ckpt_path={ckpt}") == 2
    assert "use stage.init_from" in capsys.readouterr().err  # resuming a head run as a lips run
    assert run_cli("train", *SMOKE, "stage=lips", f"stage.init_from={ckpt}", "model.net.hidden=16") == 2
    assert "different model" in capsys.readouterr().err
    # torso stage: the head is frozen, the torso learns; portrait mode works with it
    lips_ckpt = lips_run / "checkpoints" / "last.ckpt"
    assert run_cli("train", *SMOKE, "stage=torso", f"stage.init_from={lips_ckpt}", "trainer.max_steps=6",
                   "gt_mode=with_hair") == 0
    torso_run = latest_run(run_cli.root)
    metrics = json.loads((torso_run / "metrics.json").read_text())
    assert metrics["stage"] == "torso" and metrics["psnr"] == metrics["with_hair/psnr"]
    head = torch.load(lips_ckpt, weights_only=False)["state_dict"]
    torso = torch.load(torso_run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert any(k.startswith("torso.") for k in torso)
    for key, value in head.items():
        if key.startswith("ema.module."):  # the lips run's rendering weights became the frozen head
            torch.testing.assert_close(torso["net." + key.removeprefix("ema.module.")], value)
    assert run_cli("render", f"ckpt={torso_run}/checkpoints/last.ckpt", f"audio={wav}", f"output={out}") == 0


def test_preprocess_generates_the_synthetic_subject(run_cli):
    assert run_cli("preprocess", "data=synthetic", "data.synthetic.num_frames=5", "data.synthetic.size=32") == 0
    assert (run_cli.root / "data" / "synthetic_s0_32px_5f" / "transforms_train.json").is_file()


def test_checkpoints_of_older_and_foreign_configs(run_cli, tmp_path):
    from synctalk.errors import UserError
    from synctalk.runs import load_run

    assert run_cli("train", *SMOKE, "trainer.max_steps=2", "render_video=false") == 0
    state = torch.load(latest_run(run_cli.root) / "checkpoints" / "last.ckpt", weights_only=False)
    del state["hyper_parameters"]["config"]["model"]["torso_deform_weight"]  # a key added later
    torch.save(state, tmp_path / "older.ckpt")
    cfg, system = load_run(tmp_path / "older.ckpt")
    assert cfg.model.torso_deform_weight == 1e-5 and system.net is not None
    from omegaconf import OmegaConf

    from synctalk.runs import model_mismatch

    stored = OmegaConf.create(state["hyper_parameters"]["config"])
    assert "layer" not in stored.audio_encoder  # the mel config does not set it
    current = OmegaConf.merge(stored, {"audio_encoder": {"layer": None}})
    assert model_mismatch(stored, current) == [] and model_mismatch(current, stored) == []  # a missing key: its default
    current.audio_encoder.layer = 1
    assert model_mismatch(stored, current) == ["audio_encoder"]
    state["hyper_parameters"]["config"]["model"]["removed_option"] = 1
    torch.save(state, tmp_path / "foreign.ckpt")
    with pytest.raises(UserError, match="incompatible"):
        load_run(tmp_path / "foreign.ckpt")


def test_audio_features_written_with_other_settings_are_refused(tmp_path):
    """A run whose audio_encoder differs from the settings the dataset's features stage wrote aud_<name>.npy with
    fails before training, naming the setting and the preprocess command; a setting the record lacks counts as
    its default, and a record of another encoder's features is not compared."""
    from omegaconf import OmegaConf

    from synctalk.audio.encoders import AudioConfig
    from synctalk.errors import UserError
    from synctalk.io import write_json
    from synctalk.runs import check_audio_features

    whisper = OmegaConf.structured(AudioConfig(name="whisper", feature_dim=384, window=8, context_s=2.0))
    check_audio_features(tmp_path, whisper)  # no record: not checked
    record = {"name": "whisper", "feature_dim": 384, "window": 8, "checkpoint": None, "features_file": None}
    write_json(tmp_path / ".stages" / "audio_features.json", {"key": {"settings": {"audio": record}}})
    with pytest.raises(UserError, match=r"aud_whisper.npy was computed with audio_encoder.context_s=null \(this run: "
                                        r"2.0\): run 'synctalk preprocess .* audio_encoder=whisper'"):
        check_audio_features(tmp_path, whisper)
    whisper.context_s = None
    check_audio_features(tmp_path, whisper)
    whisper.window = 4
    with pytest.raises(UserError, match=r"audio_encoder.window=8 \(this run: 4\)"):
        check_audio_features(tmp_path, whisper)
    check_audio_features(tmp_path, OmegaConf.structured(AudioConfig(name="mel")))
    whisper.window = 8
    whisper.noise_floors_db = [-40.0]  # the pauses' features count only for a run that reads them
    check_audio_features(tmp_path, whisper)
    with pytest.raises(UserError, match=r"audio_encoder.noise_floors_db=\[\] \(this run: \[-40.0\]\)"):
        check_audio_features(tmp_path, whisper, reads_pauses=True)
