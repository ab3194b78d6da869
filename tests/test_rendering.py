"""Ray geometry and volume compositing, checked against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import torch

from synctalk.geometry import euler_to_matrix, head_pose_to_c2w, pixel_rays, project_points, ray_box_intersection
from synctalk.models.encoding import TriPlaneHashEncoding
from synctalk.models.head_nerf import AudioNet, HeadNeRF
from synctalk.models.rendering import composite, render_rays, sample_along_rays


def test_ray_box_intersection_hand_values():
    o = torch.tensor([[0.0, 0.0, 3.0], [0.0, 5.0, 3.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    near, far = ray_box_intersection(o, d, bound=1.0)
    assert torch.allclose(near[0], torch.tensor(2.0)) and torch.allclose(far[0], torch.tensor(4.0))
    assert far[1] <= near[1]  # misses


def test_constant_density_matches_beer_lambert():
    r, s = 4, 64
    sigma = 0.7
    depths = torch.linspace(0, 2, s + 1)[:-1].expand(r, s) + 1 / s
    deltas = torch.full((r, s), 2.0 / s)
    out = composite(torch.full((r, s), sigma), torch.ones(r, s, 3) * 0.25, deltas, depths, torch.zeros(r, 3))
    expected_opacity = 1 - math.exp(-sigma * 2.0)
    torch.testing.assert_close(out["opacity"], torch.full((r,), expected_opacity), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["rgb"], torch.full((r, 3), 0.25 * expected_opacity), rtol=1e-4, atol=1e-5)


def test_empty_field_shows_the_background_and_rays_that_miss_too():
    bg = torch.rand(3, 3)
    o = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 3.0], [0.0, 9.0, 3.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    out = render_rays(lambda p, v: {"density": torch.zeros(len(p)), "rgb": torch.ones(len(p), 3)}, o, d, bg, 1.0, 16,
                      False)
    torch.testing.assert_close(out["rgb"], bg)
    dense = render_rays(lambda p, v: {"density": torch.full((len(p),), 1e4), "rgb": torch.ones(len(p), 3)}, o, d, bg,
                        1.0, 16, False)
    torch.testing.assert_close(dense["rgb"][:2], torch.ones(2, 3))
    torch.testing.assert_close(dense["rgb"][2], bg[2])  # the third ray misses the box


def test_samples_stay_inside_the_box():
    o = torch.tensor([[0.3, -0.2, 2.5]]).repeat(100, 1)
    d = torch.nn.functional.normalize(torch.tensor([[0.0, 0.0, -1.0]]) + 0.2 * torch.randn(100, 3), dim=-1)
    points, depths, deltas = sample_along_rays(o, d, 1.0, 32, perturb=True)
    hit = deltas.sum(-1) > 0
    assert (points[hit].abs() <= 1.0 + 1e-5).all()
    assert (depths[:, 1:] >= depths[:, :-1]).all()


def test_projection_and_pixel_rays_agree():
    rot = euler_to_matrix(np.radians([[5.0, -12.0, 3.0]]))
    c2w = head_pose_to_c2w(rot, np.array([[0.01, 0.02, -0.9]]))
    point = np.array([[[0.03, -0.04, 0.08]]])
    focal, cx, cy = 300.0, 64.0, 64.0
    uv = project_points(point, c2w, focal, cx, cy)[0, 0]
    pixel = torch.tensor([[math.floor(uv[0]), math.floor(uv[1])]])
    o, d = pixel_rays(torch.tensor(c2w[0], dtype=torch.float64), pixel, focal, cx, cy)
    # move the pixel centre onto the exact projection: the ray must pass within 1 px of the point
    to_point = torch.tensor(point[0, 0]) - o[0]
    off_axis = (to_point - (to_point @ d[0]) * d[0]).norm()
    assert off_axis < to_point.norm() / focal * 1.0


def test_audio_net_reduces_a_window_to_one_embedding():
    net = AudioNet(in_dim=80, window=16, out_dim=32)
    assert net(torch.randn(5, 16, 80)).shape == (5, 32)


def test_head_nerf_renders_conditioned_rays():
    enc = TriPlaneHashEncoding(num_levels=3, base_resolution=8, max_resolution=32)
    net = HeadNeRF(enc, audio_in_dim=80, audio_window=16, eye_dim=7, num_samples=8)
    o = torch.tensor([[0.0, 0.0, 3.6]]).repeat(10, 1)
    d = torch.nn.functional.normalize(torch.tensor([[0.0, 0.0, -1.0]]) + 0.1 * torch.randn(10, 3), dim=-1)
    out = net.render(o, d, torch.rand(10, 3), torch.randn(16, 80), torch.rand(7))
    assert out["rgb"].shape == (10, 3) and ((out["rgb"] >= 0) & (out["rgb"] <= 1)).all()
    assert out["weights"].shape == (10, 8)
    assert set(map(id, net.grid_parameters())).isdisjoint(map(id, net.network_parameters()))
