"""Loading a dataset for training: rays, conditions, backgrounds, blendshape sets, audio."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from synctalk.audio.features import frames_for_audio, load_audio, mel_windows, write_wav
from synctalk.data.datamodule import SubjectFrames, TrainRays, evenly_spaced
from synctalk.errors import UserError
from synctalk.face.blendshape_sets import BLENDSHAPE_NAMES, load_eye_features, smooth
from synctalk.video import VideoWriter

UPPER7 = ["browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "eyeBlinkLeft",
          "eyeBlinkRight"]


def frames(root, split="train", **kw):
    return SubjectFrames(root, split, "mel", kw.pop("eye", UPPER7), **kw)


def test_train_rays_have_consistent_shapes(tiny_dataset):
    item = TrainRays(frames(tiny_dataset), 128)[3]
    assert item["origins"].shape == item["dirs"].shape == item["rgb"].shape == item["background"].shape == (128, 3)
    assert item["audio"].shape == (1, 16, 80) and item["eye"].shape == (7,)
    torch.testing.assert_close(item["dirs"].norm(dim=-1), torch.ones(128))


def test_lips_rays_fall_in_the_mouth_box(tiny_dataset):
    f = frames(tiny_dataset)
    u0, v0, u1, v1 = f.mouth_box(5)
    assert 0 <= u0 < u1 < 64 and 0 <= v0 < v1 < 64 and (v0 + v1) / 2 > 32  # the mouth is below the centre
    torch.manual_seed(0)
    item = TrainRays(f, 200, lips_ray_fraction=1.0)[5]
    u, v = item["pixels"].unbind(-1)
    assert ((u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)).all()
    mixed = TrainRays(f, 200, lips_ray_fraction=0.5)[5]["pixels"]
    inside = (mixed[:, 0] >= u0) & (mixed[:, 0] <= u1) & (mixed[:, 1] >= v0) & (mixed[:, 1] <= v1)
    assert inside.sum() >= 100


def test_mouth_rays_at_the_dataset_resolution(tiny_dataset):
    """With mouth_frames at full resolution, the mouth-box rays and mouth patches are the full-resolution pixels'
    rays and colours, the other rays those of the half-resolution frames; one ray geometry for both."""
    half, full = frames(tiny_dataset, downscale=2), frames(tiny_dataset)
    torch.manual_seed(0)
    rays = TrainRays(half, 100, lips_ray_fraction=0.5, patch_size=4, regions=True, mouth_frames=full)
    face_item, mouth_item = rays[5], rays[5]
    assert int(face_item["patch_region"]) == 0 and int(mouth_item["patch_region"]) == 1
    for item in (face_item, mouth_item):
        assert item["rgb"].shape == item["origins"].shape == (116, 3) and item["lower_face"].shape == (116,)
        body, lips = item["pixels"][:50], item["pixels"][50:100]
        assert body.max() < 32  # half-resolution pixels
        u0, v0, u1, v1 = full.mouth_box(5)
        assert ((lips[:, 0] >= u0) & (lips[:, 0] <= u1) & (lips[:, 1] >= v0) & (lips[:, 1] <= v1)).all()
        assert (v0 + v1) / 2 > 32  # full-resolution pixels: the mouth is below the centre of 64
        torch.testing.assert_close(item["rgb"][50:100], full.gt(5, lips))
        torch.testing.assert_close(item["rgb"][:50], half.gt(5, body))
        torch.testing.assert_close(item["dirs"][50:100], full.rays(5, lips)[1])
        torch.testing.assert_close(item["xy"][50:100], full.normalised(lips))
    patch = mouth_item["pixels"][100:]
    torch.testing.assert_close(mouth_item["rgb"][100:], full.gt(5, patch))  # the mouth patch at full resolution
    torch.testing.assert_close(face_item["rgb"][100:], half.gt(5, face_item["pixels"][100:]))
    # the ray through a half-resolution pixel is the mean of the rays through its four full-resolution pixels
    coarse = half.rays(5, torch.tensor([[10, 20]]))[1][0]
    fine = full.rays(5, torch.tensor([[20, 40], [21, 40], [20, 41], [21, 41]]))[1].mean(0)
    torch.testing.assert_close(coarse, fine / fine.norm(), atol=1e-5, rtol=0)


def test_mouth_downscale_option(tiny_dataset):
    from synctalk.data.datamodule import SubjectDataModule

    def module(**kw):
        dm = SubjectDataModule(str(tiny_dataset), "mel", UPPER7, downscale=2, lips_ray_fraction=0.25, **kw)
        dm.setup()
        return dm

    assert module().train_mouth_frames is None and module(mouth_downscale=2).train_mouth_frames is None
    dm = module(mouth_downscale=1)
    assert dm.train_mouth_frames.size == (64, 64) and dm.train_frames.size == (32, 32)
    assert dm.train_dataloader().dataset.mouth_frames is dm.train_mouth_frames
    with pytest.raises(UserError, match="mouth_downscale"):
        module(mouth_downscale=0)
    with pytest.raises(UserError, match="downscale=3 must divide"):
        module(mouth_downscale=3)


def test_downscale_halves_image_and_intrinsics(tiny_dataset):
    full, half = frames(tiny_dataset), frames(tiny_dataset, downscale=2)
    assert half.size == (32, 32) and half.gt(0).shape == (32, 32, 3)
    assert half.focal == full.focal / 2 and half.cx == full.cx / 2
    with pytest.raises(UserError, match="downscale"):
        frames(tiny_dataset, downscale=5)


def test_background_is_the_torso_over_the_static_background(tiny_dataset):
    f = frames(tiny_dataset)
    bg = f.background(0)
    assert bg.shape == (64, 64, 3)
    # the top rows hold no torso: they equal the static background
    torch.testing.assert_close(bg[:5], f.static_background[:5])
    assert (bg[-3:] - f.static_background[-3:]).abs().mean() > 0.05  # the shirt is at the bottom


def test_eye_feature_sets(tiny_dataset):
    gt = np.load(tiny_dataset / "ground_truth.npz")
    eye2 = load_eye_features(tiny_dataset, ["eyeBlinkLeft", "eyeBlinkRight"], smooth_window=0)
    np.testing.assert_allclose(eye2[:, 0], gt["blink"], atol=1e-6)
    au = load_eye_features(tiny_dataset, ["AU45"], smooth_window=0)
    np.testing.assert_allclose(au[:, 0], gt["blink"], atol=1e-3)
    with pytest.raises(UserError, match="unknown blendshape"):
        load_eye_features(tiny_dataset, ["eyeBlinkLft"])
    assert len(BLENDSHAPE_NAMES) == 52 and BLENDSHAPE_NAMES[9] == "eyeBlinkLeft"


def test_savitzky_golay_keeps_a_cubic_and_damps_noise():
    t = np.linspace(0, 1, 50)[:, None]
    cubic = (t ** 3 - t).astype(np.float32)
    np.testing.assert_allclose(smooth(cubic, 5, 3), cubic, atol=1e-5)
    noisy = np.random.default_rng(0).normal(0, 1, (500, 1)).astype(np.float32)
    assert smooth(noisy, 5, 3).std() < noisy.std()


def test_missing_files_give_clear_errors(tiny_dataset, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        frames(tmp_path / "nothing")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dataset, broken)
    (broken / "aud_mel.npy").unlink()
    with pytest.raises(UserError, match="aud_mel.npy not found"):
        frames(broken)
    (broken / "transforms_val.json").unlink()
    with pytest.raises(UserError, match="incomplete"):
        frames(broken)


def test_evenly_spaced():
    assert evenly_spaced(10, 0) == list(range(10))
    assert evenly_spaced(10, 3) == [0, 4, 9]


def test_audio_resampled_to_16k_mono_and_mel_windows(tmp_path):
    import av

    sr = 44100
    t = np.arange(int(1.0 * sr)) / sr
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)]).astype(np.float32) * 0.5
    path = tmp_path / "tone.m4a"
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=sr)
        s.layout = "stereo"
        for start in range(0, stereo.shape[1], 1024):
            fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(stereo[:, start:start + 1024]), format="fltp",
                                            layout="stereo")
            fr.sample_rate, fr.pts = sr, start
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    audio = load_audio(path)
    assert abs(len(audio) - 16000) < 1600 and audio.dtype == np.float32
    n = frames_for_audio(audio, 25)
    windows = mel_windows(audio, n, 25)
    assert windows.shape == (n, 16, 80) and np.isfinite(windows).all()
    with pytest.raises(UserError, match="shorter than one video frame"):
        frames_for_audio(audio[:100], 25)


def test_audio_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage")
    with pytest.raises(UserError):
        load_audio(tmp_path / "corrupt.wav")


def test_video_writer_muxes_audio_and_is_atomic(tmp_path):
    import av

    audio = np.sin(np.linspace(0, 2000, 16000)).astype(np.float32) * 0.3
    path = tmp_path / "out.mp4"
    with VideoWriter(path, 25, audio) as w:
        for i in range(25):
            w.write(np.full((33, 48, 3), i / 25, np.float32))  # odd height is padded
    with av.open(str(path)) as c:
        kinds = sorted(s.type for s in c.streams)
        assert kinds == ["audio", "video"]
        assert c.streams.video[0].frames == 25
    failed = tmp_path / "failed.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(failed, 25) as w:
            w.write(np.zeros((16, 16, 3), np.uint8))
            raise RuntimeError("killed mid-render")
    assert not failed.exists() and not list(tmp_path.glob(".failed.mp4*"))


def test_write_wav_roundtrip(tmp_path):
    x = (np.sin(np.linspace(0, 100, 8000)) * 0.5).astype(np.float32)
    write_wav(tmp_path / "a.wav", x)
    y = load_audio(tmp_path / "a.wav")
    assert np.abs(y[: len(x)] - x).max() < 1e-3


def test_image_cache_is_bounded(tiny_dataset):
    f = frames(tiny_dataset, cache_mb=0)
    first = f.gt(0).clone()
    for k in range(len(f)):
        f.gt(k)
        f.background(k)
    assert len(f._cache) == 1  # a zero budget keeps only the image just read
    torch.testing.assert_close(f.gt(0), first)
    assert f.gt(0).dtype == torch.float32 and 0 <= float(f.gt(0).min()) and float(f.gt(0).max()) <= 1


def test_speech_level_and_noise_floor():
    from synctalk.audio.features import noise_floor, speech_level_db

    t = np.arange(32000) / 16000
    speech = (0.3 * np.sin(2 * np.pi * 220 * t) * (t < 1)).astype(np.float32)  # 1 s of tone, 1 s of digital silence
    assert speech_level_db(speech) == pytest.approx(20 * np.log10(0.3 / np.sqrt(2)), abs=0.2)
    for level in (-60.0, -20.0):
        noise = noise_floor(32000, level, seed=3)
        assert 20 * np.log10(noise.std()) == pytest.approx(level, abs=0.01)
    np.testing.assert_array_equal(noise_floor(1000, -30, seed=1), noise_floor(1000, -30, seed=1))
    assert not np.array_equal(noise_floor(1000, -30, seed=1), noise_floor(1000, -30, seed=2))
    spectra = [np.abs(np.fft.rfft(noise_floor(32000, -30, seed))) ** 2 for seed in range(6)]
    low_share = [p[:len(p) // 8].sum() / p.sum() for p in spectra]  # below 1 kHz
    assert min(low_share) < 0.3 and max(low_share) > 0.6  # from nearly white to nearly brown


def test_features_of_pauses_are_written_and_paired_with_closed_mouths(tiny_dataset, tmp_path):
    """The features stage writes the features of each noise floor alone (a pause); a share of the training items
    are one of the most closed-mouth frames with a pause's features, the others the frame's own audio."""
    from synctalk.audio.encoders import AudioConfig
    from synctalk.stages.audio_track import AudioFeaturesStage
    from synctalk.stages.base import StageContext

    root = tmp_path / "d"
    shutil.copytree(tiny_dataset, root)
    (root / "ori_imgs").mkdir(exist_ok=True)
    n = len(np.load(root / "aud_mel.npy"))
    for i in range(n):  # the stage counts the frames
        (root / "ori_imgs" / f"{i}.jpg").touch()
    stage = AudioFeaturesStage(AudioConfig(noise_floors_db=[-40.0, -10.0]))
    assert stage.outputs == ("aud_mel.npy", "aud_mel_pause.npy")
    report = stage.run(StageContext(video=root / "none.mp4", root=root, progress=False))
    clean, pause = np.load(root / "aud_mel.npy"), np.load(root / "aud_mel_pause.npy")
    assert report["noise_floors_db"] == [-40.0, -10.0] and pause.shape == (2, *clean.shape)
    np.testing.assert_allclose(clean, mel_windows(load_audio(root / "aud.wav"), n, 25.0), atol=1e-5)
    assert np.median(pause[1]) > np.median(pause[0]) + 1  # louder at -10 dB than at -40

    f = frames(root)
    torch.manual_seed(0)
    assert f.pause_audio is None  # read when training asks for them (rendering and evaluation never do)
    pauses = TrainRays(f, 16, pause_share=1.0, lips_ray_fraction=0.5)
    assert f.pause_audio.shape == (2, n, 16, 80)
    closed = f.closed_mouth_frames()
    jaw = f.mouth[:, 2]  # jawOpen
    assert len(closed) == round(0.2 * len(f)) and jaw[closed].max() <= jaw.quantile(0.25)
    for _ in range(10):
        item = pauses[3]
        k = int(item["index"])
        assert k in closed.tolist()  # a closed-mouth frame in place of frame 3, with its own rays and conditions
        torch.testing.assert_close(item["rgb"], f.gt(k, item["pixels"]))
        torch.testing.assert_close(item["mouth"], f.mouth[k])
        assert any(bool((item["audio"][0] == window).all()) for window in f.pause_audio.flatten(0, 1))
    mixed = TrainRays(f, 16, pause_share=0.3)
    assert 0.15 < np.mean([any(bool((mixed[3]["audio"][0] == w).all()) for w in f.pause_audio.flatten(0, 1))
                           for _ in range(100)]) < 0.45
    torch.testing.assert_close(TrainRays(f, 16)[3]["audio"][0], f.audio[3])  # share 0: the frame's own audio
    with pytest.raises(UserError, match=r"data.pause_share=1.5 must be in \[0, 1\]"):
        TrainRays(f, 16, pause_share=1.5)
    with pytest.raises(UserError, match="noise_floors_db"):
        TrainRays(frames(tiny_dataset), 16, pause_share=0.1)  # a dataset without the pauses' features
    TrainRays(frames(tiny_dataset), 16)  # which training without pauses does not need


def test_training_on_the_last_seconds_of_the_training_split(tiny_dataset):
    """``data.train_seconds`` keeps the training split's last frames, every per-frame condition with them; the
    held-out split is untouched."""
    from omegaconf import OmegaConf

    from synctalk.runs import train_frames_kept

    whole = frames(tiny_dataset)
    last = frames(tiny_dataset, last=5)
    assert len(last) == 5 and last.img_ids.tolist() == whole.img_ids[-5:].tolist()
    torch.testing.assert_close(last.c2w, whole.c2w[-5:])
    torch.testing.assert_close(last.audio, whole.audio[-5:])
    torch.testing.assert_close(last.eye, whole.eye[-5:])
    torch.testing.assert_close(last.gt(4), whole.gt(len(whole) - 1))
    assert len(frames(tiny_dataset, "val", last=None)) == len(frames(tiny_dataset, "val"))
    assert len(frames(tiny_dataset, last=len(whole) + 1)) == len(whole)  # a sweep's longest value: all of them
    assert train_frames_kept(OmegaConf.create({"fps": 25.0, "train_seconds": 0.4})) == 10
    assert train_frames_kept(OmegaConf.create({"fps": 25.0, "train_seconds": None})) is None
    with pytest.raises(UserError, match="keeps no frame"):
        train_frames_kept(OmegaConf.create({"fps": 25.0, "train_seconds": 0.01}))


def test_cross_validated_folds_hold_out_contiguous_blocks_that_cover_the_clip(tiny_dataset):
    """``data.folds``: the train and val frames in time order, cut into blocks; each fold holds out one block
    and trains on the rest, every per-frame condition with its frame."""
    from omegaconf import OmegaConf

    from synctalk.runs import data_fold

    train, val = frames(tiny_dataset), frames(tiny_dataset, "val")
    clip = sorted(train.img_ids.tolist() + val.img_ids.tolist())
    held_out = []
    for fold in range(3):
        held, rest = frames(tiny_dataset, "val", fold=(fold, 3)), frames(tiny_dataset, fold=(fold, 3))
        ids = held.img_ids.tolist()
        assert ids == list(range(ids[0], ids[-1] + 1)), "one contiguous block, in time order"
        assert sorted(ids + rest.img_ids.tolist()) == clip and not set(ids) & set(rest.img_ids.tolist())
        assert abs(len(held) - len(clip) / 3) <= 1
        held_out += ids
        k = ids[0]  # the frame's camera, audio and eyes go with it wherever it came from
        source = train if k in train.img_ids else val
        j = source.img_ids.tolist().index(k)
        torch.testing.assert_close(held.c2w[0], source.c2w[j])
        torch.testing.assert_close(held.audio[0], source.audio[j])
        torch.testing.assert_close(held.eye[0], source.eye[j])
    assert held_out == clip, "the held-out blocks of all folds are the whole clip, once"
    for fold, folds, match in ((3, 3, "fold one of 0..2"), (0, 1, "at least 2"), (0, len(clip), "fewer than 3")):
        with pytest.raises(UserError, match=match):
            frames(tiny_dataset, "val", fold=(fold, folds))
    assert data_fold(OmegaConf.create({"folds": None, "fold": 0})) is None
    assert data_fold(OmegaConf.create({"folds": 4, "fold": 2, "train_seconds": None})) == (2, 4, 0)
    assert data_fold(OmegaConf.create({"folds": 4, "fold": 2, "fold_gap": 3})) == (2, 4, 3)
    with pytest.raises(UserError, match="fold_gap=-1"):
        data_fold(OmegaConf.create({"folds": 4, "fold": 2, "fold_gap": -1}))
    held, rest = frames(tiny_dataset, "val", fold=(1, 3, 2)), frames(tiny_dataset, fold=(1, 3, 2))
    first, last = held.img_ids.min(), held.img_ids.max()  # two frames either side of the block are not trained
    assert sorted(rest.img_ids.tolist()) == [k for k in clip if k < first - 2 or k > last + 2]
    assert held.img_ids.tolist() == frames(tiny_dataset, "val", fold=(1, 3)).img_ids.tolist()
    with pytest.raises(UserError, match="cannot be combined"):
        data_fold(OmegaConf.create({"folds": 4, "fold": 2, "train_seconds": 4.0}))
