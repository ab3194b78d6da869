"""The clip metrics: SyncNet (LSE), NIQE, BRISQUE, FID, LMD and the blendshape AU errors."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from synctalk.config.schema import MetricsConfig
from synctalk.errors import UserError
from synctalk.evaluation import ClipScorers
from synctalk.metrics import no_reference, sync
from synctalk.metrics.motion import action_errors, mouth_landmark_distance


def _natural(seed: int, size: int = 224) -> np.ndarray:
    """A sharp, textured RGB image: smoothed noise at several scales plus edges."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size), np.float32)
    for s in (3, 9, 27):
        img += cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), s) * s
    img = (img - img.min()) / (img.max() - img.min()) * 255
    cv2.rectangle(img, (40, 40), (120, 160), 230, 3)
    return np.repeat(img.astype(np.uint8)[..., None], 3, -1)


def test_syncnet_loads_the_released_layout_and_embeds(tmp_path):
    torch.manual_seed(0)
    net = sync.SyncNet()
    state = net.state_dict()
    assert "netcnnaud.0.weight" in state and "netcnnlip.0.weight" in state and "netfclip.3.weight" in state
    assert state["netcnnlip.0.weight"].shape == (96, 3, 5, 7, 7) and state["netcnnaud.18.weight"].shape == (512, 256, 5, 4) and state["netcnnlip.18.weight"].shape == (512, 256, 1, 6, 6)
    torch.save(state, tmp_path / "syncnet_v2.model")
    loaded = sync.load_syncnet(str(tmp_path / "syncnet_v2.model"), "metrics.syncnet")
    assert torch.equal(loaded.netfcaud[3].weight, net.netfcaud[3].weight)
    with torch.no_grad():
        assert loaded.forward_lip(torch.rand(2, 3, 5, 224, 224) * 255).shape == (2, 1024)
        assert loaded.forward_aud(torch.randn(2, 1, 13, 20)).shape == (2, 1024)
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "bad.model")
    with pytest.raises(UserError, match="not a SyncNet state dict"):
        sync.load_syncnet(str(tmp_path / "bad.model"), "metrics.syncnet")
    with pytest.raises(UserError, match="metrics.syncnet"):
        sync.load_syncnet(str(tmp_path / "missing.model"), "metrics.syncnet")


def test_offset_search_finds_a_known_shift():
    torch.manual_seed(0)
    aud = torch.randn(40, 8)
    lip = torch.roll(aud, -3, 0)  # lip window i matches audio window i + 3
    d = sync.offset_distances(lip[:30], aud[:30], vshift=5)
    best = int(d[:25].mean(0).argmin())
    assert best - 5 == 3 and d[:25, best].abs().max() < 1e-3


def test_lse_runs_end_to_end_on_made_weights():
    torch.manual_seed(0)
    net = sync.SyncNet().eval()
    frames = np.stack([_natural(i, 128) for i in range(12)])
    landmarks = np.tile(np.stack(np.meshgrid(np.linspace(40, 90, 17), np.linspace(40, 100, 4)), -1).reshape(-1, 2)[:68],
                        (12, 1, 1))
    crops = sync.crop_faces(frames, sync.face_crop_boxes(landmarks))
    assert crops.shape == (12, 224, 224, 3) and crops.dtype == np.uint8
    audio = np.random.default_rng(0).normal(0, 0.1, 12 * 640).astype(np.float32)
    out = sync.lip_sync_error(net, crops, audio, vshift=2)
    assert out["lse_d"] > 0 and out["lse_c"] >= 0 and -2 <= out["offset"] <= 2
    with pytest.raises(ValueError, match="at least 5 frames"):
        sync.lip_sync_error(net, crops[:3], audio, vshift=2)


def test_niqe_rises_with_blur_and_noise(tmp_path):
    model = no_reference.fit_niqe_model([_natural(i) for i in range(6)], tmp_path / "niqe.npz")
    assert model["mu"].shape == (36,) and model["cov"].shape == (36, 36)
    loaded = no_reference.load_niqe_model(str(tmp_path / "niqe.npz"), "metrics.niqe_model")
    sharp = _natural(100)
    blurred = cv2.GaussianBlur(sharp, (0, 0), 4)
    noisy = np.clip(sharp + np.random.default_rng(1).normal(0, 40, sharp.shape), 0, 255).astype(np.uint8)
    score = {name: no_reference.niqe(img, loaded) for name, img in
             (("sharp", sharp), ("blurred", blurred), ("noisy", noisy))}
    assert score["sharp"] < score["blurred"] and score["sharp"] < score["noisy"]
    with pytest.raises(ValueError, match="at least 192 px"):
        no_reference.niqe(sharp[:150, :150], loaded)
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3), cov=np.eye(3))
    with pytest.raises(UserError, match="36-vector"):
        no_reference.load_niqe_model(str(tmp_path / "bad.npz"), "metrics.niqe_model")


def test_brisque_prefers_the_sharp_image():
    scorer = no_reference.Brisque()
    sharp = _natural(3, 256)
    assert scorer.score(sharp) < scorer.score(cv2.GaussianBlur(sharp, (0, 0), 3))


def test_fid_with_made_inception_weights(tmp_path, monkeypatch):
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    from synctalk.metrics.fid import frechet_inception_distance, load_fid

    with monkeypatch.context() as m:  # build the network without its download, to save a state dict of its layout
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for module in net.modules():  # its own init leaves the features near zero
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight)
    state = net.state_dict()
    torch.save(state, tmp_path / "inception.pth")
    rng = np.random.default_rng(0)
    real = np.stack([_natural(i, 96) for i in range(4)])
    fid = load_fid(str(tmp_path / "inception.pth"), "metrics.fid_inception")
    same = frechet_inception_distance(fid, real, real)
    other = frechet_inception_distance(fid, real, rng.integers(0, 255, real.shape, dtype=np.uint8))
    assert abs(same) < 1e-2 < other


def test_lmd_and_aue_are_zero_on_identical_landmarks_and_grow_with_an_open_mouth():
    rng = np.random.default_rng(0)
    mesh = rng.uniform(100, 400, (5, 478, 3)).astype(np.float32)
    assert np.allclose(mouth_landmark_distance(mesh, mesh, 512), 0)
    assert np.allclose(action_errors(mesh, mesh)["aue_lower"], 0)
    opened = mesh.copy()
    opened[:, 14, 1] += 20  # the lower inner lip moves down
    assert action_errors(opened, mesh)["aue_lower"].min() > 0
    assert np.allclose(action_errors(opened, mesh)["aue_upper"], 0)
    shifted = mesh + 7.0  # the whole head moves: LMD is mean-centred
    assert np.allclose(mouth_landmark_distance(shifted, mesh, 256), 0, atol=1e-4)


def test_clip_metrics_notes_every_skipped_metric():
    cfg = OmegaConf.structured(MetricsConfig(brisque=False, landmarks=False))
    frames = np.stack([_natural(i, 64) for i in range(3)])
    values, notes = ClipScorers(cfg).score(frames, frames, None, None)
    assert values == {}
    assert {n.split(" ")[0] for n in notes} >= {"niqe", "lse"}
    assert any(n.startswith("fid") for n in notes)


def test_clip_metrics_runs_lse_and_niqe_from_configured_files(tmp_path):
    torch.manual_seed(0)
    torch.save(sync.SyncNet().state_dict(), tmp_path / "syncnet_v2.model")
    frames = np.stack([_natural(i, 224) for i in range(8)])
    no_reference.fit_niqe_model(list(frames[:4]), tmp_path / "niqe.npz")
    cfg = OmegaConf.structured(MetricsConfig(brisque=False, landmarks=False, syncnet=str(tmp_path / "syncnet_v2.model"),
                                             niqe_model=str(tmp_path / "niqe.npz"), sync_vshift=2))
    landmarks = np.tile(np.stack(np.meshgrid(np.linspace(60, 160, 17), np.linspace(60, 180, 4)), -1).reshape(-1, 2)[:68],
                        (8, 1, 1))
    audio = np.random.default_rng(0).normal(0, 0.1, 8 * 640).astype(np.float32)
    values, notes = ClipScorers(cfg).score(frames, frames[::-1].copy(), audio, landmarks)
    assert {"lse_d", "lse_c", "lse_offset", "lse_d_gt", "lse_c_gt", "niqe", "niqe_gt"} <= set(values)
    assert not [n for n in notes if n.startswith(("lse", "niqe"))]
