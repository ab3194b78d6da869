"""Video ingest: frames at the configured fps, 16 kHz audio, audio features; cached per stage."""
from __future__ import annotations

import json

import numpy as np
import pytest

from synctalk.data.ingest import run_ingest
from synctalk.errors import UserError
from synctalk.video import VideoWriter


def make_video(path, seconds=1.0, fps=30, audio=True):
    n = int(seconds * fps)
    sound = (np.sin(np.linspace(0, 800 * seconds, int(16000 * seconds))) * 0.3).astype(np.float32) if audio else None
    with VideoWriter(path, fps, sound) as w:
        for i in range(n):
            frame = np.zeros((48, 64, 3), np.uint8)
            frame[:, : 2 * i % 64] = 200
            w.write(frame)
    return path


def test_ingest_resamples_and_caches(tmp_path):
    video = make_video(tmp_path / "my clip.mp4", seconds=1.0, fps=30)
    before = video.read_bytes()
    root = tmp_path / "data set"
    report = run_ingest(video, root, 25.0, "mel", 16, force=[], progress=False)
    assert report["frames"]["frames"] == 25 and abs(report["audio"]["seconds"] - 1.0) < 0.05
    assert len(list((root / "ori_imgs").glob("*.jpg"))) == 25
    assert np.load(root / "aud_mel.npy").shape == (25, 16, 80)
    assert video.read_bytes() == before  # the source is never modified
    stamp = (root / "aud_mel.npy").stat().st_mtime_ns
    run_ingest(video, root, 25.0, "mel", 16, force=[], progress=False)
    assert (root / "aud_mel.npy").stat().st_mtime_ns == stamp  # cached
    run_ingest(video, root, 25.0, "mel", 16, force=["audio_features"], progress=False)
    assert (root / "aud_mel.npy").stat().st_mtime_ns != stamp
    marker = json.loads((root / ".stages" / "frames.json").read_text())
    assert marker["settings"]["fps"] == 25.0


def test_ingest_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="no audio track"):
        run_ingest(make_video(tmp_path / "silent.mp4", audio=False), tmp_path / "a", 25.0, "mel", 16, [], False)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(make_video(tmp_path / "ok.mp4").read_bytes()[:300])
    with pytest.raises(UserError):
        run_ingest(corrupt, tmp_path / "b", 25.0, "mel", 16, [], False)
    assert not (tmp_path / "b" / "ori_imgs").exists()  # nothing half-written is left as done
    with pytest.raises(UserError, match="not found"):
        run_ingest(tmp_path / "missing.mp4", tmp_path / "c", 25.0, "mel", 16, [], False)


@pytest.mark.real_data
def test_ingest_a_real_clip(real_data, run_cli):
    clip = real_data / "WDA_KatieHill_000.mp4"
    root = run_cli.root / "katie"
    assert run_cli("preprocess", f"data.video={clip}", f"data.root={root}") == 0
    assert len(list((root / "ori_imgs").glob("*.jpg"))) == 200
    assert np.load(root / "aud_mel.npy").shape == (200, 16, 80)
