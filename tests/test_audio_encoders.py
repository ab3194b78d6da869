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
