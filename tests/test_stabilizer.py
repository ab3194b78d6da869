"""Head-Sync Stabilizer: face models, batched focal search, point tracking and bundle adjustment."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from synctalk.errors import UserError
from synctalk.face.face_model import (RIGID_68, FaceModel, bfm_face_model, read_template, subject_face_model,
                                      template_face_model)
from synctalk.geometry import euler_to_matrix
from synctalk.stabilizer.bundle_adjustment import find_outliers, run_bundle_adjustment
from synctalk.stabilizer.checks import focal_at_range_end
from synctalk.stabilizer.focal_search import focal_candidates, search_focal
from synctalk.stabilizer.head_tracker import fit_landmarks
from synctalk.stabilizer.options import BundleAdjustmentOptions, FlowConfig, PointsOptions, TrackerConfig
from synctalk.stabilizer.point_tracker import head_region, select_keypoints
from synctalk.stabilizer.pose_convention import c2w_from_cv_poses, jitter, rotation_angles_deg
from synctalk.stabilizer.truth import pose_errors

FOCAL, CX, CY = 1300.0, 256.0, 256.0


def focal_search_px(model, lms: np.ndarray, cx: float, cy: float, start: float, stop: float, step: float, **tracker):
    """:func:`search_focal` over ``start..stop`` px with the ``tracker`` settings given (no refinement unless
    ``refine_points`` is given)."""
    tracker.setdefault("refine_points", 0)
    return search_focal(model, lms, cx, cy, TrackerConfig(**tracker), focal_range=(start, stop, step))


def random_head(seed: int = 0, points: int = 68) -> np.ndarray:
    """A face-sized rigid point cloud in the head frame (metres, z out of the face)."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-0.07, 0.07, (points, 2))
    z = 0.07 - 6.0 * (xy ** 2).sum(1) + rng.normal(0, 0.004, points)  # a rounded face, nose forward
    return np.concatenate([xy, z[:, None]], 1)


def head_motion(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Head -> OpenCV camera rotations (N, 3, 3) and translations (N, 3) of a talking head 0.9 m away."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, n)
    euler = np.radians(np.stack([6 * np.sin(t + rng.uniform(0, 6)), 12 * np.sin(1.3 * t), 4 * np.sin(0.7 * t)], -1))
    flip = np.diag([1.0, -1.0, -1.0])  # head axes -> camera axes (the face looks at the camera)
    rot = flip @ euler_to_matrix(euler)
    trans = np.stack([0.01 * np.sin(t), 0.005 * np.cos(t), 0.9 + 0.01 * np.sin(0.5 * t)], -1)
    return rot, trans


def project_np(points: np.ndarray, rot: np.ndarray, trans: np.ndarray, focal: float) -> np.ndarray:
    cam = np.einsum("nij,pj->npi", rot, points) + trans[:, None]
    return np.stack([focal * cam[..., 0] / cam[..., 2] + CX, focal * cam[..., 1] / cam[..., 2] + CY], -1)


def test_focal_search_is_one_batched_fit_and_finds_the_focal():
    head = random_head()
    rot, trans = head_motion(40)
    lms = project_np(head, rot, trans, FOCAL) + np.random.default_rng(2).normal(0, 0.5, (40, 68, 2))
    model = FaceModel(head, np.zeros((68, 3, 0)), np.zeros((68, 3, 0)), "exact")
    grid = focal_candidates(800, 1800, 100)
    fit = fit_landmarks(model, lms[::4], grid, CX, CY, steps=300)
    assert fit.rotation.shape == (len(grid), 10, 3, 3) and fit.error_px.shape == (len(grid), 10)
    assert abs(grid[np.argmin(fit.rms_px)] - FOCAL) <= 100  # within one grid step
    search = focal_search_px(model, lms, CX, CY, 800, 1800, 100, every_k=4, steps=300, refine_points=7,
                             min_search_frames=10)
    assert search.frames == 10 and abs(search.focal - FOCAL) / FOCAL < 0.03
    assert search.rms_px.min() < 1.0 < search.rms_px.max()  # the curve has a clear minimum
    # the recovered poses: relative rotations within a fraction of a degree
    full = fit_landmarks(model, lms, [search.focal], CX, CY, steps=300)
    ang = np.degrees(np.arccos(np.clip((np.einsum("nij,nij->n", full.rotation[0], rot) - 1) / 2, -1, 1)))
    assert np.median(ang) < 0.5


def test_focal_search_on_short_clips_and_rigid_landmarks():
    head = random_head()
    rot, trans = head_motion(40)
    lms = project_np(head, rot, trans, FOCAL) + np.random.default_rng(2).normal(0, 0.5, (40, 68, 2))
    # expressions the model cannot explain move the mouth and brows (not the rigid points)
    moving = np.setdiff1d(np.arange(68), RIGID_68)
    lms[:, moving] += np.random.default_rng(3).normal(0, 3.0, (40, 1, 2)) * np.linspace(0, 1, len(moving))[:, None]
    model = FaceModel(head, np.zeros((68, 3, 0)), np.zeros((68, 3, 0)), "exact")
    search = focal_search_px(model, lms, CX, CY, 800, 1800, 100, every_k=10, steps=300, min_search_frames=20,
                             focal_landmarks="rigid")
    assert search.frames == 20  # every_k 10 would fit 4 frames of the 40: lowered to 2
    assert abs(search.grid_best - FOCAL) <= 100 and not focal_at_range_end(search)
    short = focal_search_px(model, lms, CX, CY, 600, 1000, 100, steps=300, min_search_frames=20,
                            focal_landmarks="rigid", refine_points=3)
    assert short.grid_best == 1000 and focal_at_range_end(short)  # the truth (1300) is beyond the range
    # a jaw contour that slides (as a silhouette does) pulls the focal off; "inner" leaves the contour out
    sliding = lms.copy()
    sliding[:, :17] += np.random.default_rng(4).normal(0, 4.0, (40, 17, 2))
    inner = focal_search_px(model, sliding, CX, CY, 800, 1800, 100, every_k=10, steps=300, min_search_frames=20,
                            focal_landmarks="inner")
    assert abs(inner.grid_best - FOCAL) <= 100
    with pytest.raises(UserError, match="68-point"):
        focal_search_px(model.subset(list(range(30))), lms[:, :30], CX, CY, 800, 1800, 100, focal_landmarks="rigid")


def test_pose_errors_ignore_the_head_frame_and_scale_but_not_motion():
    rot, trans = head_motion(30)
    truth = c2w_from_cv_poses(rot, trans)
    # the same motion seen with another head frame (rotated, origin moved) and another global scale
    g = euler_to_matrix(np.radians([[5.0, -8.0, 3.0]]))[0]
    offset = np.array([0.01, -0.02, 0.05])
    other = c2w_from_cv_poses(rot @ g, 0.9 * (trans - np.einsum("nij,j->ni", rot @ g, offset)))
    same = pose_errors(other, truth)
    assert same["rotation_median_deg"] < 1e-3 and same["translation_median_mm"] < 1e-3
    assert same["scale"] == pytest.approx(1 / 0.9, rel=1e-4)
    tilt = euler_to_matrix(np.radians(np.random.default_rng(0).normal(0, 1.0, (30, 3))))
    jolt = np.random.default_rng(1).normal(0, 0.003, trans.shape)  # 3 mm per axis and frame
    wrong = pose_errors(c2w_from_cv_poses(tilt @ rot, trans + jolt), truth)
    assert 0.5 < wrong["rotation_median_deg"] < 3.0 and wrong["translation_median_mm"] > 1.0


def test_template_face_model_reads_metres_or_millimetres(tmp_path):
    head = random_head()
    head[36], head[45] = [-0.045, 0.03, 0.04], [0.045, 0.03, 0.04]
    np.save(tmp_path / "t.npy", head * 1000)  # millimetres
    np.savetxt(tmp_path / "t.txt", head)
    np.testing.assert_allclose(read_template(tmp_path / "t.npy"), head)
    np.testing.assert_allclose(read_template(tmp_path / "t.txt"), head)
    mesh = np.random.default_rng(0).normal(0, 40, (6, 478, 3)) + [256, 256, 0]
    mesh[:, 33], mesh[:, 263] = [196, 240, 0], [316, 240, 0]
    model = template_face_model(tmp_path / "t.npy", mesh, num_exp=3)
    assert model.num_id == 0 and model.num_exp == 3 and model.name == "template"
    # no identity coefficients: the fit still runs (a mean over no coefficients is not a NaN loss)
    lms = project_np(model.mean.numpy(), *head_motion(4), FOCAL)
    fit = fit_landmarks(model, lms, [FOCAL], CX, CY, steps=100)
    assert np.isfinite(fit.error_px).all() and fit.error_px.mean() < 1.0
    np.save(tmp_path / "bad.npy", np.zeros((10, 3)))
    with pytest.raises(UserError, match="68 x 3"):
        read_template(tmp_path / "bad.npy")
    with pytest.raises(UserError, match="face_model.template"):
        read_template(None)
    with pytest.raises(UserError, match="does not exist"):
        read_template(tmp_path / "missing.npy")


def test_focal_range_and_fit_errors():
    with pytest.raises(UserError, match="no candidates"):
        focal_candidates(1000, 500, 50)
    with pytest.raises(UserError, match="no candidates"):
        focal_candidates(500, 1000, 0)
    model = FaceModel(random_head(), np.zeros((68, 3, 0)), np.zeros((68, 3, 0)), "exact")
    with pytest.raises(UserError, match="no candidates"):
        fit_landmarks(model, np.zeros((2, 68, 2)), [], CX, CY)


def test_subject_face_model_from_facemesh_points():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 40, (478, 3)) + [256, 256, 0]
    base[33], base[263] = [196, 240, 0], [316, 240, 0]  # outer eye corners 120 px apart
    mesh = np.stack([base + rng.normal(0, 0.5, base.shape) for _ in range(12)])
    mesh[:, :, 0] = mesh[:, :, 0] * np.linspace(0.9, 1.1, 12)[:, None] + 10  # scale and shift per frame
    model = subject_face_model(mesh, num_exp=4)
    assert model.mean.shape == (68, 3) and model.num_exp == 4 and model.num_id == 204
    out = model(torch.zeros(2, model.num_id), torch.zeros(2, 3, model.num_exp))
    assert out.shape == (2, 3, 68, 3)
    with pytest.raises(UserError, match="bfm_dir"):
        bfm_face_model(None)


def test_bfm_loader_reads_the_standard_files(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    v, n_id, n_exp = 300, 20, 6
    shape_mu = rng.normal(0, 40000, 3 * v)  # micrometres, as in 01_MorphableModel.mat
    lms = np.arange(0, 68 * 4, 4)
    shape_mu[3 * 36:3 * 36 + 3] = [-45000, 0, 0]
    shape_mu[3 * 45:3 * 45 + 3] = [45000, 0, 0]
    lms[36], lms[45] = 36, 45
    savemat(tmp_path / "01_MorphableModel.mat", {"shapeMU": shape_mu[:, None], "shapePC": rng.normal(size=(3 * v, n_id)),
                                                 "shapeEV": np.ones((n_id, 1))})
    trim = np.arange(1, v + 1)  # 1-based, every vertex kept
    savemat(tmp_path / "BFM_exp_idx.mat", {"trimIndex": trim[:, None]})
    with open(tmp_path / "Exp_Pca.bin", "wb") as f:
        f.write(np.int32(n_exp).tobytes())
        f.write(np.zeros(3 * v, np.float32).tobytes())
        f.write(rng.normal(size=(n_exp, 3 * v)).astype(np.float32).tobytes())
    np.savetxt(tmp_path / "std_exp.txt", np.ones(n_exp))
    np.savetxt(tmp_path / "landmarks_68.txt", lms, fmt="%d")
    model = bfm_face_model(tmp_path)
    assert model.num_id == n_id and model.num_exp == n_exp
    eyes = model.mean[45] - model.mean[36]
    assert float(eyes.norm()) == pytest.approx(0.09, rel=1e-4)  # micrometres -> metres
    (tmp_path / "std_exp.txt").unlink()
    with pytest.raises(UserError, match="std_exp.txt"):
        bfm_face_model(tmp_path)


def test_upper_head_region_drops_the_jaw():
    mask = np.ones((100, 100), bool)
    lms = np.zeros((68, 2))
    lms[:, 0], lms[:, 1] = 50, 40
    lms[2], lms[14] = [10, 60], [90, 50]  # a tilted line through the jaw contour
    full = head_region(mask, lms, 0)
    upper = head_region(mask, lms, 0, upper=True)
    assert full[95, 50] and not upper[95, 50] and upper[20, 50]
    assert upper[58, 12] and not upper[62, 12] and upper[48, 88] and not upper[52, 88]


def test_keypoint_rules_pick_minima_or_maxima_apart():
    score = np.random.default_rng(0).uniform(0, 1, (60, 60)).astype(np.float32)
    region = np.zeros((60, 60), bool)
    region[10:50, 10:50] = True
    stable = select_keypoints(score, region, "stable", 5, 5.0, 20)
    salient = select_keypoints(score, region, "salient", 5, 5.0, 20)
    assert len(stable) == len(salient) == 20
    s_vals = score[stable[:, 1].astype(int), stable[:, 0].astype(int)]
    m_vals = score[salient[:, 1].astype(int), salient[:, 0].astype(int)]
    assert s_vals.max() < m_vals.min()
    d = np.linalg.norm(stable[:, None] - stable[None], axis=-1) + np.eye(20) * 99
    assert d.min() >= 5.0 and region[stable[:, 1].astype(int), stable[:, 0].astype(int)].all()


def test_patch_flow_has_no_smoothness_term_and_follows_a_smooth_motion(tmp_path, monkeypatch):
    """``flow_patch_px`` (the focal's own tracks, ``tracker.focal_points.flow_patch_px``): DIS with larger patches
    every 2 px and no variational refinement; it follows a smooth motion that varies over the image (a 2% zoom, as
    a head nearing the camera) as closely as the preset does, and the tracker scales the patch with the width."""
    import cv2

    import synctalk.stabilizer.point_tracker as point_tracker
    from synctalk.data.layout import DatasetLayout
    from synctalk.synthetic.subject import SyntheticSpec, generate

    rng = np.random.default_rng(0)
    size, zoom, centre = 160, 1.02, 80.0
    texture = cv2.GaussianBlur(rng.normal(128, 40, (size, size)).astype(np.float32), (0, 0), 1.5)
    warp = np.float32([[zoom, 0, centre * (1 - zoom)], [0, zoom, centre * (1 - zoom)]])
    a = np.clip(texture, 0, 255).astype(np.uint8)
    b = np.clip(cv2.warpAffine(texture, warp, (size, size), flags=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)
    ys, xs = np.mgrid[0:size, 0:size]
    expected = (np.stack([xs, ys], -1) - centre) * (zoom - 1)  # (H, W, 2) px
    inner = (slice(30, -30), slice(30, -30))
    preset, patches = point_tracker.DenseFlow(), point_tracker.DenseFlow(patch_px=16)
    assert patches._dis.getPatchSize() == 16 and patches._dis.getPatchStride() == 2
    assert patches._dis.getVariationalRefinementIterations() == 0
    assert preset._dis.getPatchSize() == 8 and preset._dis.getVariationalRefinementIterations() > 0
    for flow in (preset, patches):
        error = np.abs(flow(a, b)[inner] - expected[inner])
        assert error.mean() < 0.05 and error.max() < 0.2

    made = []

    class Recording(point_tracker.DenseFlow):
        def __init__(self, fine=True, patch_px=0):
            made.append((fine, patch_px))
            super().__init__(fine, patch_px)

    monkeypatch.setattr(point_tracker, "DenseFlow", Recording)
    n = 4
    root = generate(SyntheticSpec(num_frames=n, size=128, seed=4), tmp_path / "s", progress=False)
    layout = DatasetLayout(root)
    lms = np.stack([np.loadtxt(layout.landmarks(i)) for i in range(n)])
    tracks = point_tracker.track_head_points(
        [layout.frame(i) for i in range(n)], [layout.head_mask(i) for i in range(n)], lms, 0,
        PointsOptions(min_distance=2, min_points=5, flow_patch_px=16, workers=1), px_scale=128 / 512, progress=False)
    assert set(made) == {(True, 4), (False, 0)} and tracks.visible[1:].mean() > 0.5


@pytest.mark.slow
def test_bundle_adjustment_beats_the_landmark_poses():
    rng = np.random.default_rng(3)
    n = 50
    points = random_head(4, points=150)
    rot, trans = head_motion(n, seed=5)
    tracks = project_np(points, rot, trans, FOCAL) + rng.normal(0, 0.3, (n, 150, 2))
    visible = rng.uniform(size=(n, 150)) > 0.1
    # noisy initial poses, as a landmark fit gives them, and noisy initial points
    noise = euler_to_matrix(np.radians(rng.normal(0, 1.0, (n, 3))))
    rot0, trans0 = noise @ rot, trans + rng.normal(0, 0.004, (n, 3))
    rot0[0], trans0[0] = rot[0], trans[0]  # the reference frame
    init = points + rng.normal(0, 0.004, points.shape)
    ba = run_bundle_adjustment(tracks, visible, init, rot0, trans0, FOCAL, CX, CY, reference=0,
                               opts=BundleAdjustmentOptions(points_steps=200, joint_steps=2000, joint_lr=3e-4),
                               progress=False)
    assert ba.error_px["joint"].mean() < ba.error_px["points"].mean() < ba.error_px["initial"].mean()
    assert ba.error_px["joint"].mean() < 0.6

    def rot_err(r):
        return np.degrees(np.arccos(np.clip((np.einsum("nij,nij->n", r, rot) - 1) / 2, -1, 1)))

    assert np.median(rot_err(ba.rotation)) < 0.3 < np.median(rot_err(rot0))
    assert jitter(ba.rotation, ba.translation)["rotation_deg"] < jitter(rot0, trans0)["rotation_deg"]
    assert rotation_angles_deg(ba.rotation).shape == (n, 3)
    # drifting tracks (an occluding contour, a moving cheek) are found and dropped
    drift = tracks.copy()
    drift[:, :12] += np.linspace(0, 8, n)[:, None, None]
    kept = run_bundle_adjustment(drift, visible, init, rot0, trans0, FOCAL, CX, CY, reference=0,
                                 opts=BundleAdjustmentOptions(points_steps=200, joint_steps=1000, joint_lr=3e-4),
                                 progress=False)
    assert not kept.inliers[n // 2:, :12].any() and kept.inliers[:, 12:].mean() > 0.8
    naive = run_bundle_adjustment(drift, visible, init, rot0, trans0, FOCAL, CX, CY, reference=0,
                                  opts=BundleAdjustmentOptions(points_steps=200, joint_steps=1000, joint_lr=3e-4,
                                                               outlier_factor=0, robust="none"), progress=False)
    assert np.median(rot_err(kept.rotation)) < np.median(rot_err(naive.rotation))
    ba = run_bundle_adjustment(tracks, visible, init, rot0, trans0, FOCAL, CX, CY, reference=0,
                               opts=BundleAdjustmentOptions(points_steps=20, joint_steps=20, robust="huber",
                                                            smoothness=0.1, batch_frames=8), progress=False)
    assert np.isfinite(ba.rotation).all()
    bad = init.copy()
    bad[3] = np.nan  # e.g. a keypoint back-projected from a degenerate fit
    with pytest.raises(UserError, match="diverged"):
        run_bundle_adjustment(tracks, visible, bad, rot0, trans0, FOCAL, CX, CY, reference=0,
                              opts=BundleAdjustmentOptions(points_steps=5, joint_steps=0), progress=False)
    with pytest.raises(UserError, match="diverged"):  # steps far too large: the error grows instead of falling
        run_bundle_adjustment(tracks, visible, init, rot0, trans0, FOCAL, CX, CY, reference=0,
                              opts=BundleAdjustmentOptions(points_steps=50, joint_steps=0, points_lr=10.0), progress=False)


def test_outliers_are_bad_points_or_bad_observations():
    residual = np.full((10, 5), 1.0)
    residual[:, 4] = 5.0  # a bad point
    residual[3, 1] = 9.0  # one bad observation
    visible = np.ones((10, 5), bool)
    visible[7, 2] = False
    out = find_outliers(residual, visible, 2.0)
    assert out[:, 4].all() and out[3, 1] and out.sum() == 11


@pytest.mark.slow
def test_stabilizer_accuracy_on_the_synthetic_subject(tmp_path):
    """The accuracy protocol of benchmarks/stabilizer.py at the true focal: true landmarks with 1 px noise, the
    subject's true shape as the face model; bundle adjustment must beat the landmark fit (the benchmark, with
    antialiasing and the focal search: rotation 0.85 -> 0.21 deg)."""
    from synctalk.data.layout import DatasetLayout
    from synctalk.synthetic.subject import SyntheticSpec, generate
    from synctalk.stabilizer.pipeline import region_masks, stabilize
    from synctalk.face.face_model import TemplateFace
    from synctalk.face.landmark_detectors import FaceMesh
    from synctalk.stabilizer.options import StabilizerOptions

    n = 60
    spec = SyntheticSpec(num_frames=n, size=512, seed=0, antialias=1)
    root = generate(spec, tmp_path / "s", progress=False)
    layout = DatasetLayout(root)
    truth = np.load(root / "ground_truth.npz")
    lms = truth["landmarks_2d"][..., :2] + np.random.default_rng(0).normal(0, 1.0, truth["landmarks_2d"][..., :2].shape)
    mesh = FaceMesh().detect_files([layout.frame(i) for i in range(n)], progress=False)  # the expression components
    opts = StabilizerOptions(face_model=TemplateFace(template=str(root / "face_template.npy")))
    opts.tracker.focal.start = opts.tracker.focal.stop = 1350.0  # the true focal: poses only
    opts.tracker.refine_points = 0
    result = stabilize([layout.frame(i) for i in range(n)], region_masks(layout, n, "head"), mesh, lms, 512, 512,
                       spec.fps, opts, tmp_path / "stab", progress=False)
    landmarks = pose_errors(result["c2w_landmarks"], truth["c2w"])
    adjusted = pose_errors(result["c2w"], truth["c2w"])
    assert adjusted["rotation_median_deg"] < 0.5 and adjusted["rotation_median_deg"] < landmarks["rotation_median_deg"]
    assert adjusted["translation_median_pct"] < 1.0
    assert result["report"]["ba_inlier_fraction"] > 0.5


@pytest.mark.slow
def test_focal_step_sweep_is_a_multirun_with_a_report(run_cli, tmp_path):
    from synctalk.synthetic.subject import SyntheticSpec, generate
    from tests.conftest import make_video

    subject = generate(SyntheticSpec(num_frames=40, size=160, seed=3), tmp_path / "s", progress=False)
    video = make_video(subject, tmp_path / "clip.mp4", fps=25, frames=40)
    quick = ["tracker.steps=300", "tracker.refine_points=3", "preprocess.bundle_adjustment.points_steps=100",
             "preprocess.bundle_adjustment.joint_steps=300", "preprocess.points.min_points=10"]
    assert run_cli("preprocess", "-m", f"data.video={video}", f"data.root={tmp_path / 'ds'}",
                   "tracker.focal.step=100,50", f"preprocess.ground_truth={subject / 'ground_truth.npz'}", *quick) == 0
    sweep = sorted((run_cli.root / "outputs" / "preprocess" / "multiruns").iterdir())[-1]
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert {"focal", "landmark_rms_px", "ba_reprojection_px.joint", "jitter_bundle_adjustment.rotation_deg"} <= set(metrics)
        assert (sweep / job / "stabilizer" / "focal_curve.png").is_file()
        assert metrics["truth.focal"] == pytest.approx(1350 * 160 / 512)  # the synthetic subject's focal at 160 px
        assert abs(metrics["truth.focal_error_pct"]) < 40 and metrics["truth.bundle_adjustment.rotation_median_deg"] < 5
    steps = [json.loads((sweep / j / "stabilizer" / "focal_search.json").read_text())["candidates"] for j in "01"]
    assert len(steps[1]) > len(steps[0])  # step 50 tries about twice the candidates of step 100
    assert run_cli("report", str(sweep)) == 0
    table = (sweep / "report" / "report.md").read_text()
    assert "tracker.focal.step" in table and "2 of 2 runs finished" in table
    assert (sweep / "report" / "focal_curves.png").is_file() and (sweep / "report" / "metrics_per_value.png").is_file()


def test_cotracker_backend_tracks_the_chosen_keypoints(tmp_path, monkeypatch):
    """The CoTracker path with a stand-in predictor (the package is not on PyPI): queries at the reference
    frame, tracks and visibility read back in (frame, point, xy) order, points leaving the head dropped."""
    import importlib.machinery
    import sys
    import types

    from synctalk.data.layout import DatasetLayout
    from synctalk.synthetic.subject import SyntheticSpec, generate
    from synctalk.stabilizer.point_tracker import track_head_points

    n, ref = 12, 5
    root = generate(SyntheticSpec(num_frames=n, size=128, seed=4), tmp_path / "s", progress=False)
    layout = DatasetLayout(root)
    seen = {}

    class StandIn(torch.nn.Module):
        def __init__(self, checkpoint):
            super().__init__()
            seen["checkpoint"] = checkpoint

        def forward(self, video, queries, backward_tracking):
            seen["video"], seen["queries"], seen["backward"] = tuple(video.shape), queries.clone(), backward_tracking
            t = torch.arange(video.shape[1]).float() - queries[0, 0, 0]
            tracks = queries[0, None, :, 1:] + torch.stack([t, 0.5 * t], -1)[:, None, :]
            tracks[-1, :, 0] += 1000  # the last frame: every point leaves the image
            visible = torch.ones(tracks.shape[:2], dtype=torch.bool)
            visible[0, 0] = False
            return tracks[None], visible[None]

    package = types.ModuleType("cotracker")
    package.__spec__ = importlib.machinery.ModuleSpec("cotracker", None)
    predictor = types.ModuleType("cotracker.predictor")
    predictor.CoTrackerPredictor = StandIn
    monkeypatch.setitem(sys.modules, "cotracker", package)
    monkeypatch.setitem(sys.modules, "cotracker.predictor", predictor)
    (tmp_path / "ckpt.pth").write_bytes(b"x")
    lms = np.stack([np.loadtxt(layout.landmarks(i)) for i in range(n)])
    tracks = track_head_points([layout.frame(i) for i in range(n)], [layout.head_mask(i) for i in range(n)], lms, ref,
                               PointsOptions(min_distance=2, min_points=5),
                               FlowConfig(backend="cotracker", checkpoint=str(tmp_path / "ckpt.pth")), progress=False)
    p = tracks.points.shape[1]
    assert seen["video"] == (1, n, 3, 128, 128) and seen["backward"] and seen["checkpoint"] == str(tmp_path / "ckpt.pth")
    assert torch.all(seen["queries"][0, :, 0] == ref) and seen["queries"].shape == (1, p, 3)
    expected = tracks.points[ref][None] + np.stack([np.arange(n) - ref, 0.5 * (np.arange(n) - ref)], -1)[:, None]
    np.testing.assert_allclose(tracks.points[:-1], expected[:-1], atol=1e-4)
    assert tracks.visible[ref].all() and not tracks.visible[-1].any() and not tracks.visible[0, 0]
    assert tracks.visible[1:-1].mean() > 0.5 and np.isnan(tracks.fb_error).all()


# ----------------------------------------------------------------------------- canonical face, verdict, long videos

def another_human_face(seed: int = 0) -> np.ndarray:
    """(68, 3) metres: the canonical face made into another person's: 7% wider, 4% shorter, a 4 mm longer nose,
    plus 0.5 mm of random per-point shape (head axes)."""
    from synctalk.face.face_model import CANONICAL_FACE

    face = read_template(CANONICAL_FACE)
    face = face - face.mean(0)
    face[:, 0] *= 1.07
    face[:, 1] *= 0.96
    face[27:36, 2] += 0.004 * np.linspace(0.3, 1.0, 9)  # the nose bridge and tip come forward
    return face + np.random.default_rng(seed).normal(0, 0.0005, face.shape)


def test_canonical_face_is_metric_and_its_identity_is_bounded():
    from synctalk.face.face_model import CANONICAL_ID_BOUND, CANONICAL_ID_STEP, canonical_face_model

    mesh = np.random.default_rng(0).normal(0, 1, (12, 478, 3)) + np.linspace(0, 200, 478)[None, :, None]
    model = canonical_face_model(mesh, num_exp=3)
    assert model.name == "canonical" and model.num_id == 3 and model.num_exp == 3
    mean = model.mean.numpy()
    assert 0.085 < np.linalg.norm(mean[36] - mean[45]) < 0.095  # outer eye corners, metres
    assert mean[30, 2] - mean[[36, 45], 2].mean() > 0.03  # the nose tip stands in front of the eyes: true depth
    assert mean[30, 2] - mean[[0, 16], 2].mean() > 0.08  # and the face's sides lie far behind it
    # a face twice as deep cannot be matched: the depth scale stops at the bound
    rot, trans = head_motion(30)
    deep = mean * [1.0, 1.0, 2.0]
    lms = project_np(deep, rot, trans, FOCAL)
    fit = fit_landmarks(model.without_expressions(), lms, [FOCAL], CX, CY, steps=2000)
    assert np.abs(fit.id_coeff).max() <= CANONICAL_ID_BOUND + 1e-6
    assert fit.id_coeff[0, 2] == pytest.approx(CANONICAL_ID_BOUND, abs=1e-3)
    assert CANONICAL_ID_BOUND * CANONICAL_ID_STEP <= 0.1  # at most 10% per axis


@pytest.mark.slow
def test_canonical_focal_search_measures_another_persons_face():
    """The default face model on landmarks of a face that is not its own shape (with expressions it does not
    know and 1 px noise): an interior minimum near the true focal, on the whole clip and on each half. (The
    focal is only as good as the face's depth: a 3 mm lower chin gives +8% here, 1.5 mm of random shape
    per point +47%.)"""
    from synctalk.face.face_model import canonical_face_model
    from synctalk.stabilizer.checks import focal_half_agreement, focal_is_interior

    rng = np.random.default_rng(4)
    face = another_human_face()
    rot, trans = head_motion(80, seed=5)
    lms = project_np(face, rot, trans, FOCAL)
    mouth = np.arange(48, 68)
    lms[:, mouth, 1] += rng.uniform(0, 4, (80, 1)) * np.where(np.isin(mouth, [50, 51, 52, 61, 62, 63]), -0.3, 1.0)
    lms += rng.normal(0, 1.0, lms.shape)
    model = canonical_face_model(np.zeros((10, 478, 3)) + rng.normal(0, 1, (10, 478, 3)), num_exp=0)
    kw = dict(every_k=2, steps=500, refine_points=5, min_search_frames=20)
    search = focal_search_px(model, lms, CX, CY, 500, 3000, 100, **kw)
    assert focal_is_interior(search) and not focal_at_range_end(search)
    assert abs(search.focal - FOCAL) / FOCAL < 0.08, search.focal
    halves = [focal_search_px(model, part, CX, CY, 500, 3000, 100, **kw) for part in np.array_split(lms, 2)]
    agreement = focal_half_agreement(search, halves)
    assert not agreement["focal_halves_disagree"] and agreement["focal_halves_difference_pct"] < 10


@pytest.mark.slow
def test_perspective_response_of_the_focal_search():
    """On true landmarks of another person's face (no noise) filmed at three focals, the camera distance scaled with
    the focal, the default face model's focal follows the perspective (gain near 1); the face's identity mismatch
    shifts 1 / focal by a constant, so the relative error grows with the focal. An estimator that reports
    one focal whatever the camera has gain 0, and one pulled halfway to 1000 px has gain 0.5 and fixed point 1000."""
    from synctalk.face.face_model import canonical_face_model
    from synctalk.stabilizer.perspective_check import perspective_response

    true = np.array([700.0, 1400.0, 2800.0])
    halfway = 1.0 / (0.5 / 1000.0 + 0.5 / true)
    pulled = perspective_response(true, halfway)
    assert pulled["gain"] == pytest.approx(0.5, abs=1e-3) and pulled["fixed_point"] == pytest.approx(1000.0, abs=0.5)
    assert perspective_response(true, [1000.0] * 3)["gain"] == pytest.approx(0.0, abs=1e-9)
    assert perspective_response(true, true)["fixed_point"] is None
    with pytest.raises(ValueError):
        perspective_response([1000.0, 1000.0], [900.0, 950.0])
    face = another_human_face()
    rot, trans = head_motion(40, seed=5)
    model = canonical_face_model(np.random.default_rng(0).normal(0, 1, (10, 478, 3)), num_exp=0)
    found = []
    for focal in true:
        lms = project_np(face, rot, trans * [1, 1, focal / FOCAL], focal)
        found.append(focal_search_px(model, lms, CX, CY, 0.4 * focal, 2.5 * focal, 0.1 * focal, every_k=1,
                                     steps=500, refine_points=5, min_search_frames=20).focal)
    response = perspective_response(true, found)
    assert 0.9 < response["gain"] < 1.1, (found, response)
    # the face's identity mismatch is a constant offset of 1 / focal: the error grows with the focal
    errors = response["error_pct"]
    assert abs(errors[0]) < 10 and abs(errors[0]) < abs(errors[1]) < abs(errors[2]), (found, response)


def test_perspective_warp_is_a_camera_move():
    """warp_points turns a face filmed at one focal into the same face filmed with ratio x the focal from a camera
    moved back so the face keeps its size, exactly; dense_face puts the 468 mesh vertices onto a 68-point shape."""
    from synctalk.face.facemesh import MESH_TO_68
    from synctalk.stabilizer.perspective_check import dense_face, warp_points

    shape = another_human_face()
    dense = dense_face(shape)
    assert dense.shape == (468, 3)
    assert np.median(np.linalg.norm(dense[MESH_TO_68] - shape, axis=1)) < 0.002  # an affine map of another face
    rot, trans = head_motion(3)
    for ratio in (0.6, 1.0, 1.7):
        for i in range(3):
            cam = dense @ rot[i].T + trans[i]
            centre = cam[MESH_TO_68, 2].mean()
            moved = cam + [0.0, 0.0, (ratio - 1.0) * centre]
            filmed = project_np(dense, rot[i:i + 1], trans[i:i + 1], FOCAL)[0]
            refilmed = np.stack([ratio * FOCAL * moved[:, 0] / moved[:, 2] + CX,
                                 ratio * FOCAL * moved[:, 1] / moved[:, 2] + CY], -1)
            np.testing.assert_allclose(warp_points(filmed, cam[:, 2], ratio, centre, CX, CY), refilmed, atol=1e-9)
            size = np.ptp(refilmed, axis=0) / np.ptp(filmed, axis=0)
            assert np.all(np.abs(size - 1) < 0.05)  # the face keeps its size


@pytest.mark.slow
def test_perspective_check_measures_how_much_a_detector_follows(tmp_path):
    """A detector that sees the warped frames as a camera would film them has gain 1; one that keeps reporting the
    landmarks of the original frames has gain 0; one halfway between, 0.5. The warped frames are removed and a
    sheet of them is kept."""
    import cv2

    from synctalk.face.facemesh import MESH_TO_68
    from synctalk.face.face_model import canonical_face_model
    from synctalk.stabilizer.perspective_check import check_perspective, dense_face

    n, size, focal = 12, 256, 650.0
    c = size / 2
    rng = np.random.default_rng(0)
    model = canonical_face_model(rng.normal(0, 1, (10, 478, 3)), num_exp=0)
    dense = dense_face(model.mean.numpy())
    rot, trans = head_motion(n)
    cams = [dense @ rot[i].T + trans[i] for i in range(n)]

    def film(cam, ratio=1.0):
        centre = cam[MESH_TO_68, 2].mean()
        moved = cam + [0.0, 0.0, (ratio - 1.0) * centre]
        points = np.zeros((478, 3))
        points[:468, :2] = ratio * focal * moved[:, :2] / moved[:, 2:] + c
        points[468:, :2] = points[[33] * 10, :2]  # the iris points are not used
        return points

    mesh = np.stack([film(cam) for cam in cams])
    frames = []
    for i in range(n):
        frames.append(tmp_path / f"{i}.jpg")
        cv2.imwrite(str(frames[-1]), np.full((size, size, 3), 90, np.uint8))

    def detector(share: float):
        def detect(paths):
            ratio = float(paths[0].parent.name[1:])
            return np.stack([share * film(cams[int(p.stem)], ratio) + (1 - share) * mesh[int(p.stem)] for p in paths])
        return detect

    def search(lms, expected):
        return focal_search_px(model, lms, c, c, 0.4 * expected, 2.5 * expected, 0.15 * expected, every_k=1,
                               steps=200, refine_points=3, min_search_frames=10).focal

    gains = {}
    for share in (1.0, 0.5, 0.0):
        out = tmp_path / f"check_{share}"
        result = check_perspective(frames, mesh, lambda i: cams[i], focal, size, size, search, detector(share), out,
                                   count=n, ratios=(0.7, 1.45))
        gains[share] = result["perspective_gain"]
        assert result["perspective_frames"] == n and not out.exists()
        assert cv2.imread(str(out.with_suffix(".jpg"))).shape == (size, 2 * size, 3)
    assert gains[1.0] == pytest.approx(1.0, abs=0.05) and gains[0.0] == pytest.approx(0.0, abs=0.05), gains
    assert 0.35 < gains[0.5] < 0.65, gains


@pytest.mark.slow
def test_poses_stage_checks_the_detector_perspective_on_facemesh(tmp_path, caplog):
    """tracker.check_perspective on the synthetic subject with FaceMesh: the report gives the focal found on frames
    warped to 0.7, 1 and 1.45 x the focal and the detector's gain, warns below 0.8, keeps the sheet and removes the
    warped frames; the same for the focal measured on the tracked points."""
    import logging

    from synctalk.face.facemesh import to_68
    from synctalk.face.landmark_detectors import FaceMesh
    from synctalk.data.layout import DatasetLayout
    from synctalk.synthetic.subject import SyntheticSpec, generate
    from synctalk.stabilizer.checks import PERSPECTIVE_GAIN_WARN
    from synctalk.stabilizer.pipeline import stabilize
    from synctalk.stabilizer.options import StabilizerOptions

    n = 20
    root = generate(SyntheticSpec(num_frames=n, size=256, seed=0), tmp_path / "s", progress=False)
    frames = [DatasetLayout(root).frame(i) for i in range(n)]
    mesh = FaceMesh().detect_files(frames, progress=False)
    opts = StabilizerOptions()
    opts.tracker.pose_source, opts.tracker.steps, opts.tracker.refine_points = "landmarks", 300, 3
    opts.tracker.check_perspective, opts.tracker.perspective_frames = True, 12
    with caplog.at_level(logging.WARNING):
        report = stabilize(frames, frames, mesh, to_68(mesh)[..., :2], 256, 256, 25.0, opts, tmp_path / "stab",
                           progress=False)["report"]
    assert report["perspective_ratios"] == [0.7, 1.0, 1.45] and report["perspective_frames"] == 12
    assert len(report["perspective_focals"]) == 3 and 0.0 <= report["perspective_gain"] <= 1.2
    assert (report["perspective_gain"] < PERSPECTIVE_GAIN_WARN) == ("follows only" in caplog.text)
    assert (tmp_path / "stab" / "perspective_check.jpg").is_file()
    assert not (tmp_path / "stab" / "perspective_check").exists()
    # the focal measured again on the tracked head points (the default tracker.focal_source=points), with its own
    # perspective check on re-filmed tracks; used only when sure, else the landmark focal is written
    assert report["focal_points_frames"] == n and len(report["focal_points_halves"]) == 2
    assert len(report["perspective_points_focals"]) == 3 and report["perspective_points_gain"] is not None
    refused_by_the_check = any("re-filmed" in reason for reason in report["focal_points_rejected"])
    assert refused_by_the_check == (report["perspective_points_gain"] < PERSPECTIVE_GAIN_WARN)
    if report["focal_points_used"]:
        assert report["focal"] == report["focal_points"] and not report["focal_points_rejected"]
    else:
        assert report["focal"] == report["focal_landmark_search"] and "is not used" in caplog.text


def test_shipped_canonical_face_is_derived_from_the_face_landmarker(face_landmarker_task, tmp_path):
    from synctalk.face.face_model import CANONICAL_FACE, write_canonical_template

    task = face_landmarker_task
    derived = write_canonical_template(task, tmp_path / "canonical.txt")
    np.testing.assert_allclose(np.loadtxt(CANONICAL_FACE), derived, atol=1e-4)
    assert "Apache License" in CANONICAL_FACE.read_text()
    with pytest.raises(UserError, match="not a Face Landmarker model"):
        write_canonical_template(tmp_path / "canonical.txt", tmp_path / "x.txt")


def test_shipped_face_mesh_is_derived_from_the_face_landmarker(face_landmarker_task, tmp_path):
    """The synthetic subject's mesh (canonical_face.obj) is the task file's canonical mesh, vertices, texture
    coordinates and triangles, with its licence notice."""
    from synctalk.face.face_model import CANONICAL_MESH, canonical_mesh_from_task, read_obj, write_canonical_mesh

    write_canonical_mesh(face_landmarker_task, tmp_path / "face.obj")
    shipped, derived = read_obj(CANONICAL_MESH), read_obj(tmp_path / "face.obj")
    for a, b in zip(shipped, derived):
        np.testing.assert_allclose(a, b, atol=1e-5)
    vertices, uv, triangles = canonical_mesh_from_task(face_landmarker_task, with_uv=True)
    np.testing.assert_allclose(shipped[0], vertices, atol=1e-5)
    assert shipped[2].shape == (898, 3) and (shipped[2] == triangles).all()
    assert "Apache License" in CANONICAL_MESH.read_text()


def test_bundle_adjustment_is_rejected_when_it_does_not_help():
    from synctalk.stabilizer.checks import judge_bundle_adjustment

    rot, trans = head_motion(60)
    rng = np.random.default_rng(0)
    shaky = euler_to_matrix(np.radians(rng.normal(0, 0.6, (60, 3))))
    landmark = c2w_from_cv_poses(shaky @ rot, trans)  # a jittery face-model fit
    smooth = c2w_from_cv_poses(rot, trans)
    points = np.full(60, 100)
    good = judge_bundle_adjustment(landmark, smooth, points, max_drift_deg=10)
    assert good["kept"] and not good["reasons"]
    assert good["jitter_bundle_adjustment"]["rotation_deg"] < good["jitter_landmarks"]["rotation_deg"]
    worse = judge_bundle_adjustment(smooth, landmark, points, max_drift_deg=10)
    assert not worse["kept"] and "jitter" in worse["reasons"][0]
    few = points.copy()
    few[:20] = 3
    assert "stable tracked points" in judge_bundle_adjustment(landmark, smooth, few, 10)["reasons"][0]
    tilted = c2w_from_cv_poses(euler_to_matrix(np.radians([[0.0, 15.0, 0.0]] * 60)) @ rot, trans)
    drift = judge_bundle_adjustment(landmark, tilted, points, max_drift_deg=10)
    assert not drift["kept"] and "drift" in drift["reasons"][-1] and drift["drift_median_deg"] > 10


def test_head_angles_are_about_the_frontal_pose_and_continuous():
    rot, trans = head_motion(50)  # pitch +-6, yaw +-12, roll +-4 degrees about the frontal pose
    ang = rotation_angles_deg(rot)
    assert np.abs(ang).max() < 20  # no +-180 degree offsets
    assert np.abs(np.diff(ang, axis=0)).max() < 3  # no jumps


def test_written_transforms_give_back_the_poses_and_their_jitter(tmp_path):
    from synctalk.data.layout import Transforms, split_train_val
    from synctalk.stabilizer.pose_convention import cv_poses_from_c2w, transforms_jitter

    rot, trans = head_motion(44)
    c2w = c2w_from_cv_poses(rot, trans)
    back_rot, back_trans = cv_poses_from_c2w(c2w)
    np.testing.assert_allclose(back_rot, rot, atol=1e-9)
    np.testing.assert_allclose(back_trans, trans, atol=1e-9)
    for split, ids in zip(("train", "val"), split_train_val(44)):
        Transforms(1000.0, 256, 256, ids, ids, c2w[ids].astype(np.float32)).write(tmp_path / f"transforms_{split}.json")
    written = transforms_jitter(tmp_path)
    assert written["rotation_deg"] == pytest.approx(jitter(rot, trans)["rotation_deg"], abs=1e-3)


def test_long_videos_score_and_search_on_bounded_frames():
    from synctalk.stabilizer.point_tracker import score_frame_runs

    assert score_frame_runs(300, 500) == [range(300)]
    runs = score_frame_runs(7500, 500)
    frames = [t for run in runs for t in run]
    assert len(runs) == 10 and len(frames) == 500 and len(set(frames)) == 500
    assert frames[0] == 0 and frames[-1] == 7499 and all(len(r) == 50 for r in runs)
    head = random_head()
    rot, trans = head_motion(2000)
    lms = project_np(head, rot, trans, FOCAL)
    model = FaceModel(head, np.zeros((68, 3, 0)), np.zeros((68, 3, 0)), "exact")
    search = focal_search_px(model, lms, CX, CY, 1200, 1400, 100, every_k=1, steps=20, max_search_frames=300)
    assert search.frames <= 300


def test_flow_samples_are_bilinear_and_whole_pixels_read_the_field():
    from synctalk.stabilizer.point_tracker import _sample

    rng = np.random.default_rng(3)
    field = rng.normal(0, 3, (9, 11, 2)).astype(np.float32)
    whole = np.array([[0.0, 0.0], [4.0, 7.0], [9.0, 3.0]])  # (x, y), none on the last row or column
    assert np.array_equal(_sample(field, whole), field[[0, 7, 3], [0, 4, 9]].astype(np.float64))
    xy = np.array([[2.25, 3.5], [0.0, 7.75], [10.0, 8.0], [-3.0, 4.5]])  # fractions, the last column, outside
    x, y = np.clip(xy[:, 0], 0, 10 - 0.001), np.clip(xy[:, 1], 0, 8 - 0.001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    expected = ((1 - fx) * (1 - fy) * field[y0, x0] + fx * (1 - fy) * field[y0, x0 + 1]
                + (1 - fx) * fy * field[y0 + 1, x0] + fx * fy * field[y0 + 1, x0 + 1])
    np.testing.assert_allclose(_sample(field, xy), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(_sample(field, np.array([[2.25, 3.5]]))[0],
                               0.75 * 0.5 * field[3, 2] + 0.25 * 0.5 * field[3, 3] + 0.75 * 0.5 * field[4, 2]
                               + 0.25 * 0.5 * field[4, 3], atol=1e-12)
