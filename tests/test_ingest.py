"""Video ingest: frames at the configured fps, landmarks, 16 kHz audio, audio features; cached per stage."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from synctalk.audio import load_audio
from synctalk.data.ingest import run_ingest
from synctalk.data.landmarks import MESH_TO_68, fill_gaps
from synctalk.data.synthetic import SyntheticSpec, generate
from synctalk.errors import UserError
from synctalk.video import VideoWriter


@pytest.fixture(scope="module")
def face_subject(tmp_path_factory):
    return generate(SyntheticSpec(num_frames=30, size=128, seed=5), tmp_path_factory.mktemp("face") / "s",
                    progress=False)


def make_video(subject, path, fps=30, blank=(), audio=True):
    """An mp4 of the synthetic subject's frames (``blank``: frames replaced by an empty image)."""
    sound = load_audio(subject / "aud.wav") if audio else None
    with VideoWriter(path, fps, sound) as w:
        for i in range(30):
            frame = cv2.imread(str(subject / "ori_imgs" / f"{i}.jpg"))[..., ::-1]
            w.write(np.full_like(frame, 128) if i in blank else frame)
    return path


def test_mesh_to_68_mapping_is_a_valid_layout():
    assert len(MESH_TO_68) == 68 and len(set(MESH_TO_68.tolist())) == 68 and MESH_TO_68.max() < 478


def test_ingest_stages_and_cache(face_subject, tmp_path):
    video = make_video(face_subject, tmp_path / "my clip.mp4")
    before = video.read_bytes()
    root = tmp_path / "data set"
    report = run_ingest(video, root, 25.0, "mel", 16, force=[], progress=False)
    n = report["frames"]["frames"]
    assert n == 25  # 30 frames at 30 fps resampled to 25 fps
    assert report["landmarks"]["interpolated"] == []
    assert abs(report["audio"]["seconds"] - 1.2) < 0.05
    assert np.load(root / "aud_mel.npy").shape == (n, 16, 80)
    assert video.read_bytes() == before  # the source is never modified
    # the 68 landmarks land on the synthetic head's own (frame 0 is the same image in both)
    lms = np.loadtxt(root / "ori_imgs" / "0.lms")
    truth = np.loadtxt(face_subject / "ori_imgs" / "0.lms")
    assert np.linalg.norm(lms - truth, axis=-1).mean() < 0.05 * 128
    assert lms[36, 0] < lms[45, 0] and lms[8, 1] > lms[30, 1] > lms[27, 1]  # eyes ordered, chin below nose
    stamp = (root / "aud_mel.npy").stat().st_mtime_ns
    run_ingest(video, root, 25.0, "mel", 16, force=[], progress=False)
    assert (root / "aud_mel.npy").stat().st_mtime_ns == stamp  # cached
    run_ingest(video, root, 25.0, "mel", 16, force=["audio_features"], progress=False)
    assert (root / "aud_mel.npy").stat().st_mtime_ns != stamp
    assert json.loads((root / ".stages" / "frames.json").read_text())["settings"]["fps"] == 25.0
    parsing_stamp = (root / "parsing" / "0.png").stat().st_mtime_ns
    run_ingest(video, root, 25.0, "mel", 16, force=["frames"], progress=False)
    assert (root / "ori_imgs" / "0.lms").is_file()  # redone frames bring their landmarks back
    assert (root / "parsing" / "0.png").stat().st_mtime_ns != parsing_stamp  # ... and everything after them


def test_parsing_background_and_gt_images_match_the_synthetic_truth(face_subject, tmp_path):
    from synctalk.data.parsing import HEAD, PALETTE_BGR

    video = make_video(face_subject, tmp_path / "face.mp4", fps=25)
    root = tmp_path / "ds"
    report = run_ingest(video, root, 25.0, "mel", 16, force=[], progress=False, background_every=5)
    assert report["parsing"]["frames"] == 30

    def labels(path):
        return np.argmax(np.all(cv2.imread(str(path))[..., None, :] == PALETTE_BGR, -1), -1)

    for i in (0, 15, 29):
        got, truth = labels(root / "parsing" / f"{i}.png"), labels(face_subject / "parsing" / f"{i}.png")
        head_iou = ((got == HEAD) & (truth == HEAD)).sum() / ((got == HEAD) | (truth == HEAD)).sum()
        person_iou = ((got > 0) & (truth > 0)).sum() / ((got > 0) | (truth > 0)).sum()
        assert head_iou > 0.9 and person_iou > 0.9, (i, head_iou, person_iou)
        face = cv2.imread(str(root / "parsing" / f"{i}_face.png"), 0) > 127
        face_truth = cv2.imread(str(face_subject / "parsing" / f"{i}_face.png"), 0) > 127
        assert (face & face_truth).sum() / (face | face_truth).sum() > 0.75
    # the static background: compare where the person never is
    bc = cv2.imread(str(root / "bc.jpg")).astype(float)
    truth_bc = cv2.imread(str(face_subject / "bc.jpg")).astype(float)
    never_person = np.all([labels(face_subject / "parsing" / f"{i}.png") == 0 for i in range(30)], 0)
    never_person = cv2.erode(never_person.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
    assert np.abs(bc - truth_bc)[never_person].mean() < 6  # per-frame noise averages out
    gt = cv2.imread(str(root / "gt_imgs" / "3.jpg"))
    torso = cv2.imread(str(root / "torso_imgs" / "3.png"), cv2.IMREAD_UNCHANGED)
    assert gt.shape == (128, 128, 3) and torso.shape == (128, 128, 4)
    assert torso[-5:, 64, 3].min() > 200 and torso[5, 64, 3] == 0  # shirt opaque, sky transparent


def test_frames_without_a_face(face_subject, tmp_path):
    video = make_video(face_subject, tmp_path / "gap.mp4", fps=25, blank=(10, 11))
    report = run_ingest(video, tmp_path / "gap", 25.0, "mel", 16, force=[], progress=False)
    assert report["landmarks"]["interpolated"] == [10, 11]
    lms = [np.loadtxt(tmp_path / "gap" / "ori_imgs" / f"{i}.lms") for i in (9, 10, 12)]
    assert np.abs(lms[1] - (lms[0] + (lms[2] - lms[0]) / 3)).max() < 1e-2  # linear in time
    many = make_video(face_subject, tmp_path / "many.mp4", fps=25, blank=range(5, 15))
    with pytest.raises(UserError, match=r"no face in 10 of 30 frames .*frames 5-14"):
        run_ingest(many, tmp_path / "many", 25.0, "mel", 16, force=[], progress=False)
    with pytest.raises(UserError, match="no face was found in any"):
        fill_gaps(np.full((4, 478, 3), np.nan), 5, 0.5)
    with pytest.raises(UserError, match="more than 2 frames in a row at frames 1-3"):
        arr = np.zeros((20, 478, 3))
        arr[1:4] = np.nan
        fill_gaps(arr, 2, 0.5)


def test_ingest_bad_inputs(face_subject, tmp_path):
    with pytest.raises(UserError, match="no audio track"):
        run_ingest(make_video(face_subject, tmp_path / "silent.mp4", audio=False), tmp_path / "a", 25.0, "mel", 16,
                   [], False)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(make_video(face_subject, tmp_path / "ok.mp4").read_bytes()[:3000])
    with pytest.raises(UserError):
        run_ingest(corrupt, tmp_path / "b", 25.0, "mel", 16, [], False)
    assert not (tmp_path / "b" / "ori_imgs").exists()  # nothing half-written is left as done
    with pytest.raises(UserError, match="not found"):
        run_ingest(tmp_path / "missing.mp4", tmp_path / "c", 25.0, "mel", 16, [], False)


@pytest.mark.real_data
@pytest.mark.parametrize("clip", ["WDA_KatieHill_000.mp4", "RD_Radio34_000.mp4", "WDA_BobMenendez_000.mp4"])
def test_ingest_a_real_clip(real_data, run_cli, clip):
    root = run_cli.root / "subject"
    assert run_cli("preprocess", f"data.video={real_data / clip}", f"data.root={root}") == 0
    assert len(list((root / "ori_imgs").glob("*.jpg"))) == 200
    report = json.loads((root / ".stages" / "landmarks.json").read_text())["report"]
    assert report["interpolated"] == []  # a face in every frame
    lms = np.loadtxt(root / "ori_imgs" / "100.lms")
    assert lms.shape == (68, 2) and (lms > 0).all() and (lms < 512).all()
    assert np.load(root / "aud_mel.npy").shape == (200, 16, 80)
