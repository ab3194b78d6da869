"""Preprocessing stages as units: the head crop, the stage runner's checks of finished outputs, and a
preprocessing run killed inside the poses stage."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from synctalk.audio.features import load_audio
from synctalk.errors import UserError
from synctalk.stages import IngestOptions, run_ingest
from synctalk.stages.base import StageContext, StageRunner
from synctalk.stages.crop import CropStage, choose_box
from synctalk.synthetic.subject import SyntheticSpec, generate
from synctalk.video import VideoWriter
from tests.conftest import QUICK_POSES, make_video


@pytest.fixture(scope="module")
def subject256(tmp_path_factory):
    return generate(SyntheticSpec(num_frames=36, size=256, seed=3), tmp_path_factory.mktemp("s256") / "s",
                    progress=False)


def wide_video(subject, path, frames=36, fps=30, canvas=(360, 640), at=(340, 104), second_at=None):
    """The subject's 256 px frames pasted into a plain room (a desk recording); ``second_at``: a second, half-size
    copy (another person)."""
    with VideoWriter(path, fps, load_audio(subject / "aud.wav")) as w:
        for i in range(frames):
            room = np.empty((*canvas, 3), np.uint8)
            room[:] = np.linspace(60, 200, canvas[1])[None, :, None].astype(np.uint8)
            frame = cv2.imread(str(subject / "ori_imgs" / f"{i}.jpg"))[..., ::-1]
            room[at[1]:at[1] + 256, at[0]:at[0] + 256] = frame
            if second_at:
                room[second_at[1]:second_at[1] + 128, second_at[0]:second_at[0] + 128] = cv2.resize(frame, (128, 128))
            w.write(room)
    return path


def test_choose_box_frames_the_head_and_its_motion():
    still = [np.array([[600.0, 250, 100, 100, 0.9]])] * 20
    box = choose_box(still, 1280, 720)
    x, y, side = box["box"]
    assert side == 200 and x == 550 and y == round(300 - 0.55 * 200)  # 2 face sizes, face centre at 55% from the top
    moving = [np.array([[600.0 + 8 * k, 250, 100, 100, 0.9]]) for k in range(-10, 11)]
    assert choose_box(moving, 1280, 720)["box"][2] > 250  # room for 80 px of motion each way
    edge = choose_box([np.array([[1230.0, 650, 100, 100, 0.9]])], 1280, 720)["box"]
    assert edge[0] + edge[2] == 1280 and edge[1] + edge[2] == 720  # pushed inside the frame
    huge = choose_box([np.array([[100.0 + 60 * k, 100, 300, 300, 0.9]]) for k in range(12)], 1280, 720)
    assert huge["box"][2] == 720 and huge["clipped"]
    with pytest.raises(ValueError):
        choose_box([np.zeros((0, 5))], 100, 100)


@pytest.mark.slow
def test_a_wide_30fps_recording_is_cropped_to_the_head_at_25fps(subject256, tmp_path, caplog):
    video = wide_video(subject256, tmp_path / "desk.mp4")
    root = tmp_path / "ds"
    report = run_ingest(video, root, IngestOptions(**QUICK_POSES, crop=CropStage(size=128), progress=False))
    crop = report["crop"]
    assert crop["applied"] and crop["source"]["width"] == 640 and crop["source"]["fps"] == 30
    x, y, side = crop["box"]
    assert 0 <= x and x + side <= 640 and 0 <= y and y + side <= 360
    assert abs(side - 2 * crop["face_px"]) < 0.1 * side and 100 < crop["face_px"] < 150  # the head is 256 px
    assert x < 340 + 128 < x + side and y < 104 + 128 < y + side  # the subject's centre is inside
    assert report["frames"] == {**report["frames"], "frames": 30, "width": 128, "height": 128, "cropped": True}
    assert report["landmarks"]["interpolated"] == []  # a face in every cropped frame
    lms = np.loadtxt(root / "ori_imgs" / "10.lms")
    assert 0.3 < lms[:, 0].mean() / 128 < 0.7 and 0.3 < lms[:, 1].mean() / 128 < 0.75  # the head is centred
    sheet = cv2.imread(str(root / "crop.jpg"))
    assert sheet.shape[0] == 360 and sheet.shape[1] > 360
    # a box given by hand; the source is only read
    boxed = run_ingest(video, tmp_path / "boxed", IngestOptions(**QUICK_POSES, progress=False,
                                                                crop=CropStage(mode="box", box=[300, 60, 300], size=96)))
    assert boxed["crop"]["box"] == [300, 60, 300] and cv2.imread(str(tmp_path / "boxed" / "ori_imgs" / "0.jpg")).shape == (96, 96, 3)


def test_crop_errors_and_warnings(subject256, tmp_path, caplog):
    video = wide_video(subject256, tmp_path / "desk.mp4")

    def crop(stage, clip=video, name="d"):
        return StageRunner(StageContext(clip, tmp_path / name, 25.0, False)).run(stage)

    with pytest.raises(UserError, match=r"the face is \d+ px .* below preprocess.crop.min_face_px=300"):
        crop(CropStage(min_face_px=300))
    with pytest.raises(UserError, match=r"preprocess.crop.box=\[500, 0, 300\] is not inside the 640x360 video"):
        crop(CropStage(mode="box", box=[500, 0, 300]))
    short = wide_video(subject256, tmp_path / "short.mp4", frames=20)
    with pytest.raises(UserError, match=r"0\.\d+ s long: a talking-head dataset needs at least 1 s"):
        crop(CropStage(), short, "short")
    two = wide_video(subject256, tmp_path / "two.mp4", at=(360, 104), second_at=(40, 40))
    with caplog.at_level(logging.WARNING):
        report = crop(CropStage(), two, "two")
    assert "several faces" in caplog.text and report["frames_with_several_faces"] > 0
    x, y, side = report["box"]
    assert x < 360 + 128 < x + side  # the larger face
    off = crop(CropStage(mode="off"), video, "off")
    assert not off["applied"] and off["output_size"] == [640, 360]


def stored_video(frames: list[np.ndarray], path, rotation: int = 0, pixel_aspect: float = 1.0, fps: int = 25):
    """An mp4 of RGB ``frames`` stored the way a phone or an anamorphic camera stores them: turned by -``rotation``
    degrees with a display rotation of ``rotation`` (a player turns them upright), and squeezed horizontally by
    ``pixel_aspect`` with that sample aspect ratio."""
    import av
    from fractions import Fraction

    stored = [np.ascontiguousarray(np.rot90(f, -rotation // 90)) for f in frames]
    if pixel_aspect != 1:
        stored = [cv2.resize(f, (round(f.shape[1] / pixel_aspect), f.shape[0]), interpolation=cv2.INTER_AREA)
                  for f in stored]
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=fps)
        stream.height, stream.width = stored[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12"}
        if pixel_aspect != 1:
            stream.codec_context.sample_aspect_ratio = Fraction(pixel_aspect).limit_denominator(100)
        if rotation:
            stream.set_display_rotation(rotation)
        for f in stored:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)
    return path


@pytest.mark.parametrize("rotation, pixel_aspect", [(-90, 1.0), (90, 1.0), (180, 1.0), (0, 2.0), (-90, 4 / 3)])
def test_frames_are_read_as_a_player_shows_them(tmp_path, rotation, pixel_aspect):
    from synctalk.stages.source import probe_video, resampled_frames, upright_bgr

    shown = np.zeros((96, 64, 3), np.uint8)  # portrait, as the person filming saw it
    shown[:32, :32] = (255, 0, 0)  # red in the top-left corner
    shown[-16:, :] = (0, 0, 255)  # a blue band at the bottom
    video = stored_video([shown] * 5, tmp_path / "v.mp4", rotation, pixel_aspect)
    info = probe_video(video)
    assert (info["width"], info["height"], info["rotation"] % 360) == (64, 96, rotation % 360)
    assert abs(info["pixel_aspect"] - pixel_aspect) < 0.01
    for _, frame in resampled_frames(video, 25.0):
        bgr = upright_bgr(frame, info["pixel_aspect"])
        assert bgr.shape == (96, 64, 3)
        assert np.abs(bgr[..., ::-1].astype(int) - shown).mean() < 6


def test_a_phone_video_stored_sideways_is_cropped_upright(subject256, tmp_path):
    """A portrait phone recording (a desk scene filmed upright, stored landscape with a display rotation) gives the
    same crop and frames as the same scene stored upright."""
    from synctalk.stages.frames import FramesStage

    upright = wide_video(subject256, tmp_path / "upright.mp4", frames=30, canvas=(560, 320), at=(32, 120))
    from synctalk.stages.source import resampled_frames, upright_bgr

    scene = [upright_bgr(f)[..., ::-1] for _, f in resampled_frames(upright, 25.0)]
    sideways = stored_video(scene, tmp_path / "phone.mp4", rotation=-90)
    reports = {}
    for name, clip in (("upright", upright), ("phone", sideways)):
        runner = StageRunner(StageContext(clip, tmp_path / name, 25.0, False))
        reports[name] = runner.run(CropStage(size=128)), runner.run(FramesStage())
    (crop_up, frames_up), (crop_phone, frames_phone) = reports["upright"], reports["phone"]
    assert crop_phone["source"]["rotation"] == -90 and crop_phone["source"]["width"] == 320
    assert np.abs(np.subtract(crop_phone["box"], crop_up["box"])).max() <= 4
    assert frames_phone["frames"] == frames_up["frames"]
    a = cv2.imread(str(tmp_path / "upright" / "ori_imgs" / "10.jpg")).astype(int)
    b = cv2.imread(str(tmp_path / "phone" / "ori_imgs" / "10.jpg")).astype(int)
    assert np.abs(a - b).mean() < 8


def test_a_head_centred_square_is_used_whole(tmp_path):
    subject = generate(SyntheticSpec(num_frames=30, size=128, seed=5), tmp_path / "s", progress=False)
    video = make_video(subject, tmp_path / "v.mp4", fps=25)
    report = StageRunner(StageContext(video, tmp_path / "d", 25.0, False)).run(CropStage())
    assert not report["applied"] and report["resize_to"] is None and report["output_size"] == [128, 128]


def test_the_source_is_known_by_its_content(tmp_path, caplog):
    """A copied, moved or touched recording keeps the cached stages that read it; other content redoes them."""
    import os
    import shutil

    subject = generate(SyntheticSpec(num_frames=30, size=128, seed=5), tmp_path / "s", progress=False)
    video = make_video(subject, tmp_path / "v.mp4", fps=25)
    root = tmp_path / "d"
    StageRunner(StageContext(video, root, 25.0, False)).run(CropStage())
    moved = tmp_path / "elsewhere" / "copy of v.mp4"
    moved.parent.mkdir()
    shutil.copyfile(video, moved)
    os.utime(moved, ns=(1, 1))
    with caplog.at_level(logging.INFO, logger="synctalk.stages.base"):
        StageRunner(StageContext(moved, root, 25.0, False)).run(CropStage())
    assert "stage crop: cached" in caplog.text
    other = make_video(subject, tmp_path / "v2.mp4", fps=24)  # another recording at the old path
    other.replace(video)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="synctalk.stages.base"):
        StageRunner(StageContext(video, root, 25.0, False)).run(CropStage())
    assert "stage crop: cached" not in caplog.text


@pytest.mark.slow
def test_outputs_changed_after_their_stage_are_redone(tmp_path, caplog):
    subject = generate(SyntheticSpec(num_frames=30, size=128, seed=5), tmp_path / "s", progress=False)
    video = make_video(subject, tmp_path / "v.mp4", fps=25)
    root = tmp_path / "d"
    opts = IngestOptions(**QUICK_POSES, progress=False)
    run_ingest(video, root, opts)
    from synctalk.data.layout import dataset_summary

    assert dataset_summary(root)["blendshape_source"] == "landmark geometry"  # carried into every training run
    markers = {p.stem: p.stat().st_mtime_ns for p in (root / ".stages").glob("*.json")}
    full = (root / "gt_imgs" / "3.jpg").read_bytes()
    (root / "gt_imgs" / "3.jpg").write_bytes(full[: len(full) // 2])  # truncated after its stage finished
    with caplog.at_level(logging.WARNING):
        run_ingest(video, root, opts)
    assert "stage gt_images: outputs changed after the stage finished (gt_imgs/*.jpg)" in caplog.text
    assert (root / "gt_imgs" / "3.jpg").read_bytes() == full
    now = {p.stem: p.stat().st_mtime_ns for p in (root / ".stages").glob("*.json")}
    assert [s for s in now if now[s] != markers[s]] == ["gt_images"]  # nothing else was redone
    (root / "ori_imgs" / "7.lms").unlink()  # a deleted landmark file: the landmarks and every stage after them
    run_ingest(video, root, opts)
    after = {p.stem: p.stat().st_mtime_ns for p in (root / ".stages").glob("*.json")}
    assert sorted(s for s in after if after[s] != now[s]) == ["blendshapes", "gt_images", "landmarks", "overlays",
                                                               "parsing", "poses"]
    assert (root / "ori_imgs" / "7.lms").is_file()
    with pytest.raises(UserError, match=r"preprocess.force=\['frame'\]: not a stage"):
        run_ingest(video, root, IngestOptions(**QUICK_POSES, progress=False, force=["frame"]))


def _dataset_files(root):
    """Every file of a dataset folder but the stage markers (they hold timings)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".stages" not in p.parts}


@pytest.mark.slow
def test_preprocessing_killed_inside_the_poses_stage_resumes_to_the_same_dataset(tmp_path):
    subject = generate(SyntheticSpec(num_frames=40, size=128, seed=4), tmp_path / "s", progress=False)
    video = make_video(subject, tmp_path / "v.mp4", fps=25, frames=40)
    short = ["tracker.steps=300", "tracker.check_halves=false", "preprocess.bundle_adjustment.points_steps=100",
             "preprocess.bundle_adjustment.joint_steps=400", "face_model=subject"]

    def preprocess(root, run_dir):
        args = [sys.executable, "-m", "synctalk", "preprocess", f"data.video={video}", f"data.root={root}",
                f"hydra.run.dir={run_dir}", *short]
        return subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "TQDM_DISABLE": "1"})

    whole = preprocess(tmp_path / "whole", tmp_path / "r1")
    assert whole.wait(600) == 0, whole.stdout.read()[-3000:]

    killed = preprocess(tmp_path / "killed", tmp_path / "r2")
    tracks = tmp_path / "killed" / "stabilizer" / "steps" / "tracks.pkl"
    deadline = time.time() + 600
    while not tracks.is_file():
        assert killed.poll() is None, "preprocessing ended before the point tracks were written"
        assert time.time() < deadline
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)  # inside the poses stage: focal search, fit and tracks done, BA running
    killed.wait()
    stale = tmp_path / "killed" / "gt_imgs" / ".3.jpg.x.partial"  # what a write cut short leaves
    stale.mkdir()
    assert not (tmp_path / "killed" / ".stages" / "poses.json").exists()
    stamps = {p.stem: p.stat().st_mtime_ns for p in (tmp_path / "killed" / ".stages").glob("*.json")}
    resumed = preprocess(tmp_path / "killed", tmp_path / "r3")
    log = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, log[-3000:]
    for step in ("focal_search", "landmark_fit", "tracks"):
        assert f"step {step}: resumed" in log, step
    assert "step bundle_adjustment: resumed" not in log
    after = {p.stem: p.stat().st_mtime_ns for p in (tmp_path / "killed" / ".stages").glob("*.json")}
    assert all(after[s] == stamps[s] for s in stamps)  # the finished stages were not redone
    assert not (tmp_path / "killed" / "stabilizer" / "steps").exists() and not stale.exists()
    a, b = _dataset_files(tmp_path / "whole"), _dataset_files(tmp_path / "killed")
    assert sorted(a) == sorted(b)
    assert [name for name in a if a[name] != b[name]] == []  # byte for byte the same dataset


def test_the_face_landmarker_is_found_in_the_weight_folders(tmp_path, monkeypatch):
    from synctalk.apps.preprocess import face_landmarker

    monkeypatch.delenv("SYNCTALK_WEIGHTS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path, note = face_landmarker("auto", str(tmp_path / "project"))
    assert path is None and str(tmp_path / "project" / "weights") in note and "landmark geometry" in note
    (tmp_path / "project" / "weights").mkdir(parents=True)
    (tmp_path / "project" / "weights" / "face_landmarker.task").write_bytes(b"x")
    assert face_landmarker("auto", str(tmp_path / "project")) == (str(tmp_path / "project" / "weights" / "face_landmarker.task"), None)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "face_landmarker.task").write_bytes(b"x")
    monkeypatch.setenv("SYNCTALK_WEIGHTS", str(tmp_path / "w"))  # searched first
    assert face_landmarker("auto", str(tmp_path / "project"))[0] == str(tmp_path / "w" / "face_landmarker.task")
    assert face_landmarker(None, str(tmp_path)) == (None, None)
    with pytest.raises(UserError, match="preprocess.face_landmarker"):
        face_landmarker(str(tmp_path / "missing.task"), str(tmp_path))


@pytest.mark.slow
@pytest.mark.real_data
def test_real_blendshapes_from_the_face_landmarker_on_a_real_clip(real_data, face_landmarker_task, tmp_path):
    """SyncTalk's Facial Animation Capturer on a real clip: its jaw follows the mouth opening the landmarks see."""
    from synctalk.face.expressions import face_action_measures
    from synctalk.stages.blendshapes import BlendshapesStage
    from synctalk.stages.frames import FramesStage
    from synctalk.stages.landmarks import LandmarksStage

    runner = StageRunner(StageContext(real_data / "WDA_KatieHill_000.mp4", tmp_path / "d", 25.0, False))
    for stage in (CropStage(), FramesStage(), LandmarksStage()):
        runner.run(stage)
    report = runner.run(BlendshapesStage(str(face_landmarker_task)))
    assert report["source"] == "face_landmarker" and report["frames"] == 200
    bs = np.load(tmp_path / "d" / "bs.npy")
    assert bs.shape == (200, 52) and np.isfinite(bs).all() and 0 <= bs.min() and bs.max() <= 1
    from synctalk.face.blendshape_sets import BLENDSHAPE_NAMES

    jaw = bs[:, BLENDSHAPE_NAMES.index("jawOpen")]
    opening = face_action_measures(np.load(tmp_path / "d" / "landmarks_mesh.npy"))["mouth_open"]
    assert np.corrcoef(jaw, opening)[0, 1] > 0.6


@pytest.mark.real_data
def test_both_landmark_detectors_find_the_same_face_and_key_the_landmarks_stage(real_data, face_landmarker_task,
                                                                                 tmp_path):
    """``landmark_detector=facemesh|face_landmarker``: the same 478-point topology on a real face, agreeing to a few
    pixels; a detector other than the default is part of the landmarks stage's cache key."""
    import cv2

    from synctalk.face.facemesh import to_68
    from synctalk.face.landmark_detectors import FaceLandmarker, FaceMesh
    from synctalk.stages.landmarks import LandmarksStage

    cap, frames = cv2.VideoCapture(str(real_data / "WDA_KatieHill_000.mp4")), []
    while len(frames) < 12:
        ok, bgr = cap.read()
        assert ok
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    mesh = FaceMesh().detect(iter(frames), len(frames), progress=False)
    task = FaceLandmarker(model=str(face_landmarker_task)).detect(iter(frames), len(frames), progress=False)
    assert mesh.shape == task.shape == (12, 478, 3) and np.isfinite(mesh).all() and np.isfinite(task).all()
    gap = np.linalg.norm(to_68(mesh) - to_68(task), axis=-1)
    assert np.median(gap) < 0.02 * frames[0].shape[1], np.median(gap)
    assert "detector" not in LandmarksStage().settings()  # datasets made before the choice keep their cache
    key = LandmarksStage(detector=FaceLandmarker(model=str(face_landmarker_task), weights_root="/x")).settings()
    assert key["detector"] == {"class": "synctalk.face.landmark_detectors.FaceLandmarker",
                               "model": str(face_landmarker_task), "min_confidence": 0.5}
    with pytest.raises(UserError, match="landmark_detector.model"):
        FaceLandmarker(model=str(tmp_path / "missing.task")).detect(iter(frames), len(frames), progress=False)
