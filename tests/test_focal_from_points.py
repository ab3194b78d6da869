"""The focal measured on tracked head points (synctalk.stabilizer.focal_from_points) and its perspective check."""
import numpy as np

from synctalk.stabilizer.focal_from_points import fit_focal, image_positions, measure_focal
from synctalk.stabilizer.options import FocalPointsOptions
from synctalk.stabilizer.perspective_check import perspective_response, warp_points

TRUE_FOCAL, SIZE = 1200.0, 512


def _euler(yaw, pitch, roll):
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


def _head(frames=40, points=80, motion_deg=15.0, seed=0):
    """Points on the front of a head-sized ellipsoid (P, 3) m, turning: rotations (N, 3, 3), translations (N, 3) m
    (0.8 m away), and the random generator after drawing them."""
    rng = np.random.default_rng(seed)
    theta, phi = rng.uniform(-1.2, 1.2, points), rng.uniform(-0.9, 0.9, points)
    head = np.stack([0.08 * np.sin(theta) * np.cos(phi), 0.11 * np.sin(phi), 0.09 * np.cos(theta) * np.cos(phi)], 1)
    t = np.linspace(0, 2 * np.pi, frames)
    a = np.radians(motion_deg)
    rotation = np.stack([_euler(a * np.sin(k), 0.5 * a * np.sin(2 * k + 1), 0.2 * a * np.cos(k)) for k in t])
    translation = np.stack([0.01 * np.sin(t), 0.005 * np.cos(t), np.full(frames, 0.8)], 1)
    return head, rotation, translation, rng


def _project(points, rotation, translation, focal):
    """(N, P, 2) px and (N, P) depths of the points (P, 3) under the poses, filmed at ``focal``."""
    cam = np.einsum("nab,pb->npa", rotation, points) + translation[:, None]
    return focal * cam[..., :2] / cam[..., 2:] + SIZE / 2, cam[..., 2]


def _scene(frames=40, points=80, motion_deg=15.0, noise_px=0.1, seed=0):
    """The head of :func:`_head` filmed at TRUE_FOCAL, and the start a landmark fit would give at 900 px:
    translations scaled so the head keeps its size, points flat at its depth."""
    head, rotation, translation, rng = _head(frames, points, motion_deg, seed)
    filmed = _project(head, rotation, translation, TRUE_FOCAL)[0]
    tracks = filmed + rng.normal(0, noise_px, filmed.shape)
    start_focal, ref = 900.0, 0
    start_t = translation * start_focal / TRUE_FOCAL
    rays = np.concatenate([(tracks[ref] - SIZE / 2) / start_focal, np.ones((points, 1))], 1) * start_t[ref, 2]
    start_points = (rays - start_t[ref]) @ rotation[ref]
    return tracks, np.ones((frames, points), bool), start_points, rotation, start_t, start_focal, ref


def test_bundle_adjustment_with_a_free_focal_finds_the_camera_focal():
    tracks, visible, points, rotation, translation, focal, ref = _scene()
    start = image_positions(translation, focal)
    fit = fit_focal(tracks, visible, points, rotation, start, 1 / focal, SIZE / 2, SIZE / 2, ref)
    assert abs(fit.focal / TRUE_FOCAL - 1) < 0.01 and fit.rms_px < 0.15
    assert 0 < fit.inverse_focal_std < 0.01 * fit.inverse_focal
    assert np.allclose(fit.rotation[ref], rotation[ref]) and np.allclose(fit.position[ref], start[ref])
    assert np.allclose(image_positions(fit.translation, fit.focal), fit.position)


def test_measured_focal_is_used_only_when_the_motion_shows_perspective():
    opts = FocalPointsOptions(frames=30, rounds=2, iterations=25)
    moving = measure_focal(*_scene()[:5], *_scene()[5:6], SIZE / 2, SIZE / 2, 0, opts)
    assert moving.used and not moving.reasons and abs(moving.focal / TRUE_FOCAL - 1) < 0.02
    assert len(moving.halves) == 2 and moving.halves_difference_pct < 5 and moving.frames == 30
    assert len(moving.parts) == 6 and moving.parts_std_pct < 1.5
    still = _scene(motion_deg=0.3, noise_px=0.3)
    rigid = measure_focal(*still[:6], SIZE / 2, SIZE / 2, 0, opts)
    assert not rigid.used and any("standard deviation" in r for r in rigid.reasons)
    report = rigid.to_dict()
    assert report["focal_points_used"] is False and report["focal_points_rejected"] == rigid.reasons


def test_rigid_warp_films_the_head_with_another_focal_and_the_measured_focal_follows_it():
    """The tracks warped to 1.45 x the focal are the head filmed at 1.45 x the focal from a camera moved back by
    0.45 x the face centre's depth, every point (not only those on a face mesh); the focal measured on warped tracks
    follows the whole change (gain 1), from the same start."""
    tracks, visible, start, rotation, start_t, start_focal, ref = _scene(noise_px=0.0)
    head, _, translation, _ = _head()
    filmed, depth = _project(head, rotation, translation, TRUE_FOCAL)
    assert np.allclose(filmed, tracks)
    centre = np.full(40, 0.8)
    moved_back = translation + np.array([0.0, 0.0, 0.45 * 0.8])
    expected = _project(head, rotation, moved_back, 1.45 * TRUE_FOCAL)[0]
    assert np.allclose(warp_points(tracks, depth, 1.45, centre[:, None], SIZE / 2, SIZE / 2), expected, atol=1e-9)
    assert np.allclose(warp_points(tracks, depth, 1.0, centre[:, None], SIZE / 2, SIZE / 2), tracks)
    opts = FocalPointsOptions(frames=40, rounds=1, iterations=40, check_halves=False, check_parts=False)
    ratios = (0.7, 1.0, 1.45)
    found = [measure_focal(warp_points(tracks, depth, r, centre[:, None], SIZE / 2, SIZE / 2), visible, start,
                           rotation, start_t, start_focal, SIZE / 2, SIZE / 2, ref, opts).focal for r in ratios]
    assert abs(perspective_response([r * TRUE_FOCAL for r in ratios], found)["gain"] - 1) < 0.02


def test_a_start_far_from_the_truth_converges():
    tracks, visible, points, rotation, translation, focal, ref = _scene()
    for far in (2000.0, 20000.0):  # the second: a start with hardly any perspective
        wide = image_positions(translation * far / focal, far)
        fit = fit_focal(tracks, visible, points * 1.0, rotation, wide, 1 / far, SIZE / 2, SIZE / 2, ref)
        assert abs(fit.focal / TRUE_FOCAL - 1) < 0.01


def test_tracks_whose_error_differs_over_the_head_are_not_used():
    """One side of the head tracked with a tenth of its motion lost (as flow on compressed, texture-poor skin that
    sticks to the codec's still blocks): the focal moves, the normal matrix still says it is sure, the parts of the
    head disagree and the focal is not used."""
    tracks, visible, points, rotation, translation, focal, ref = _scene()
    opts = FocalPointsOptions(frames=40, rounds=2, iterations=25, check_halves=False)
    clean = measure_focal(tracks, visible, points, rotation, translation, focal, SIZE / 2, SIZE / 2, ref, opts)
    sticky = tracks.copy()
    left = tracks[ref, :, 0] < np.median(tracks[ref, :, 0])
    sticky[:, left] = tracks[ref, left] + 0.9 * (tracks[:, left] - tracks[ref, left])
    found = measure_focal(sticky, visible, points, rotation, translation, focal, SIZE / 2, SIZE / 2, ref, opts)
    assert clean.used and clean.parts_std_pct < 1.5
    assert abs(found.focal / clean.focal - 1) > 0.03 and found.std_pct < 1.0
    assert not found.used and found.parts_std_pct > 3 * clean.parts_std_pct
    assert any("parts of the head" in r for r in found.reasons)
    assert found.to_dict()["focal_points_parts_std_pct"] == round(found.parts_std_pct, 2)


def test_a_step_eliminating_the_frames_or_the_points_solves_the_whole_system():
    """The damped normal equations solved by a Schur complement over the frames (few points) or over the points (few
    frames) give the step a dense solve of the whole system gives."""
    import torch

    from synctalk.stabilizer.focal_from_points import _normal_equations, _Problem, _solve

    for frames, points in [(30, 12), (6, 40)]:  # 3P <= 6N: the frames are eliminated; else the points
        tracks, visible, pts, rotation, translation, focal, ref = _scene(frames=frames, points=points, noise_px=0.3)
        visible[:, 0] = False  # a point no observation constrains
        f = torch.tensor(focal, dtype=torch.float64)
        free = torch.ones(frames, dtype=torch.float64)
        free[ref] = 0.0
        normal = _normal_equations(_Problem(tracks, SIZE / 2, SIZE / 2, 1.0), torch.as_tensor(rotation),
                                   torch.as_tensor(image_positions(translation, focal)), torch.as_tensor(pts), 1 / f,
                                   torch.as_tensor(visible, dtype=torch.float64), free).damped(1e-3)
        n6, p3 = 6 * frames, 3 * points
        whole = torch.zeros(n6 + p3 + 1, n6 + p3 + 1, dtype=torch.float64)
        whole[:n6, :n6] = torch.block_diag(*normal.h_cc)
        whole[:n6, n6:-1] = normal.h_cp.permute(0, 2, 1, 3).reshape(n6, p3)
        whole[:n6, -1] = normal.h_cf.reshape(-1)
        whole[n6:-1, n6:-1] = torch.block_diag(*normal.h_pp)
        whole[n6:-1, -1] = normal.h_pf.reshape(-1)
        whole[-1, -1] = normal.h_ff
        whole = torch.triu(whole) + torch.triu(whole, 1).T
        step = torch.linalg.solve(whole, torch.cat([normal.g_c.reshape(-1), normal.g_p.reshape(-1), normal.g_f[None]]))
        d_c, d_p, d_f = _solve(normal)
        assert normal.split()[0] == (6 * frames < 3 * points)
        torch.testing.assert_close(torch.cat([d_c.reshape(-1), d_p.reshape(-1), d_f[None]]), step, rtol=1e-7, atol=1e-9)
        assert d_c[ref].abs().max() < 1e-12 and d_p[0].abs().max() < 1e-12  # the fixed frame and the unseen point stay


def test_normal_equations_hold_the_gradient_of_the_cost():
    """``g_*`` of the normal equations are minus the gradient of the cost over the rotation increments, u, d, the
    points and the inverse focal (residuals under the Huber threshold: the cost is their half squared sum)."""
    import torch

    from synctalk.stabilizer.focal_from_points import _normal_equations, _Problem, _rotate

    tracks, visible, pts, rotation, translation, focal, ref = _scene(frames=8, points=12, noise_px=0.2)
    problem = _Problem(tracks, SIZE / 2, SIZE / 2, 100.0)
    rot, pos = torch.as_tensor(rotation), torch.as_tensor(image_positions(translation, focal))
    pts, kappa = torch.as_tensor(pts), torch.tensor(1 / focal, dtype=torch.float64)
    w = torch.as_tensor(visible, dtype=torch.float64)
    normal = _normal_equations(problem, rot, pos, pts, kappa, w, torch.ones(8, dtype=torch.float64))
    d_c = torch.zeros(8, 6, dtype=torch.float64, requires_grad=True)
    d_p = torch.zeros_like(pts, requires_grad=True)
    d_k = torch.zeros((), dtype=torch.float64, requires_grad=True)
    r = problem.residuals(_rotate(d_c[:, :3] + 1e-30) @ rot, pos + d_c[:, 3:], pts + d_p, kappa + d_k)
    (0.5 * (r ** 2).sum()).backward()
    torch.testing.assert_close(-d_c.grad, normal.g_c, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(-d_p.grad, normal.g_p, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(-d_k.grad, normal.g_f, rtol=1e-6, atol=1e-9)


def test_tracks_with_an_inverted_perspective_are_measured_and_refused():
    """Tracks whose near parts are magnified less than the far ones (a head that deforms as it turns can look so):
    the fit reaches the negative inverse focal from a start at 900 px, and the stage does not use it."""
    import torch

    from synctalk.stabilizer.focal_from_points import _Problem

    head, rotation, translation, _ = _head()
    position = torch.as_tensor(image_positions(translation, TRUE_FOCAL))
    kappa = -0.2 / TRUE_FOCAL
    tracks = (_Problem(np.zeros((40, 80, 2)), SIZE / 2, SIZE / 2, 1.0).project(
        torch.as_tensor(rotation), position, torch.as_tensor(head), kappa)[0] + SIZE / 2).numpy()
    start = _scene()[2:]
    opts = FocalPointsOptions(frames=40, rounds=2, iterations=40, check_parts=False)
    found = measure_focal(tracks, np.ones((40, 80), bool), *start[:4], SIZE / 2, SIZE / 2, start[4], opts)
    assert abs(found.inverse_focal / kappa - 1) < 0.02 and found.focal < 0
    assert not found.used and any("inverted perspective" in r for r in found.reasons)
    report = found.to_dict()
    assert report["focal_points"] is None and abs(report["focal_points_perspective"] - (-0.2 * 900 / TRUE_FOCAL)) < 0.01
