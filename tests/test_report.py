"""synctalk report on hand-made sweep folders: failed runs, different metric sets, a missing checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from synctalk.errors import UserError
from synctalk.sweep_report import collect_runs, varying_keys, write_report


def _job(sweep, name, overrides, config, metrics=None, checkpoint=True, curve=None, focal=None):
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    (job / "checkpoints").mkdir()
    if checkpoint:
        (job / "checkpoints" / "last.ckpt").write_bytes(b"x")
    if curve:
        (job / "learning_curve.csv").write_text("step,val/psnr,train/psnr,train/loss\n"
                                                + "".join(f"{s},{p},{p},0.1\n" for s, p in curve))
    if focal:
        (job / "stabilizer").mkdir()
        (job / "stabilizer" / "focal_search.json").write_text(json.dumps(focal))
    return job


def test_report_lists_what_each_run_is_missing_and_still_shows_the_rest(tmp_path):
    sweep = tmp_path / "sweep"
    base = {"paths": {"output_dir": "x"}, "model": {"lr_net": 0.001}, "seed": 1}
    full = {"parsed/psnr": 30.0, "with_hair/psnr": 32.0, "parsed/face_psnr": 24.0, "with_hair/face_psnr": 24.5,
            "parsed/lpips": 0.05, "with_hair/lpips": 0.03, "notes": ["fid skipped: no weights"]}
    _job(sweep, "0", ["model.lr_net=0.001"], base, full, curve=[(100, 20.0), (200, 25.0)])
    _job(sweep, "1", ["model.lr_net=0.003"], {**base, "model": {"lr_net": 0.003}},
         {"parsed/psnr": 28.0, "with_hair/psnr": 31.0, "notes": ["fid skipped: no weights", "lpips skipped: no AlexNet"]},
         checkpoint=False)
    _job(sweep, "2", ["model.lr_net=0.01"], {**base, "model": {"lr_net": 0.01}})  # crashed: no metrics.json
    (sweep / "multirun.yaml").write_text("{}")

    runs = collect_runs(sweep)
    assert [r["job"] for r in runs] == ["0", "1", "2"]
    assert varying_keys(runs) == ["model.lr_net"]
    text = write_report(sweep).read_text()
    assert "2 of 3 runs finished" in text
    assert "checkpoints/last.ckpt is missing" in text and "failed or unfinished" in text
    assert "| all runs | fid skipped: no weights |" in text  # a note every finished run shares is listed once
    assert "| 1 | lpips skipped: no AlexNet |" in text
    assert "| 1 | 4 metrics other runs have: parsed/face_psnr, parsed/lpips, with_hair/face_psnr, with_hair/lpips |" in text
    # the GT-mode table: the portrait-mode gain of the whole frame and of the face
    assert "| lr_net=0.001 | psnr | 30 | 32 | 2 | 24 | 24.5 | 0.5 |" in text
    assert "| lr_net=0.003 | psnr | 28 | 31 | 3 | nan | nan | nan |" in text
    assert (sweep / "report" / "learning_curves.png").is_file() and (sweep / "report" / "metrics_per_value.png").is_file()
    assert "<h2>GT modes" in (sweep / "report" / "report.html").read_text()


def test_focal_curves_with_the_truth(tmp_path):
    sweep = tmp_path / "sweep"
    for i, step in enumerate((100, 50)):
        cands = list(range(500, 1501, step))
        _job(sweep, str(i), [f"tracker.focal.step={step}"], {"tracker": {"focal": {"step": step}}},
             {"focal": 1300.0, "truth": {"focal": 1350.0, "focal_error_pct": -3.7}},
             focal={"candidates": cands, "rms_px": [abs(c - 1300) / 100 for c in cands], "refined": [],
                    "refined_rms_px": [], "grid_best": 1300, "focal": 1300.0})
    text = write_report(sweep).read_text()
    assert "truth.focal_error_pct" in text and (sweep / "report" / "focal_curves.png").is_file()


def test_report_of_a_folder_without_runs_is_an_error(tmp_path):
    with pytest.raises(UserError, match="no run folders"):
        write_report(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        write_report(tmp_path / "nope")


def test_trained_runs_on_datasets_of_different_focal_are_plotted_against_it(tmp_path):
    from synctalk.data.layout import Transforms, dataset_summary

    sweep = tmp_path / "sweep"
    for i, (focal, psnr) in enumerate(((1100.0, 22.0), (1150.0, 22.4), (1200.0, 22.1))):
        root = tmp_path / f"step{i}"
        ids = [0, 1, 2]
        Transforms(focal, 256, 256, ids, ids, np.tile(np.eye(4), (3, 1, 1))).write(root / "transforms_train.json")
        (root / ".stages").mkdir()
        (root / ".stages" / "poses.json").write_text(json.dumps(
            {"report": {"face_model": "canonical", "jitter_written": {"rotation_deg": 0.1 * (i + 1)}, "other": 1}}))
        summary = dataset_summary(root)
        assert summary["focal_at_512"] == focal and summary["face_model"] == "canonical" and "other" not in summary
        _job(sweep, str(i), [f"data.root={root}"], {"data": {"root": str(root)}},
             {"parsed/psnr": psnr, "parsed/face_psnr": psnr - 2, "parsed/lmd": 3.0 + i,
              "dataset": {**summary, "audio_mouth_readout": None if i == 0 else 0.2 * i,  # None: no bs.npy
                          "audio_jaw_readout": None if i == 0 else 0.3 * i}})
    assert dataset_summary(tmp_path / "no_dataset") == {}
    text = write_report(sweep).read_text()
    assert "dataset.focal_at_512" in text and "dataset.jitter_written.rotation_deg" in text
    assert "dataset.audio_mouth_readout" in text and "dataset.audio_jaw_readout" in text
    assert (sweep / "report" / "quality_vs_focal.png").is_file() and "quality_vs_focal" in text


def test_results_measured_outside_a_hydra_run_are_job_folders_the_report_reads(tmp_path):
    """A benchmark's entries (benchmarks/stabilizer.py) become job folders: their settings tell them apart and their
    nested numbers are the metrics."""
    from synctalk.sweep_report import write_job

    sweep = tmp_path / "stabilizer"
    write_job(sweep / "facemesh_canonical", {"entry": "facemesh", "face_model": "canonical"},
              {"focal": 1290.0, "landmark_fit": {"rotation_median_deg": 0.8}, "report": {"poses_written": "ba"}})
    write_job(sweep / "facemesh_subject", {"entry": "facemesh", "face_model": "subject"},
              {"focal": 2100.0, "landmark_fit": {"rotation_median_deg": 1.9}})
    runs = {r["config"]["face_model"]: r for r in collect_runs(sweep)}
    assert runs["canonical"]["metrics"]["focal"] == 1290.0
    assert runs["subject"]["metrics"]["landmark_fit.rotation_median_deg"] == 1.9
    runs = list(runs.values())
    assert varying_keys(runs) == ["face_model"]
    text = write_report(sweep).read_text()
    assert "face_model" in text and "1290" in text and "2100" in text
