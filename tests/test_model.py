"""The SyncTalk head model: smoother, attention, latent codes, occupancy grid, losses, LPIPS, poses."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synctalk.data.datamodule import SubjectFrames, TrainRays
from synctalk.data.datamodule import temporal_context
from synctalk.errors import UserError
from synctalk.geometry import euler_to_matrix, head_pose_to_c2w, nearest_point_to_rays, smooth_poses
from synctalk.metrics.image import GtModeMetrics
from synctalk.models import losses
from synctalk.models.encoding import TriPlaneHashEncoding
from synctalk.models.head_nerf import MLP, AudioAttNet, HeadNeRF, mlp, native_bf16
from synctalk.models.occupancy import OccupancyGrid
from synctalk.models.rendering import render_rays


def small_net(**kw) -> HeadNeRF:
    enc = TriPlaneHashEncoding(num_levels=3, base_resolution=8, max_resolution=32)
    return HeadNeRF(enc, audio_in_dim=80, audio_window=16, eye_dim=7, num_samples=16, **kw)


def rays(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    o = torch.tensor([[0.0, 0.0, 3.6]]).repeat(n, 1)
    d = torch.nn.functional.normalize(torch.tensor([[0.0, 0.0, -1.0]]) + 0.15 * torch.randn(n, 3), dim=-1)
    return o, d


def test_temporal_context_repeats_the_edges():
    seq = torch.arange(10)
    assert temporal_context(seq, 0, 8).tolist() == [0, 0, 0, 0, 0, 1, 2, 3]
    assert temporal_context(seq, 5, 8).tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert temporal_context(seq, 9, 3).tolist() == [8, 9, 9]


def test_audio_smoother_is_a_convex_combination_of_neighbours():
    att = AudioAttNet(dim=32, length=8)
    same = torch.randn(1, 32).repeat(8, 1)
    torch.testing.assert_close(att(same), same[0])  # weights sum to one
    mixed = torch.randn(8, 32)
    out = att(mixed)
    assert (out <= mixed.max(0).values + 1e-6).all() and (out >= mixed.min(0).values - 1e-6).all()
    batch = torch.randn(3, 2, 8, 32)  # any leading dimensions: each item smoothed alone
    torch.testing.assert_close(att(batch), torch.stack([torch.stack([att(e) for e in row]) for row in batch]))


def test_head_nerf_outputs_attention_uncertainty_and_uses_latent_codes():
    torch.manual_seed(0)
    net = small_net(num_frames=5, smooth_frames=8, latent_dim=4)
    o, d = rays()
    audio, eye = torch.randn(8, 16, 80), torch.rand(7)
    out = net.render(o, d, torch.rand(64, 3), audio, eye, frame=2)
    for key in ("uncertainty", "audio_att", "eye_att"):
        assert out[key].shape == (64,) and (out[key] >= 0).all()
    assert ((out["audio_att"] <= out["opacity"] + 1e-6)).all()  # a weighted mean of values in [0, 1]
    torch.testing.assert_close(net.latent(None), net.latent_codes.mean(0))
    other = net.render(o, d, torch.rand(64, 3), audio, eye, frame=3)
    assert not torch.allclose(out["rgb"], other["rgb"])  # another frame's code
    single = net.render(o, d, torch.rand(64, 3), audio[0], eye)  # one frame of audio is repeated
    assert single["rgb"].shape == (64, 3)
    with pytest.raises(ValueError, match="8 frames"):
        net.render(o, d, torch.rand(64, 3), audio[:3], eye)


def test_bf16_mlp_matches_float32_and_trains_float32_parameters():
    """The bf16 path pads the rows to a cached kernel size, returns float32 rows in order and gives float32
    gradients of the right shape; its output is the float32 one within bf16 rounding."""
    torch.manual_seed(0)
    net = mlp(52, 64, 65, 3, precision="fp32")
    x = torch.randn(1000, 52, requires_grad=True)  # 1000 rows: padded to 1024 inside
    reference = net(x)
    reference.square().sum().backward()
    grads = [p.grad.clone() for p in net.parameters()] + [x.grad.clone()]
    net.zero_grad()
    x.grad = None
    net.precision = "bf16"
    out = net(x)
    assert out.dtype == torch.float32 and out.shape == (1000, 65)
    assert (out - reference).abs().max() < 0.03 * reference.abs().max()
    out.square().sum().backward()
    for got, want in zip([p.grad for p in net.parameters()] + [x.grad], grads):
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert (got - want).norm() < 0.05 * want.norm()  # bf16 rounding through three layers (measured 0.2-3%)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert net(x[:0]).shape == (0, 65)  # an empty batch (every sample skipped) still works


def test_bf16_mlp_reads_out_its_first_outputs_in_float32():
    """``fp32_outputs=1`` (the raw density): that output keeps float32 resolution, the others are bf16 values."""
    torch.manual_seed(0)
    net = mlp(16, 32, 5, 2, precision="bf16", fp32_outputs=1)
    with torch.no_grad():
        net[-1].weight.mul_(40)  # outputs of about 10, where bf16 steps are 0.06
    out = net(torch.randn(300, 16))
    on_bf16_grid = out == out.bfloat16().float()
    assert on_bf16_grid[:, 1:].all() and on_bf16_grid[:, 0].float().mean() < 0.1
    out[:, 0].sum().backward()
    assert net[-1].weight.grad[0].abs().sum() > 0 and net[-1].weight.grad[1:].abs().sum() == 0


def test_mlp_precision_auto_follows_the_hardware_and_typos_are_refused():
    auto = MLP(torch.nn.Linear(4, 4), precision="auto")
    want = torch.bfloat16 if native_bf16("cpu") else torch.float32
    assert auto.compute_dtype(torch.device("cpu")) == want
    assert MLP(torch.nn.Linear(4, 4), precision="fp32").compute_dtype(torch.device("cpu")) == torch.float32
    with pytest.raises(ValueError, match="auto, bf16, fp32"):
        MLP(torch.nn.Linear(4, 4), precision="half")
    with pytest.raises(ValueError, match="mlp precision"):
        small_net(mlp_precision="fp16")
    net = small_net(mlp_precision="fp32")  # checkpoints do not depend on the precision
    assert set(net.state_dict()) == set(small_net(mlp_precision="bf16").state_dict())


def test_the_ema_copy_starts_at_the_trained_weights_then_moves_by_one_minus_decay():
    from functools import partial

    from synctalk.systems.head import HeadNeRFSystem

    torch.manual_seed(0)
    system = HeadNeRFSystem(small_net(), partial(torch.optim.AdamW), ema_decay=0.9)
    weights = lambda net: torch.cat([p.detach().flatten() for p in net.parameters()])  # noqa: E731
    with torch.no_grad():
        for p in system.net.parameters():
            p.add_(1.0)
    system._update_ema()
    torch.testing.assert_close(weights(system.inference_net), weights(system.net))
    before = weights(system.inference_net)
    with torch.no_grad():
        for p in system.net.parameters():
            p.add_(1.0)
    system._update_ema()
    torch.testing.assert_close(weights(system.inference_net), 0.9 * before + 0.1 * weights(system.net))
    assert int(system.ema.n_averaged) == 2


def sphere_field(points: torch.Tensor, dirs: torch.Tensor) -> dict[str, torch.Tensor]:
    inside = points.norm(dim=-1) < 0.4
    return {"density": inside.float() * 20.0, "rgb": torch.full_like(points, 0.7)}


def test_occupancy_grid_skips_empty_space_without_changing_the_image():
    grid = OccupancyGrid(resolution=32, bound=1.0, step=2.0 / 64, cells_per_update=0)
    o, d = rays(256)
    bg = torch.rand(256, 3)
    full = render_rays(sphere_field, o, d, bg, 1.0, 64, False)
    grid.update(lambda p: sphere_field(p, p)["density"])
    assert 0.005 < grid.occupied_fraction < 0.1  # the sphere is about 3% of the box
    skipped = render_rays(sphere_field, o, d, bg, 1.0, 64, False, occupancy=grid)
    torch.testing.assert_close(skipped["rgb"], full["rgb"], atol=2e-3, rtol=0)
    assert int(skipped["samples"]) < 0.5 * int(full["samples"])


def test_the_image_path_gives_the_rendered_colour_marching_front_to_back_and_colouring_samples_that_show():
    """``render_rgb`` (what images are rendered with) against ``render``'s rgb on a field with opaque parts and an
    occupancy grid: equal to float precision with every sample coloured in one pass, within the weights left out
    with the default ``min_weight``, which colours far fewer samples, and with the march's early ray termination,
    which evaluates the density at fewer samples (none behind an opaque surface)."""
    torch.manual_seed(3)
    net = small_net(density_bias=3.0).eval()
    grid = OccupancyGrid(resolution=16, bound=1.0)
    centres = grid.cell_points(torch.arange(16 ** 3)).round(decimals=1)
    grid.occupied.copy_(centres.norm(dim=-1) < 0.6)  # a ball of occupied cells, empty space around it
    audio, eye = torch.randn(16, 80), torch.rand(7)
    o, d = rays(512)
    bg = torch.rand(512, 3)
    coloured, densities = [], []
    hooks = [net.color_net.register_forward_hook(lambda m, args, out: coloured.append(len(out))),
             net.density_net.register_forward_hook(lambda m, args, out: densities.append(len(out)))]
    with torch.no_grad():
        full = net.render(o, d, bg, audio, eye, occupancy=grid)
    cond = net.condition(audio, eye)
    runs = {"every": dict(min_weight=0.0), "one_pass": dict(march_samples=0), "marched": {},
            "marched_by_1": dict(march_samples=1)}
    images, counts = {}, {}
    for name, kwargs in runs.items():
        coloured.clear(), densities.clear()
        images[name] = net.render_rgb(o, d, bg, cond, occupancy=grid, **kwargs)
        counts[name] = (sum(densities), sum(coloured))
    for hook in hooks:
        hook.remove()
    assert float(full["opacity"].max()) > 0.9 and float(full["opacity"].min()) < 0.1
    torch.testing.assert_close(images["every"], full["rgb"], atol=1e-6, rtol=0)
    for name in ("one_pass", "marched", "marched_by_1"):
        error = images[name] - full["rgb"]
        psnr = -10 * math.log10(float(error.pow(2).mean()))
        assert float(error.abs().max()) < 32 * 1e-4 and psnr > 45, (name, psnr)
    assert counts["one_pass"][1] < 0.7 * counts["every"][1], counts
    assert counts["marched"][0] < 0.9 * counts["one_pass"][0], counts  # rays stop at the opaque ball
    assert counts["marched_by_1"][0] < counts["marched"][0], counts
    torch.testing.assert_close(images["marched"], images["one_pass"], atol=2e-4, rtol=0)


def test_occupancy_counts_everything_occupied_before_its_first_update():
    grid = OccupancyGrid(resolution=8)
    assert grid.is_occupied(torch.rand(100, 3) * 2 - 1).all() and grid.occupied_fraction == 1.0


def test_uncertainty_weighting_is_minimal_at_beta_equal_to_the_error():
    error = torch.full((10,), 0.3)
    values = {u: float(losses.uncertainty_weighted(error, torch.full((10,), u), beta_min=0.1))
              for u in (0.0, 0.1, 0.2, 0.4, 0.8)}
    assert min(values, key=values.get) == 0.2  # beta = 0.1 + 0.2 = the error


def test_entropy_and_masked_attention():
    assert float(losses.opacity_entropy(torch.tensor([0.0, 1.0]))) < 1e-3
    assert math.isclose(float(losses.opacity_entropy(torch.tensor([0.5]))), math.log(2), rel_tol=1e-4)
    audio_att, eye_att = torch.tensor([0.9, 0.1, 0.3, 0.5]), torch.tensor([0.2, 0.8, 0.6, 0.4])
    lower = torch.tensor([True, False, True, False])
    # audio attention counts on the upper rays (0.1, 0.5), expression attention on the lower ones (0.2, 0.6)
    assert math.isclose(float(losses.masked_attention(audio_att, eye_att, lower)), 0.3 + 0.4, rel_tol=1e-6)
    assert math.isclose(float(losses.masked_attention(audio_att, eye_att, torch.zeros(4, dtype=torch.bool))),
                        float(audio_att.mean()), rel_tol=1e-6)


def test_ssim_patch_loss_is_zero_for_equal_patches_and_differentiable():
    a = torch.rand(32, 32, 3)
    assert float(losses.patch_loss(a, a, "ssim")) < 1e-5
    pred = torch.rand(32, 32, 3, requires_grad=True)
    loss = losses.patch_loss(pred, a, "ssim")
    loss.backward()
    assert float(loss.detach()) > 0.1 and pred.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        losses.patch_loss(a, a, "lpips")  # no model given


def test_lpips_loads_alexnet_weights_from_a_file(tmp_path, monkeypatch):
    import torchvision

    from synctalk.metrics.lpips import load_lpips

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(UserError, match="alexnet-owt-7be5be79.pth"):
        load_lpips(None, "model.loss.lpips_backbone")
    torch.manual_seed(0)
    alexnet = torchvision.models.alexnet(weights=None)
    torch.save(alexnet.state_dict(), tmp_path / "alexnet.pth")
    model = load_lpips(str(tmp_path / "alexnet.pth"), "model.loss.lpips_backbone")
    torch.testing.assert_close(getattr(model.net.slice3, "6").weight, alexnet.features[6].weight)  # conv 3 of 5
    x, y = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64) * 2 - 1
    assert float(model(x, x).mean()) < 1e-6 and float(model(x, y).mean()) > 0
    patch = torch.rand(32, 32, 3)
    assert float(losses.patch_loss(patch, torch.rand(32, 32, 3), "lpips", model)) > 0
    metrics = GtModeMetrics(9, model)
    image, mask = torch.rand(64, 64, 3), torch.zeros(64, 64)
    metrics.update(image, torch.rand(64, 64, 3), torch.rand(64, 64, 3), mask)
    scores = metrics.compute()
    assert scores["with_hair/lpips"] < 1e-6 < scores["parsed/lpips"]  # an empty mask pastes all of the GT
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="AlexNet"):
        load_lpips(str(tmp_path / "other.pth"), "model.loss.lpips_backbone")


def test_smoothed_poses_are_rotations_closer_to_the_smooth_path():
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 60)
    euler = np.stack([0.2 * np.sin(2 * np.pi * t), 0.1 * t, 0.05 * np.cos(2 * np.pi * t)], -1)
    trans = np.stack([0.01 * t, 0.0 * t, -0.9 + 0.01 * t], -1)
    clean = head_pose_to_c2w(euler_to_matrix(euler), trans)
    noisy = head_pose_to_c2w(euler_to_matrix(euler + rng.normal(0, 0.01, euler.shape)),
                             trans + rng.normal(0, 0.002, trans.shape))
    smooth = smooth_poses(noisy, sigma=2.0)
    rot = smooth[:, :3, :3]
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-9)
    err = lambda a: np.abs(a[5:-5, :3, :] - clean[5:-5, :3, :]).mean()  # noqa: E731
    assert err(smooth) < 0.6 * err(noisy)
    np.testing.assert_array_equal(smooth_poses(noisy, 0.0), noisy)


def test_patches_alternate_between_face_and_mouth_and_regions_follow_the_nose(tiny_dataset):
    f = SubjectFrames(tiny_dataset, "train", "mel", ["eyeBlinkLeft", "eyeBlinkRight"])
    data = TrainRays(f, 100, audio_frames=8, patch_size=8, regions=True)
    first, second = data[4], data[4]
    assert first["audio"].shape == (8, 16, 80)
    assert int(first["patch_region"]) == 0 and int(second["patch_region"]) == 1
    for item in (first, second):
        patch = item["pixels"][-64:].view(8, 8, 2)
        assert (patch[:, 1:, 0] - patch[:, :-1, 0] == 1).all() and (patch[1:, :, 1] - patch[:-1, :, 1] == 1).all()
    u0, v0, u1, v1 = f.mouth_box(4)
    centre = second["pixels"][-64:].float().mean(0)
    assert abs(float(centre[0]) - (u0 + u1) / 2) <= 1.5 and abs(float(centre[1]) - (v0 + v1) / 2) <= 1.5
    nose_v = f.landmarks(4)[30, 1]
    lower, v = first["lower_face"], first["pixels"][:, 1]
    assert lower.any() and (v[lower] > nose_v).all()
    with pytest.raises(UserError, match="patch_size"):
        TrainRays(f, 100, patch_size=128)


def test_ms_ssim_uses_the_scales_that_fit_and_ranks_noise():
    from synctalk.metrics.image import ms_ssim, ms_ssim_scales

    assert ms_ssim_scales(512, 512) == 5 and ms_ssim_scales(128, 128) == 4 and ms_ssim_scales(64, 64) == 3
    torch.manual_seed(0)
    clean = torch.rand(1, 3, 64, 64)
    light, heavy = [(clean + s * torch.randn_like(clean)).clamp(0, 1) for s in (0.02, 0.2)]
    assert ms_ssim(clean, clean) > 0.999 and ms_ssim(light, clean) > ms_ssim(heavy, clean)


def test_the_mouth_head_reads_the_mouth_from_the_audio_and_can_condition_the_density(tiny_dataset):
    from synctalk.face.blendshape_sets import BLENDSHAPE_NAMES, MOUTH_BLENDSHAPES

    audio = torch.randn(8, 16, 80)
    net = small_net(mouth_dim=len(MOUTH_BLENDSHAPES))
    assert net.predict_mouth(audio).shape == (len(MOUTH_BLENDSHAPES),)
    assert net.condition(audio, torch.zeros(7))["audio"].shape == (32,)
    conditioned = small_net(mouth_dim=len(MOUTH_BLENDSHAPES), mouth_condition=True)
    cond = conditioned.condition(audio, torch.zeros(7))
    assert cond["audio"].shape == (32 + len(MOUTH_BLENDSHAPES),)
    assert torch.equal(cond["audio"][32:], conditioned.predict_mouth(audio))  # the density sees the predicted mouth
    o, d = rays(16)
    out = conditioned.render(o, d, torch.zeros(16, 3), audio, torch.zeros(7))
    assert out["rgb"].shape == (16, 3)
    with pytest.raises(ValueError, match="mouth_condition needs the mouth head"):
        small_net(mouth_condition=True)
    with pytest.raises(ValueError, match="no mouth head"):
        small_net().predict_mouth(audio)
    # the mouth as the one path from the audio to the density, and the true mouth standing in for it
    only = small_net(mouth_dim=len(MOUTH_BLENDSHAPES), mouth_condition=True, mouth_only=True)
    assert torch.equal(only.condition(audio, torch.zeros(7))["audio"], only.predict_mouth(audio))
    true_mouth = torch.rand(len(MOUTH_BLENDSHAPES))
    assert torch.equal(only.condition(audio, torch.zeros(7), mouth=true_mouth)["audio"], true_mouth)
    assert torch.equal(conditioned.condition(audio, torch.zeros(7), mouth=true_mouth)["audio"][32:], true_mouth)
    assert only.render(o, d, torch.zeros(16, 3), audio, torch.zeros(7), mouth=true_mouth)["rgb"].shape == (16, 3)
    with pytest.raises(ValueError, match="mouth_only needs mouth_condition"):
        small_net(mouth_dim=len(MOUTH_BLENDSHAPES), mouth_only=True)
    # the training items carry the frame's mouth blendshapes from bs.npy
    f = SubjectFrames(tiny_dataset, "train", "mel", ["eyeBlinkLeft"])
    item = TrainRays(f, 64, audio_frames=8)[3]
    bs = np.load(tiny_dataset / "bs.npy")
    cols = [BLENDSHAPE_NAMES.index(n) for n in MOUTH_BLENDSHAPES]
    assert torch.allclose(item["mouth"], torch.from_numpy(np.clip(bs[f.img_ids[3], cols], 0, 1)).float())


def test_nearest_point_to_rays_finds_the_point_and_falls_back_to_the_prior_along_parallel_rays():
    rng = np.random.default_rng(0)
    point = np.array([0.1, -0.2, 0.3])
    origins = rng.normal(size=(20, 3)) * 2 + [0, 0, 4]
    np.testing.assert_allclose(nearest_point_to_rays(origins, point - origins, np.zeros(3), 1e-9), point, atol=1e-6)
    parallel = nearest_point_to_rays(origins * [1, 1, 0] + [0, 0, 4], np.tile([0.0, 0.0, -1.0], (20, 1)), np.zeros(3))
    assert abs(parallel[2]) < 1e-6  # the depth the rays cannot tell stays at the prior's
    np.testing.assert_allclose(parallel[:2], origins[:, :2].mean(0), rtol=1e-2)


def test_the_upper_face_plane_lies_through_the_nose_base_of_the_synthetic_subject(tiny_dataset):
    f = SubjectFrames(tiny_dataset, "train", "mel", ["eyeBlinkLeft"])
    plane = f.upper_face_plane().numpy()
    truth = np.load(tiny_dataset / "ground_truth.npz")["landmarks_3d"] * f.scale  # NeRF units, head frame
    up = truth[:, 19:25].mean((0, 1)) - truth[:, 8].mean(0)
    assert plane[:3] @ up / np.linalg.norm(up) > 0.99  # normal from the chin towards the brows
    nose_base = truth[:, 33].mean(0)
    assert abs(plane[:3] @ nose_base - plane[3]) < 0.004 * f.scale  # through the nose base, within 4 mm
    assert 0 < plane[4] < 0.01 * f.scale


def test_upper_face_expressions_cannot_move_the_lower_face():
    torch.manual_seed(0)
    net = small_net(expression_region="upper_face")
    points = torch.tensor([[0.0, -0.3, 0.2], [0.05, -0.2, 0.1], [0.0, 0.3, 0.2], [-0.05, 0.2, 0.1]])
    cond = [net.condition(torch.randn(8, 16, 80), eye) for eye in (torch.zeros(7), torch.ones(7))]
    with pytest.raises(RuntimeError, match="plane is not set"):
        net.density(points, cond[:1])
    with pytest.raises(ValueError, match="upper_face"):
        small_net().set_upper_face_plane(torch.zeros(5))
    net.set_upper_face_plane(torch.tensor([0.0, 1.0, 0.0, 0.0, 0.01]))
    cond[1]["audio"] = cond[0]["audio"]  # the same audio, other expression values
    closed, open_ = (net.field(points, torch.zeros_like(points), c) for c in cond)
    torch.testing.assert_close(closed["density"][:2], open_["density"][:2])  # below the nose base: only the audio
    torch.testing.assert_close(closed["rgb"][:2], open_["rgb"][:2])
    assert not torch.allclose(closed["density"][2:], open_["density"][2:])  # above it the expression acts
    with pytest.raises(ValueError, match="expression_region must be one of"):
        small_net(expression_region="eyes")
