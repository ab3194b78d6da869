"""Lip-sync measures: the mouth read alike from render and ground truth, and the sync test."""
from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from synctalk.face.blendshape_sets import BLENDSHAPE_NAMES, MOUTH_BLENDSHAPES
from synctalk.metrics.lip_sync import (READOUT_WEAK, STILL_MOUTH_MOTION, FaceReader, audio_mouth_readout,
                                      blendshape_au_errors, correlation, dataset_audio_readout, effective_frames,
                                      lip_sync_intervals, lip_sync_verdict, loudness_per_frame, mouth_agreement,
                                      mouth_follows_audio, mouth_motion, mouth_opening, opening_correlation,
                                      pooled_lip_sync, report_audio_readout, ridge, sync_gap,
                                      write_mouth_signals)


def test_correlation_weights_the_coefficients_that_move():
    t = np.linspace(0, 6, 100)
    gt = np.stack([np.sin(t), 0.1 * np.cos(3 * t), np.full_like(t, 0.3)], 1)
    assert correlation(gt, gt) == pytest.approx(1.0)
    assert correlation(-gt, gt) == pytest.approx(-1.0)
    flat = gt.copy()
    flat[:, 0] = 0.5  # the render's mouth does not move: the coefficient that moves most scores 0
    assert correlation(flat, gt) == pytest.approx(0.1 / 1.1 * 1.0, abs=0.05)
    assert np.isnan(correlation(gt[:, 2:], gt[:, 2:]))  # nothing moves in the ground truth: no verdict
    gaps = gt.copy()
    gaps[::3] = np.nan  # frames without a face are left out
    assert correlation(gaps, gt) == pytest.approx(1.0)


def test_mouth_agreement_au_errors_and_sync_gap():
    rng = np.random.default_rng(0)
    gt = {"mouth": rng.uniform(0, 1, (50, 3)), "upper": rng.uniform(0, 1, (50, 2))}
    pred = {"mouth": gt["mouth"] + 0.1, "upper": gt["upper"] - 0.2}
    out = mouth_agreement(pred, gt, ["jawOpen", "mouthClose", "mouthFunnel"])
    assert out["mouth_corr"] == pytest.approx(1) and out["jaw_corr"] == pytest.approx(1)
    assert out["mouth_error"] == pytest.approx(10) and out["mouth_face_found"] == 1
    assert blendshape_au_errors(pred, gt) == pytest.approx({"aue_upper": 20.0, "aue_lower": 10.0})
    gap = sync_gap(0.8, [0.1, 0.3], gt["mouth"], 5)
    assert gap["sync_gap"] == pytest.approx(0.6) and gap["mouth_corr_shifted"] == pytest.approx(0.2)
    assert 0.5 < gap["sync_gap_gt"] < 1.5  # white noise: the shifted ground truth is uncorrelated
    with pytest.raises(ValueError, match="no frame"):
        mouth_agreement({"mouth": np.full((50, 3), np.nan)}, gt, ["jawOpen"])


def _smooth_mouth(rng, n: int) -> np.ndarray:
    """(n, 3) mouth signals that vary smoothly over frames, as a real mouth does at 25 fps."""
    kernel = np.exp(-0.5 * (np.arange(-6, 7) / 2.0) ** 2)
    return np.stack([np.convolve(rng.normal(size=n + 12), kernel, "valid") for _ in range(3)], 1)


def test_effective_frames_count_smooth_mouths_as_fewer_frames():
    rng = np.random.default_rng(0)
    white = rng.normal(size=(400, 3))
    assert 300 < effective_frames(white, rng.normal(size=(400, 3))) <= 400
    smooth = _smooth_mouth(rng, 400)  # Gaussian smoothing of sigma 2 frames: sum of rho(k)^2 over all lags ~ 5
    assert 55 < effective_frames(smooth, _smooth_mouth(rng, 400)) < 110


def test_lip_sync_intervals_narrow_with_frames_and_the_verdict_follows_them():
    rng = np.random.default_rng(0)
    widths, verdicts = {}, {}
    for n in (19, 400):
        source = _smooth_mouth(rng, n + 24)
        gt = source[12:12 + n]
        pred = gt + 0.8 * _smooth_mouth(rng, n)  # a render that follows the ground truth, with errors
        shifted = [source[:n] + 0.8 * _smooth_mouth(rng, n), source[24:] + 0.8 * _smooth_mouth(rng, n)]
        out = lip_sync_intervals(pred, gt, shifted)
        corr = correlation(pred, gt)
        assert out["mouth_corr_low"] < corr < out["mouth_corr_high"] <= 1
        gap = sync_gap(corr, [correlation(s, gt) for s in shifted], gt, 12)
        assert out["sync_gap_low"] < gap["sync_gap"] < out["sync_gap_high"]
        widths[n] = out["mouth_corr_high"] - out["mouth_corr_low"]
        verdicts[n] = lip_sync_verdict({**gap, **out})
    assert widths[400] < 0.35 * widths[19]
    assert verdicts[400].startswith("the mouth follows the audio: sync gap")
    # renders whose mouths have nothing to do with the ground truth's: over many clips the test says "follows"
    # for under 5% of them (measured 1% at 19 frames, 0% at 46 and 400: the intervals err wide)
    follows = 0
    for _ in range(100):
        gt, pred, *shifted = (_smooth_mouth(rng, 46) for _ in range(4))
        out = lip_sync_intervals(pred, gt, shifted)
        gap = sync_gap(correlation(pred, gt), [correlation(s, gt) for s in shifted], gt, 12)
        follows += lip_sync_verdict({**gap, **out}).startswith("the mouth follows")
    assert follows <= 5
    assert lip_sync_verdict({"sync_gap": -0.3, "sync_gap_low": -0.5, "sync_gap_high": -0.1}).startswith(
        "the mouth ignores the audio")
    assert lip_sync_verdict({"sync_gap": 0.3, "sync_gap_low": -0.5, "sync_gap_high": 1.1}).startswith(
        "these held-out frames cannot tell")
    assert lip_sync_verdict({"mouth_corr": 0.5}) is None  # no sync test, no verdict
    assert lip_sync_intervals(gt[:2], gt[:2], []) == {}  # too few frames for a correlation
    few = lip_sync_intervals(gt[:3], gt[:3] + 0.1, [])  # 3 effective frames or fewer: the whole range
    assert (few["mouth_corr_low"], few["mouth_corr_high"]) == (-1.0, 1.0)



def test_the_folds_of_a_clip_are_read_together_in_time_order(tmp_path):
    """Three runs, each holding out a block of one clip: their readings pooled give the numbers of one
    evaluation of the whole clip with each block on its own mean, whatever order the files come in and whatever
    level each fold's head sits at, with intervals as narrow as its length."""
    rng = np.random.default_rng(3)
    n, shift = 150, 12
    source = _smooth_mouth(rng, n + 2 * shift)
    gt = source[shift:shift + n]
    pred = gt + 0.7 * _smooth_mouth(rng, n)
    shifted = [source[:n] + 0.7 * _smooth_mouth(rng, n), source[2 * shift:] + 0.7 * _smooth_mouth(rng, n)]
    blocks = ((0, 50), (50, 100), (100, 150))

    def centred(x: np.ndarray) -> np.ndarray:
        return np.concatenate([x[a:b] - x[a:b].mean(0) for a, b in blocks])

    def write(level: list[float]) -> list:
        paths = []
        for fold, (a, b) in enumerate(blocks):  # each fold's head renders its mouth at its own level
            paths.append(tmp_path / f"fold{fold}" / "mouth_signals.npz")
            write_mouth_signals(paths[-1], np.arange(a, b), pred[a:b] + level[fold], gt[a:b],
                                [s[a:b] + level[fold] for s in shifted], shift)
        return paths

    paths = write([0.0, 0.0, 0.0])
    pooled = pooled_lip_sync(paths[::-1])
    assert pooled["frames"] == n and pooled["runs"] == 3 and pooled["overlapping_frames"] == 0
    c_pred, c_gt, c_shifted = centred(pred), centred(gt), [centred(s) for s in shifted]
    whole = {"mouth_corr": correlation(c_pred, c_gt),
             **sync_gap(correlation(c_pred, c_gt), [correlation(s, c_gt) for s in c_shifted], c_gt, shift)}
    whole.update(lip_sync_intervals(c_pred, c_gt, c_shifted))
    for key, value in whole.items():
        assert pooled[key] == pytest.approx(value), key
    assert pooled["mouth_corr"] == pytest.approx(correlation(pred, gt), abs=0.1)  # blocks of one head nearly agree
    levels = [s * gt.std() for s in (1.0, -2.0, 0.5)]  # heads at their own levels: read raw, they swamp the mouth
    paths = write(levels)
    assert pooled_lip_sync(paths)["mouth_corr"] == pytest.approx(pooled["mouth_corr"])
    raw = np.concatenate([pred[a:b] + level for (a, b), level in zip(blocks, levels)])
    assert correlation(raw, gt) < pooled["mouth_corr"] - 0.2
    one_fold = lip_sync_intervals(pred[:50], gt[:50], [s[:50] for s in shifted])
    width = pooled["mouth_corr_high"] - pooled["mouth_corr_low"]
    assert width < one_fold["mouth_corr_high"] - one_fold["mouth_corr_low"]
    assert pooled["lip_sync_verdict"] == lip_sync_verdict({**whole})
    write_mouth_signals(paths[0], np.arange(0, 50), pred[:50, :2], gt[:50, :2], [], shift)
    with pytest.raises(ValueError, match="different mouth coefficients"):
        pooled_lip_sync(paths)
    write_mouth_signals(paths[0], np.arange(0, 50), pred[:50], gt[:50], [], shift)  # a run without the sync test
    assert "sync_gap" not in pooled_lip_sync(paths) and "mouth_corr_low" in pooled_lip_sync(paths)


def test_pooled_folds_read_the_jaw_alone_too(tmp_path):
    """With the Face Landmarker's 27 jaw and mouth blendshapes the pooled folds also give ``jaw_corr``: the jaw's
    column alone, each fold on its own mean; FaceMesh's two measures have no jaw and give none."""
    rng = np.random.default_rng(5)
    k, j = len(MOUTH_BLENDSHAPES), MOUTH_BLENDSHAPES.index("jawOpen")
    gt = np.concatenate([_smooth_mouth(rng, 120) for _ in range(k // 3)], 1)
    pred = gt + 0.5 * np.concatenate([_smooth_mouth(rng, 120) for _ in range(k // 3)], 1)
    pred[:, j] = -gt[:, j]  # the jaw opens when the ground truth's closes
    paths = []
    for fold, (a, b) in enumerate(((0, 60), (60, 120))):
        paths.append(tmp_path / f"fold{fold}" / "mouth_signals.npz")
        write_mouth_signals(paths[-1], np.arange(a, b), pred[a:b] + fold, gt[a:b], [], 3)
    pooled = pooled_lip_sync(paths)
    assert pooled["jaw_corr"] == pytest.approx(-1.0) and pooled["mouth_corr"] > 0.5
    for fold, (a, b) in enumerate(((0, 60), (60, 120))):
        write_mouth_signals(paths[fold], np.arange(a, b), pred[a:b, :2], gt[a:b, :2], [], 3)
    assert "jaw_corr" not in pooled_lip_sync(paths)


def test_the_audio_read_out_finds_the_mouth_that_the_audio_carries():
    """:func:`audio_mouth_readout`: a mouth that is a linear function of each frame's audio window (plus noise) reads
    high, a mouth unrelated to the audio near 0; frames without a face are left out; too few frames give NaN. The
    ridge map is the same solved in its dual form (fewer frames than features) as in its primal form."""
    rng = np.random.default_rng(0)
    n = 200
    audio = rng.normal(size=(n, 4, 16))  # (N, window, dim)
    mouth = audio.reshape(n, -1) @ rng.normal(size=(64, 3)) * 0.1 + 0.02 * rng.normal(size=(n, 3))
    mouth[7] = np.nan  # no face there
    assert audio_mouth_readout(audio, mouth, strength=1.0) > 0.9
    assert abs(audio_mouth_readout(audio, rng.normal(size=(n, 3)), strength=1.0)) < 0.3
    assert np.isnan(audio_mouth_readout(audio[:15], mouth[:15]))
    x, y = rng.normal(size=(30, 50)), rng.normal(size=(30, 2))
    dual = ridge(x, y, 5.0)(x[:4])  # 30 rows < 50 columns: the dual form
    mean, std = x.mean(0), x.std(0) + 1e-6
    xn = (x - mean) / std
    w = np.linalg.solve(xn.T @ xn + 5.0 * np.eye(50), xn.T @ (y - y.mean(0)))
    assert np.allclose(dual, xn[:4] @ w + y.mean(0))


def test_a_dataset_read_out_and_the_warning_before_training(tmp_path, caplog):
    """:func:`dataset_audio_readout` reads ``aud_<name>.npy`` against ``bs.npy``'s mouth blendshapes, the whole mouth
    and the jaw alone; :func:`report_audio_readout` (what ``synctalk preprocess`` and ``synctalk train`` call) logs
    it, as a warning when the whole mouth reads under READOUT_WEAK; a dataset without ``bs.npy`` or the features
    gets none."""
    rng = np.random.default_rng(1)
    n = 150
    audio = rng.normal(size=(n, 4, 8)).astype(np.float32)
    bs = np.zeros((n, len(BLENDSHAPE_NAMES)), np.float32)
    jaw, smile = BLENDSHAPE_NAMES.index("jawOpen"), BLENDSHAPE_NAMES.index("mouthSmileLeft")
    np.save(tmp_path / "aud_mel.npy", audio)
    assert dataset_audio_readout(tmp_path, "mel") is None  # no bs.npy
    assert report_audio_readout(tmp_path, "mel") == {"audio_mouth_readout": None, "audio_jaw_readout": None}
    bs[:, jaw] = np.clip(0.3 + 0.02 * audio.reshape(n, -1) @ rng.normal(size=32), 0, 1)
    np.save(tmp_path / "bs.npy", bs)
    readout = dataset_audio_readout(tmp_path, "mel")
    assert readout["audio_mouth_readout"] > 0.8 and readout["audio_jaw_readout"] > 0.8
    assert dataset_audio_readout(tmp_path, "whisper") is None  # no such features
    with caplog.at_level("INFO", logger="synctalk.metrics.lip_sync"):
        assert report_audio_readout(tmp_path, "mel") == readout
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    # a jaw the audio carries beside a smile it does not, which moves about three times as much: the whole mouth
    # reads weak (and warns), the jaw alone still reads high
    bs[:, smile] = rng.uniform(0, 1, n)
    np.save(tmp_path / "bs.npy", bs)
    caplog.clear()
    with caplog.at_level("INFO", logger="synctalk.metrics.lip_sync"):
        readout = report_audio_readout(tmp_path, "mel")
    assert readout["audio_mouth_readout"] < READOUT_WEAK and readout["audio_jaw_readout"] > 0.8
    assert [r for r in caplog.records if r.levelname == "WARNING" and "did not follow the audio" in r.message]
    bs[:, jaw] = 0.2  # a jaw that does not move: no jaw read-out
    np.save(tmp_path / "bs.npy", bs)
    assert dataset_audio_readout(tmp_path, "mel")["audio_jaw_readout"] is None
    np.save(tmp_path / "aud_mel.npy", audio[:-1])  # features of another frame count
    assert dataset_audio_readout(tmp_path, "mel") is None


def test_loudness_per_frame_and_its_correlation_with_a_mouth_opening():
    second = np.arange(16000) / 16000
    samples = np.concatenate([0.5 * np.sin(2 * np.pi * 200 * second), 0.05 * np.sin(2 * np.pi * 200 * second),
                              np.zeros(16000)]).astype(np.float32)
    loudness = loudness_per_frame(samples, 75, 25.0)
    assert loudness.shape == (75,) and loudness.max() == 0.0
    np.testing.assert_allclose(loudness[5:20], 0.0, atol=0.1)
    np.testing.assert_allclose(loudness[30:45], -20.0, atol=0.1)  # a tenth of the amplitude
    np.testing.assert_array_equal(loudness[55:], -40.0)  # silence sits at the floor
    rng = np.random.default_rng(0)
    opening = np.interp(loudness, [-40, 0], [0.0, 0.6]) + rng.normal(0, 0.01, 75)
    opening[::7] = np.nan  # no face read in these frames
    assert opening_correlation(opening, loudness) > 0.95
    assert opening_correlation(-opening, loudness) < -0.95
    assert np.isnan(opening_correlation(np.full(75, 0.3), loudness))  # a mouth that never moves
    assert np.isnan(opening_correlation(np.full(75, np.nan), loudness))


def test_the_mouth_in_speech_and_in_pauses_is_measured_apart():
    """A mouth can follow every syllable and still be wrong in the pauses (open where the speaker is silent): over
    all frames the two mix; the speech-only correlation and the pause opening tell them apart."""
    from synctalk.metrics.lip_sync import opening_against_audio

    rng = np.random.default_rng(0)
    t = np.arange(48000) / 16000
    samples = (0.5 * np.sin(2 * np.pi * 200 * t) * (t >= 1)).astype(np.float32)  # 1 s pause, then 2 s of sound
    phones = np.zeros(75)
    phones[25:] = 0.45 + 0.45 * np.sin(2 * np.pi * 4 * np.arange(50) / 25)  # syllables at 4 Hz
    speech = np.arange(75) >= 25
    follows = 0.02 + 0.2 * phones + rng.normal(0, 0.005, 75)
    good = opening_against_audio(follows, samples, 25.0, "mouth", phones)
    assert good["mouth_phone_corr"] > 0.9 and good["mouth_phone_corr_in_speech"] > 0.9
    assert good["mouth_pause_opening"] == pytest.approx(0.2 * phones[29:].mean(), abs=0.01)
    open_in_pauses = np.where(speech, follows, 0.4)  # every syllable followed, the mouth open while silent
    bad = opening_against_audio(open_in_pauses, samples, 25.0, "mouth", phones)
    assert bad["mouth_phone_corr"] < 0 and bad["mouth_phone_corr_in_speech"] > 0.9 and bad["mouth_pause_opening"] < 0
    inverted = opening_against_audio(np.where(speech, 0.3 - 0.2 * phones, 0.02), samples, 25.0, "d", phones)
    assert inverted["d_phone_corr_in_speech"] < -0.9 and inverted["d_pause_opening"] > 0
    talking = opening_against_audio(follows[25:], samples[16000:], 25.0, "mouth", phones[25:])
    assert np.isnan(talking["mouth_pause_opening"]) and talking["mouth_phone_corr_in_speech"] > 0.9  # no pause


@pytest.mark.real_data
def test_a_real_mouth_opens_with_its_own_audio_more_than_with_audio_half_a_second_off(real_data, face_landmarker_task):
    """The novel-audio measures on real footage, the scale a driven head is compared with: May_13s's mouth follows
    its own audio's loudness (measured 0.35) and the opening its phones imply (0.40), and not the same audio 0.5 s
    early or late (loudness -0.16, -0.05; phones -0.05, -0.07)."""
    from synctalk.audio.features import load_audio
    from synctalk.audio.phones import phone_opening

    clip = real_data / "May_13s.mp4"
    with av.open(str(clip)) as c:
        video = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    samples = load_audio(clip)
    reader = FaceReader(face_landmarker_task)
    phones = phone_opening(samples, len(video), 25.0)
    measured = mouth_follows_audio(video, samples, 25.0, reader, branch_opening=phones)  # a branch reading the phones
    assert measured["mouth_source"] == "face_landmarker" and measured["mouth_frames_with_face"] == len(video)
    assert measured["audio_branch_phone_corr"] == pytest.approx(1.0)
    assert measured["audio_branch_phone_corr_in_speech"] == pytest.approx(1.0)
    assert 0.02 < measured["mouth_opening_sd"] < 0.3  # jawOpen of someone speaking
    opening = mouth_opening(reader.read(video), reader.mouth_names)
    for key, reading in (("mouth_loudness_corr", loudness_per_frame(samples, len(video) + 12, 25.0)),
                         ("mouth_phone_corr", phone_opening(samples, len(video) + 12, 25.0))):
        shifted = [opening_correlation(opening[:-12], reading[12:-12]),
                   opening_correlation(opening[12:], reading[:-24])]
        assert measured[key] > 0.2 and max(shifted) < measured[key] - 0.2, (key, measured[key], shifted)


def test_mouth_motion_against_the_footage():
    measured = {"mouth_source": "face_landmarker", "mouth_opening_sd": 0.003, "dataset_mouth_opening_sd": 0.03}
    assert mouth_motion(measured) == pytest.approx(0.1) and mouth_motion(measured) < STILL_MOUTH_MOTION
    assert mouth_motion({**measured, "mouth_source": "facemesh"}) is None  # a lip gap is not in jawOpen's units
    assert mouth_motion({**measured, "dataset_mouth_opening_sd": float("nan")}) is None  # no bs.npy
    assert mouth_motion({**measured, "mouth_opening_sd": 0.0}) == 0.0  # a mouth that never moves
    assert mouth_motion({**measured, "dataset_mouth_opening_sd": 0.0}) is None


def test_the_phones_opening_per_frame():
    """Each frame reads the mean jaw opening of the 10 ms viseme rows inside it; frames past the audio are silence."""
    from synctalk.audio.phones import JAW_OPENING, VISEMES, frame_opening

    labels = np.array([VISEMES.index("open")] * 42 + [VISEMES.index("closed")] * 18
                      + [VISEMES.index("close_spread")] * 2)
    opening = frame_opening(np.eye(len(VISEMES))[labels], 18, 25.0)  # 4 rows a frame
    np.testing.assert_allclose(opening[:10], JAW_OPENING["open"])
    assert opening[10] == pytest.approx(JAW_OPENING["open"] / 2)  # half its rows open, half shut
    np.testing.assert_allclose(opening[11:15], 0.0)  # lips shut for P/B/M
    assert opening[15] == pytest.approx(JAW_OPENING["close_spread"])  # the rows there are
    np.testing.assert_array_equal(opening[16:], 0.0)
    assert JAW_OPENING["open"] > JAW_OPENING["mid_spread"] > JAW_OPENING["close_spread"] > JAW_OPENING["closed"]


def _frames(clip, count):
    with av.open(str(clip)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for _, f in zip(range(count), c.decode(video=0))])


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.parametrize("landmarker", [True, False], ids=["face_landmarker", "facemesh"])
def test_the_sync_test_tells_a_mouth_in_sync_from_one_half_a_second_off(real_data, request, landmarker):
    """A 'renderer' that shows the real frames is in sync; one that shows the frames 0.5 s early or late is
    not: the sync gap must say so on a real talking face, with either face reader."""
    model = request.getfixturevalue("face_landmarker_task") if landmarker else None
    reader = FaceReader(model)
    video = _frames(real_data / "WDA_KatieHill_000.mp4", 200)
    shift, keep = 12, slice(12, 188)
    gt = reader.read(video[keep])
    in_sync = mouth_agreement(gt, gt, reader.mouth_names)["mouth_corr"]
    off = [correlation(reader.read(video[keep.start + s:keep.stop + s])["mouth"], gt["mouth"]) for s in (shift, -shift)]
    gap = sync_gap(in_sync, off, gt["mouth"], shift)
    assert in_sync == pytest.approx(1.0)
    assert gap["sync_gap"] > 0.5, gap  # measured 0.9 (Face Landmarker) and 0.9 (FaceMesh) on this clip
    assert gap["sync_gap_gt"] > 0.5


def test_training_with_the_auxiliary_mouth_target_and_the_mouth_condition(run_cli, monkeypatch):
    import json

    from tests.conftest import latest_run

    monkeypatch.delenv("SYNCTALK_WEIGHTS", raising=False)
    assert run_cli("train", "experiment=smoke", "logger=none", "trainer.enable_progress_bar=false",
                   "model.net.mouth_condition=true") == 2  # needs the mouth head: a one-line error
    assert run_cli("train", "experiment=smoke", "logger=none", "trainer.enable_progress_bar=false",
                   "model.loss.audio_mouth_weight=0.1", "model.loss.mouth_teacher=0.5") == 2  # needs mouth_condition
    assert run_cli("train", "experiment=smoke", "logger=none", "trainer.enable_progress_bar=false",
                   "model.loss.audio_mouth_weight=0.1", "model.net.mouth_condition=true") == 0
    run = latest_run(run_cli.root)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 20
    # a 20-step head may show no face at all: then the notes say why there are no lip-sync numbers
    assert metrics.get("lip_sync_source") == "facemesh geometry" or any(
        n.startswith("lip sync skipped") for n in metrics["notes"])
    assert run_cli("evaluate", f"ckpt={run}/checkpoints/last.ckpt") == 0  # the checkpoint loads with its mouth head
    # expression values kept above the nose base: the plane comes from the training landmarks and is saved
    assert run_cli("train", "experiment=smoke", "logger=none", "trainer.enable_progress_bar=false",
                   "model.net.expression_region=upper_face") == 0
    run = latest_run(run_cli.root)
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert state["net.upper_face_plane"][4] > 0 and torch.equal(state["net.upper_face_plane"],
                                                                   state["ema.module.upper_face_plane"])
    assert run_cli("evaluate", f"ckpt={run}/checkpoints/last.ckpt") == 0


@pytest.mark.parametrize("teacher", [0.0, 1.0])
@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # training_step called outside a Trainer
def test_the_density_sees_the_true_mouth_on_the_teacher_share_of_steps(tmp_path, teacher):
    """``model.loss.mouth_teacher``: the share of training steps whose density network is given the frame's true
    mouth blendshapes (the batch's ``mouth``) instead of the mouth the audio predicts; 0: never, 1: always."""
    from synctalk.runs import build_datamodule, build_system
    from tests.conftest import compose_config

    cfg = compose_config("train", ["experiment=smoke", "model.loss.audio_mouth_weight=0.1",
                                    "model.net.mouth_condition=true", "model.net.mouth_only=true",
                                    f"model.loss.mouth_teacher={teacher}"], root=tmp_path)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup()
    system = build_system(cfg, len(dm.train_frames))
    seen = []
    condition = system.net.condition
    system.net.condition = lambda *a, **kw: seen.append(kw.get("mouth", a[3] if len(a) > 3 else None)) or condition(*a, **kw)
    batch = next(iter(dm.train_dataloader()))
    for _ in range(4):
        system.training_step(batch, 0)
    if teacher:
        assert all(m is not None and torch.equal(m, batch["mouth"]) for m in seen), seen
    else:
        assert seen == [None] * 4


def test_the_footage_measure_is_kept_in_the_dataset_while_its_audio_and_blendshapes_are_unchanged(tmp_path,
                                                                                                   monkeypatch):
    """Every render scores its head beside the footage's own measure; the footage's phones are recognised once and
    kept in the dataset (``mouth_audio.json``), measured again when the audio, the blendshapes or the fps change."""
    import synctalk.audio.phones as phones_module
    from synctalk.audio.features import write_wav
    from synctalk.face.blendshape_sets import BLENDSHAPE_NAMES
    from synctalk.metrics.lip_sync import dataset_mouth_audio

    calls = []

    def counted_opening(samples, num_frames, fps):
        calls.append(num_frames)
        return np.sin(np.arange(num_frames) / 3.0) + 1.0

    monkeypatch.setattr(phones_module, "phone_opening", counted_opening)
    t = np.arange(48000) / 16000
    write_wav(tmp_path / "aud.wav", (0.5 * np.sin(2 * np.pi * 200 * t) * (t >= 1)).astype(np.float32))
    bs = np.zeros((75, len(BLENDSHAPE_NAMES)), np.float32)
    bs[:, BLENDSHAPE_NAMES.index("jawOpen")] = 0.1 + 0.05 * np.sin(np.arange(75) / 3.0)
    np.save(tmp_path / "bs.npy", bs)
    first = dataset_mouth_audio(tmp_path, 25.0)
    assert len(calls) == 1 and (tmp_path / "mouth_audio.json").is_file()
    assert first["dataset_mouth_phone_corr"] > 0.9
    assert dataset_mouth_audio(tmp_path, 25.0) == first and len(calls) == 1  # read back
    dataset_mouth_audio(tmp_path, 30.0)
    assert len(calls) == 2  # another frame rate
    bs[:, BLENDSHAPE_NAMES.index("jawOpen")] *= -1
    np.save(tmp_path / "bs.npy", bs)
    assert dataset_mouth_audio(tmp_path, 25.0)["dataset_mouth_phone_corr"] < -0.9 and len(calls) == 3
    (tmp_path / "mouth_audio.json").write_text("{not json")
    assert dataset_mouth_audio(tmp_path, 25.0)["dataset_mouth_phone_corr"] < -0.9 and len(calls) == 4
    assert dataset_mouth_audio(tmp_path, 25.0)["dataset_mouth_phone_corr"] < -0.9 and len(calls) == 4


def test_the_offset_check_finds_the_shift_that_pairs_the_sound_with_the_picture():
    """benchmarks/audio_features.py --shifts: a mouth that the audio window of three frames later explains reads best
    at s = +3 (the sound after the picture), and not at all at s = 0; frames without a face are left out."""
    from tests.conftest import benchmark_module

    bench = benchmark_module("audio_features")
    rng = np.random.default_rng(0)
    n, dim = 300, 12
    audio = rng.normal(size=(n, dim))  # (N, D) one window per frame, unrelated from frame to frame
    mouth = np.full((n, 2), np.nan)
    mouth[:-3] = audio[3:] @ rng.normal(size=(dim, 2)) + 0.3 * rng.normal(size=(n - 3, 2))
    mouth[10] = np.nan  # no face read there
    scores = bench.shifted_within(audio, mouth, strength=1.0, shifts=range(-5, 6))
    assert sorted(scores) == list(range(-5, 6))
    assert max(scores, key=scores.get) == 3 and scores[3] > 0.8
    assert all(abs(scores[s]) < 0.3 for s in scores if s != 3)
