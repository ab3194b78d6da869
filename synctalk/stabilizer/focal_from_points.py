"""The focal length measured on the tracked head points: bundle adjustment with the focal free (self-calibration).

The landmark focal search reads perspective through a landmark detector, which follows only part of it (its shape
prior pulls the focal towards one value; ``tracker.check_perspective``). The head points tracked by optical flow move
with the pixels, so their perspective is the camera's. Here the points (P, 3), the poses of the frames and one focal
are fitted together to the tracks by Levenberg-Marquardt (Gauss-Newton with an adaptive damping), starting from the
landmark fit:

- the unknowns are the inverse focal ``kappa = 1 / focal`` (the strength of perspective) and, for each frame, the
  rotation R, the image position ``u`` of the head's origin (px from the image centre) and ``d``, its depth over the
  focal (metres per px): a head point p is seen at ``c + ((R p)_xy + u d) / (d + kappa (R p)_z)``. Changing kappa
  alone moves the head away or closer so that it keeps its size and place in the image, which is the valley the
  reprojection error has along the focal; the projection is nearly linear in kappa and defined through
  ``kappa = 0`` (no perspective: a scaled orthographic camera) and below it (an inverted perspective, which no camera
  makes and which tracks of a head that is not rigid can show). With the focal itself as the unknown the steps
  shrink as 1 / focal^2 where the perspective is weak, and the fit stopped wherever its iterations ran out (on one
  real clip 13,000 px after 40 steps, 76,000 after 200, from any start; the minimum lies beyond 1 / focal = 0);
- the reference frame's rotation, ``u`` and ``d`` stay fixed (the gauge: a rigid motion and a scale of the scene);
  the scale of the head is that of the face-model fit;
- the normal equations are solved with the frames or the points eliminated, whichever leaves fewer unknowns (a
  Schur complement over the frames' 6 x 6 or the points' 3 x 3 blocks), so a step costs one dense solve over
  min(6N, 3P) + 1 unknowns (the focal among them);
- a Huber loss (iteratively re-weighted); after each round the points and observations over ``outlier_factor`` times
  the median error are dropped and the fit runs again (expressions, occluding contours, drifting flow);
- the standard deviation of kappa comes from the inverse of the normal matrix at the solution, scaled by the
  residual variance (relative to kappa, it is the focal's relative standard deviation to first order). It assumes
  independent track errors, so it is a lower bound; the halves of the clip (each fitted alone) show the spread that
  errors correlated in time leave, and a jackknife over six parts of the head (the fit repeated with each part's
  points left out) the spread that errors correlated in space leave. Video compression makes such
  errors: H.264 at crf 18 wipes out skin texture of a few gray levels, so the flow there follows block artifacts and
  shading more than the skin, unequally over the face (on the synthetic subject's video the focal is then 9-16% low
  while the normal matrix says 1%, and the jackknife 4-8%).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from tqdm import tqdm

log = logging.getLogger(__name__)
MIN_VIEWS = 3  # points seen in fewer of the fitted frames are left out
MIN_POINTS = 6  # frames with fewer used points are left out
PART_GRID = (2, 3)  # the jackknife's parts of the head: rows x columns of equal point counts in the reference frame


def _skew(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrices."""
    zero = torch.zeros_like(v[..., 0])
    return torch.stack([zero, -v[..., 2], v[..., 1], v[..., 2], zero, -v[..., 0], -v[..., 1], v[..., 0], zero],
                       -1).reshape(*v.shape[:-1], 3, 3)


def _rotate(w: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle (radians) -> (..., 3, 3) rotation matrices."""
    theta = w.norm(dim=-1, keepdim=True).clamp(min=1e-15)
    k = _skew(w / theta)
    s, c = torch.sin(theta)[..., None], torch.cos(theta)[..., None]
    return torch.eye(3, dtype=w.dtype) + s * k + (1 - c) * (k @ k)


def signed_focal(inverse_focal: float) -> float:
    """The focal (px) of an inverse focal (1/px): infinite without perspective, negative where it is inverted."""
    return 1.0 / inverse_focal if inverse_focal else math.inf


@dataclass
class FocalFit:
    """One self-calibrating bundle adjustment: the inverse focal and its standard deviation, the fitted scene."""

    inverse_focal: float  # 1/px: the strength of perspective (0: none; below 0: inverted)
    inverse_focal_std: float  # 1/px
    rms_px: float  # over the observations used
    rotation: np.ndarray  # (N, 3, 3) head -> OpenCV camera
    position: np.ndarray  # (N, 3): u (px from the image centre, x and y) and d (metres per px): :func:`image_positions`
    points3d: np.ndarray  # (P, 3) head frame, metres
    used: np.ndarray  # (N, P) bool: the observations of the last round
    iterations: int

    @property
    def focal(self) -> float:
        """px: :func:`signed_focal`."""
        return signed_focal(self.inverse_focal)

    @property
    def translation(self) -> np.ndarray:
        """(N, 3) metres, head -> OpenCV camera (a camera exists only for a positive inverse focal)."""
        u, d = self.position[:, :2], self.position[:, 2:]
        return np.concatenate([u * d, d / self.inverse_focal], 1)


def image_positions(translation: np.ndarray, focal: float) -> np.ndarray:
    """(N, 3) the head origin's image position u (px from the image centre, x and y) and its depth over the focal d
    (metres per px), from translations (N, 3) metres filmed at ``focal`` px."""
    t = np.asarray(translation, np.float64)
    return np.concatenate([focal * t[:, :2] / t[:, 2:], t[:, 2:] / focal], 1)


class _Problem:
    """Reprojection residuals of tracks (N, P, 2) and their Jacobians, float64."""

    def __init__(self, points2d: np.ndarray, cx: float, cy: float, huber_px: float):
        self.uv = torch.as_tensor(points2d, dtype=torch.float64)
        self.centre = torch.tensor([cx, cy], dtype=torch.float64)
        self.huber = huber_px

    def project(self, rot, position, points, kappa) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, P, 2) projections (px from the image centre), (N, P, 3) rotated points R p and (N, P) denominators
        ``d + kappa (R p)_z``."""
        rotated = torch.einsum("nab,pb->npa", rot, points)
        d = position[:, None, 2]
        denominator = d + kappa * rotated[..., 2]
        return (rotated[..., :2] + position[:, None, :2] * d[..., None]) / denominator[..., None], rotated, denominator

    def residuals(self, rot, position, points, kappa) -> torch.Tensor:
        """(N, P, 2) projected - tracked px."""
        return self.project(rot, position, points, kappa)[0] + self.centre - self.uv

    def cost(self, rot, position, points, kappa, used) -> float:
        """Huber cost (px^2) of the used observations."""
        err = self.residuals(rot, position, points, kappa).norm(dim=-1)
        d = self.huber
        return float((torch.where(err < d, 0.5 * err ** 2, d * (err - 0.5 * d)) * used).sum())


def fit_focal(points2d: np.ndarray, used: np.ndarray, points3d: np.ndarray, rotation: np.ndarray,
              position: np.ndarray, inverse_focal: float, cx: float, cy: float, reference: int, huber_px: float = 1.0,
              max_iterations: int = 50, tolerance: float = 1e-9) -> FocalFit:
    """Levenberg-Marquardt over points, poses and the inverse focal (see the module docstring).

    Args:
        points2d: (N, P, 2) tracks, px; used: (N, P) bool, the observations to fit; points3d: (P, 3) metres;
        rotation (N, 3, 3), position (N, 3): starting poses (head -> OpenCV camera; :func:`image_positions`) at
            ``inverse_focal`` 1/px;
        reference: the frame whose rotation and position stay fixed; frames with fewer than :data:`MIN_POINTS`
            used observations are left out (their poses returned as given).
        tolerance: stops when an accepted step lowers the cost by less than this fraction.
    """
    f64 = torch.float64
    problem = _Problem(points2d, cx, cy, huber_px)
    few = np.asarray(used).sum(1) < MIN_POINTS  # frames that cannot fix a pose: left out, their pose kept
    used = np.where(few[:, None], False, used)
    w_used = torch.as_tensor(used, dtype=f64)
    rot = torch.as_tensor(rotation, dtype=f64).clone()
    kappa = torch.tensor(float(inverse_focal), dtype=f64)
    pos = torch.as_tensor(position, dtype=f64).clone()
    pts = torch.as_tensor(points3d, dtype=f64).clone()
    n, p = w_used.shape
    free = torch.as_tensor(~few, dtype=f64)
    free[reference] = 0.0
    lam, cost = 1e-3, problem.cost(rot, pos, pts, kappa, w_used)
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        normal = _normal_equations(problem, rot, pos, pts, kappa, w_used, free)
        improved = False
        while lam < 1e10:
            d_c, d_p, d_k = _solve(normal.damped(lam))
            rot_new, pos_new, pts_new, kappa_new = _rotate(d_c[:, :3]) @ rot, pos + d_c[:, 3:], pts + d_p, kappa + d_k
            if (pos_new[:, 2] <= 0).any():  # a head behind the camera
                lam *= 4
                continue
            new_cost = problem.cost(rot_new, pos_new, pts_new, kappa_new, w_used)
            if new_cost < cost:
                rot, pos, pts, kappa = rot_new, pos_new, pts_new, kappa_new
                improved, gain = True, (cost - new_cost) / max(cost, 1e-12)
                cost, lam = new_cost, max(lam / 3, 1e-12)
                break
            lam *= 4
        if not improved or gain < tolerance:
            break
    normal = _normal_equations(problem, rot, pos, pts, kappa, w_used, free)
    err = problem.residuals(rot, pos, pts, kappa).norm(dim=-1)
    rms = float(((err ** 2 * w_used).sum() / w_used.sum().clamp(min=1)).sqrt())
    dof = max(2 * float(w_used.sum()) - 6 * (n - 1) - 3 * p - 1, 1.0)
    std = float(np.sqrt(2 * cost / dof * _focal_variance(normal.damped(0.0))))
    return FocalFit(float(kappa), std, rms, rot.numpy(), pos.numpy(), pts.numpy(), np.asarray(used, bool), iterations)


@dataclass
class _Normal:
    """Gauss-Newton normal equations in blocks. Frame unknowns (N, 6): rotation (left increment, radians), u, d; point
    unknowns (P, 3); the inverse focal (``*_f``). ``g_*`` are negative gradients of the cost."""

    h_cc: torch.Tensor  # (N, 6, 6)
    h_cp: torch.Tensor  # (N, P, 6, 3)
    h_cf: torch.Tensor  # (N, 6)
    h_pp: torch.Tensor  # (P, 3, 3)
    h_pf: torch.Tensor  # (P, 3)
    h_ff: torch.Tensor  # ()
    g_c: torch.Tensor  # (N, 6)
    g_p: torch.Tensor  # (P, 3)
    g_f: torch.Tensor  # ()
    free: torch.Tensor  # (N,) 1 for the frames whose pose is fitted

    def damped(self, lam: float) -> "_Normal":
        """Levenberg-Marquardt damping (``lam`` times the diagonal added); the blocks of fixed frames and of points
        no observation constrains get an identity, so that they stay where they are."""
        def damp(h):
            return h + lam * torch.diag_embed(torch.diagonal(h, dim1=-2, dim2=-1))

        unseen = (torch.diagonal(self.h_pp, dim1=-2, dim2=-1) == 0).to(self.h_pp.dtype)
        fixed = (1 - self.free)[:, None, None] * torch.eye(6, dtype=self.h_cc.dtype)
        return replace(self, h_cc=damp(self.h_cc) + fixed, h_pp=damp(self.h_pp) + torch.diag_embed(unseen),
                       h_ff=self.h_ff * (1 + lam))

    def split(self) -> tuple[bool, tuple]:
        """The system as the blocks to eliminate ``a`` (M, k, k) and the rest ``b`` (B unknowns, the focal last):
        ``(h_aa, h_ab (M, k, B), h_bb (B, B), g_a (M, k), g_b (B,))``, and whether ``a`` is the points (True) or the
        frames (False): whichever leaves the smaller dense system."""
        n, p = self.h_cp.shape[:2]
        if 3 * p <= 6 * n:  # eliminate the frames: the points and the focal stay
            h_ab = torch.cat([self.h_cp.permute(0, 2, 1, 3).reshape(n, 6, 3 * p), self.h_cf[..., None]], -1)
            h_bb = _bordered(torch.block_diag(*self.h_pp), self.h_pf.reshape(-1), self.h_ff)
            return False, (self.h_cc, h_ab, h_bb, self.g_c, torch.cat([self.g_p.reshape(-1), self.g_f[None]]))
        h_ab = torch.cat([self.h_cp.permute(1, 3, 0, 2).reshape(p, 3, 6 * n), self.h_pf[..., None]], -1)
        h_bb = _bordered(torch.block_diag(*self.h_cc), self.h_cf.reshape(-1), self.h_ff)
        return True, (self.h_pp, h_ab, h_bb, self.g_p, torch.cat([self.g_c.reshape(-1), self.g_f[None]]))


def _bordered(h: torch.Tensor, column: torch.Tensor, corner: torch.Tensor) -> torch.Tensor:
    """[[h, column], [column^T, corner]]: (K + 1, K + 1)."""
    k = len(h)
    out = torch.zeros(k + 1, k + 1, dtype=h.dtype)
    out[:k, :k], out[:k, -1], out[-1, :k], out[-1, -1] = h, column, column, corner
    return out


def _normal_equations(problem: _Problem, rot, pos, pts, kappa, w_used, free) -> _Normal:
    """Gauss-Newton normal equations with Huber weights (:class:`_Normal`)."""
    x, rotated, denominator = problem.project(rot, pos, pts, kappa)
    r = x + problem.centre - problem.uv
    err = r.norm(dim=-1)
    w = w_used * torch.where(err < problem.huber, torch.ones_like(err), problem.huber / err.clamp(min=1e-12))
    n, p = w_used.shape
    inv = 1.0 / denominator
    a = torch.zeros(n, p, 2, 3, dtype=r.dtype)  # d(projection) / d(rotated point)
    a[..., 0, 0] = a[..., 1, 1] = inv
    a[..., 0, 2], a[..., 1, 2] = -kappa * x[..., 0] * inv, -kappa * x[..., 1] * inv
    j_u = torch.zeros(n, p, 2, 2, dtype=r.dtype)
    j_u[..., 0, 0] = j_u[..., 1, 1] = pos[:, None, 2] * inv
    j_d = ((pos[:, None, :2] - x) * inv[..., None])[..., None]
    j_c = torch.cat([-a @ _skew(rotated), j_u, j_d], -1) * free[:, None, None, None]  # (N, P, 2, 6)
    j_x = a @ rot[:, None]  # (N, P, 2, 3)
    j_f = (-x * (rotated[..., 2] * inv)[..., None])[..., None]  # (N, P, 2, 1): d / d kappa
    wr = w[..., None, None]
    jt_c, jt_x, jt_f = j_c.transpose(-1, -2), j_x.transpose(-1, -2), j_f.transpose(-1, -2)
    wres = wr * r[..., None]
    return _Normal(h_cc=(jt_c @ (wr * j_c)).sum(1), h_cp=jt_c @ (wr * j_x), h_cf=(jt_c @ (wr * j_f)).sum(1)[..., 0],
                   h_pp=(jt_x @ (wr * j_x)).sum(0), h_pf=(jt_x @ (wr * j_f)).sum(0)[..., 0],
                   h_ff=(jt_f @ (wr * j_f)).sum((0, 1))[0, 0], g_c=-(jt_c @ wres).sum(1)[..., 0],
                   g_p=-(jt_x @ wres).sum(0)[..., 0], g_f=-(jt_f @ wres).sum((0, 1))[0, 0], free=free)


def _eliminate(h_aa, h_ab, h_bb, g_a, g_b, floor: bool = False):
    """Solve [[A, C], [C^T, h_bb]] [d_a; d_b] = [g_a; g_b] with A block-diagonal (``h_aa`` (M, k, k), ``h_ab`` (M, k,
    B)) by its Schur complement: (M, k) and (B,) increments. ``floor``: :func:`_with_floor` on A and the complement."""
    m, k = g_a.shape
    inv_aa = torch.linalg.inv(_with_floor(h_aa) if floor else h_aa)
    b = inv_aa @ h_ab  # (M, k, B)
    schur = h_bb - h_ab.reshape(m * k, -1).T @ b.reshape(m * k, -1)
    rhs = g_b - (b.transpose(1, 2) @ g_a[..., None]).sum(0)[:, 0]
    d_b = torch.linalg.solve(_with_floor(schur) if floor else schur, rhs)
    d_a = (inv_aa @ (g_a[..., None] - h_ab @ d_b[:, None]))[..., 0]
    return d_a, d_b


def _solve(normal: _Normal):
    """The (damped) normal equations: increments of the frames (N, 6), the points (P, 3) and the focal ()."""
    points_eliminated, blocks = normal.split()
    d_a, d_b = _eliminate(*blocks)
    if points_eliminated:  # d_a holds the points, d_b the frames and the focal
        return d_b[:-1].reshape(-1, 6), d_a, d_b[-1]
    return d_a, d_b[:-1].reshape(-1, 3), d_b[-1]


def _with_floor(h: torch.Tensor) -> torch.Tensor:
    """A normal matrix (..., K, K) with 1e-9 of its diagonal added, so that directions no observation constrains
    (the depth of a point seen from one direction only) get a huge variance instead of a singular solve."""
    diagonal = torch.diagonal(h, dim1=-2, dim2=-1)
    return h + torch.diag_embed(diagonal * 1e-9 + 1e-12)


def _focal_variance(normal: _Normal) -> float:
    """The inverse focal's entry of the inverse normal matrix (unit residual variance), 1/px^2; infinite where the
    normal matrix is singular even so (the focal is not measured)."""
    h_aa, h_ab, h_bb, g_a, g_b = normal.split()[1]
    unit = torch.zeros_like(g_b)
    unit[-1] = 1.0
    try:
        return float(_eliminate(h_aa, h_ab, h_bb, torch.zeros_like(g_a), unit, floor=True)[1][-1].clamp(min=0))
    except torch.linalg.LinAlgError:
        return float("inf")


def drop_outliers(fit: FocalFit, points2d: np.ndarray, cx: float, cy: float, factor: float) -> np.ndarray:
    """The observations of ``fit.used`` kept for the next round: points whose median error is over ``factor``
    times the median over points, and single observations over ``factor`` times the median observation, go."""
    from synctalk.stabilizer.bundle_adjustment import find_outliers

    err = _Problem(points2d, cx, cy, 1.0).residuals(torch.as_tensor(fit.rotation), torch.as_tensor(fit.position),
                                                     torch.as_tensor(fit.points3d),
                                                     torch.tensor(fit.inverse_focal, dtype=torch.float64))
    return fit.used & ~find_outliers(err.norm(dim=-1).numpy(), fit.used, factor)


def _px(inverse_focal: float) -> float | None:
    """A focal in px, rounded; None where there is no perspective or an inverted one."""
    return round(1.0 / inverse_focal, 1) if inverse_focal > 0 else None


def _relative_pct(values, reference: float) -> float:
    """|values| (inverse focals, already differences or deviations) as % of ``|reference|``; infinite at 0."""
    return 100 * abs(values) / abs(reference) if reference else math.inf


@dataclass
class FocalFromPoints:
    """The focal measured on the tracked points, with how sure it is and whether it is used. Measured as the inverse
    focal (the strength of perspective), so that a clip whose tracks show none, or an inverted one, gets a number and a
    deviation like any other; the deviations are % of it (the focal's relative deviations to first order)."""

    inverse_focal: float  # 1/px, the whole clip's
    landmark_focal: float  # px, the start
    std_pct: float  # the standard deviation, % (independent track errors: a lower bound)
    halves: list = field(default_factory=list)  # 1/px, each half of the clip fitted alone ([] when not run)
    halves_difference_pct: float | None = None
    parts: list = field(default_factory=list)  # 1/px, fitted with each part of the head left out ([] when not run)
    parts_std_pct: float | None = None  # the jackknife standard deviation over the parts, %
    rms_px: float = 0.0
    frames: int = 0
    points: int = 0
    used: bool = False
    reasons: list = field(default_factory=list)  # why it is not used

    @property
    def focal(self) -> float:
        """px: :func:`signed_focal`."""
        return signed_focal(self.inverse_focal)

    def to_dict(self) -> dict:
        def pct(value):
            return round(value, 2) if value is not None and math.isfinite(value) else None  # None: not measurable

        return {"focal_points": _px(self.inverse_focal),
                "focal_points_perspective": round(self.inverse_focal * self.landmark_focal, 4),
                "focal_points_std_pct": pct(self.std_pct),
                "focal_points_halves": [_px(h) for h in self.halves],
                "focal_points_halves_difference_pct": pct(self.halves_difference_pct),
                "focal_points_parts": [_px(k) for k in self.parts],
                "focal_points_parts_std_pct": pct(self.parts_std_pct),
                "focal_points_rms_px": round(self.rms_px, 4), "focal_points_frames": self.frames,
                "focal_points_tracked": self.points, "focal_points_used": self.used,
                "focal_points_rejected": self.reasons}


def focal_frames(n: int, frames: int, reference: int) -> np.ndarray:
    """The frames (sorted ids) the focal is measured on: at most ``frames`` spread over ``n``, the reference too."""
    return np.unique(np.r_[np.linspace(0, n - 1, min(frames, n)).round().astype(int), reference])


def head_parts(reference_xy: np.ndarray, used: np.ndarray) -> np.ndarray:
    """(P,) part of each point, 0 to rows x columns - 1 (:data:`PART_GRID`): the head cut at quantiles of the used
    points' reference positions (``reference_xy`` (P, 2) px; ``used`` (P,) bool) so that each part holds about as
    many points."""
    rows, cols = PART_GRID
    xy = reference_xy[used] if used.any() else reference_xy
    x_cuts = np.quantile(xy[:, 0], np.arange(1, cols) / cols)
    y_cuts = np.quantile(xy[:, 1], np.arange(1, rows) / rows)
    return np.digitize(reference_xy[:, 1], y_cuts) * cols + np.digitize(reference_xy[:, 0], x_cuts)


def jackknife_parts(fit: FocalFit, points2d: np.ndarray, reference: int, cx: float, cy: float,
                    opts) -> tuple[list[float], float]:
    """The inverse focal fitted again with each part of the head (:func:`head_parts`) left out, from ``fit``'s
    solution and observations, and the jackknife standard deviation over them, % of ``fit.inverse_focal``."""
    part = head_parts(points2d[reference], fit.used.any(0))
    found = []
    for k in range(PART_GRID[0] * PART_GRID[1]):
        kept = fit.used & (part != k)[None]
        found.append(fit_focal(points2d, kept, fit.points3d, fit.rotation, fit.position, fit.inverse_focal, cx, cy,
                               reference, opts.huber_px, opts.iterations).inverse_focal)
    values = np.asarray(found)
    std = math.sqrt((len(values) - 1) / len(values) * ((values - values.mean()) ** 2).sum())
    return found, _relative_pct(std, fit.inverse_focal)


def measure_focal(points2d: np.ndarray, visible: np.ndarray, points3d: np.ndarray, rotation: np.ndarray,
                  translation: np.ndarray, focal: float, cx: float, cy: float, reference: int, opts,
                  progress: bool = False) -> FocalFromPoints:
    """The focal of the tracked points on at most ``opts.frames`` frames spread over the clip (the reference among
    them), the whole clip and then each half of it, and whether to use it.

    Args:
        points2d: (N, P, 2) tracks px; visible: (N, P); points3d (P, 3), rotation (N, 3, 3), translation (N, 3):
            the start (the landmark fit at ``focal`` px; points back-projected on it).
        opts: ``tracker.focal_points`` (:class:`synctalk.stabilizer.options.FocalPointsOptions`).
    It is not used (the landmark focal is kept, and the reasons are given) when the tracks show no perspective or an
    inverted one, when its standard deviation (from the normal matrix, or over the parts of the head:
    :func:`jackknife_parts`) is over ``opts.max_std_pct`` % (too little head motion to see perspective, or tracks
    whose errors mimic it), when the halves differ by more than ``opts.max_halves_pct`` % from each other or from the
    whole clip's, or when it lands outside ``opts.min_ratio``-``opts.max_ratio`` times the landmark focal.
    """
    ids = focal_frames(len(points2d), opts.frames, reference)
    ref = int(np.searchsorted(ids, reference))
    halves = [part for part in np.array_split(np.arange(len(ids)), 2)]
    jobs = [np.arange(len(ids))] + ([np.unique(np.r_[h, ref]) for h in halves] if opts.check_halves else [])
    position = image_positions(translation, focal)
    results = []
    for job in tqdm(jobs, desc="focal from points", disable=not progress):
        sel = ids[job]
        used = visible[sel] & (visible[sel].sum(0) >= MIN_VIEWS)[None]
        start = (points3d, rotation[sel], position[sel], 1.0 / focal)
        fit = None
        for round_ in range(max(opts.rounds, 1)):
            fit = fit_focal(points2d[sel], used, *start, cx, cy, int(np.searchsorted(sel, reference)), opts.huber_px,
                            opts.iterations)
            if round_ + 1 < opts.rounds and opts.outlier_factor > 0:
                used = drop_outliers(fit, points2d[sel], cx, cy, opts.outlier_factor)
                start = (fit.points3d, fit.rotation, fit.position, fit.inverse_focal)
        results.append(fit)
    whole = results[0]
    kappa = whole.inverse_focal
    out = FocalFromPoints(kappa, focal, _relative_pct(whole.inverse_focal_std, kappa), rms_px=whole.rms_px,
                          frames=len(ids), points=int(whole.used.any(0).sum()))
    if len(results) == 3:
        out.halves = [results[1].inverse_focal, results[2].inverse_focal]
        out.halves_difference_pct = _relative_pct(out.halves[0] - out.halves[1], kappa)
    if opts.check_parts:
        out.parts, out.parts_std_pct = jackknife_parts(whole, points2d[ids], ref, cx, cy, opts)
    if kappa <= 0:
        out.reasons.append(f"the tracks show {'no' if kappa == 0 else 'an inverted'} perspective (1 / focal = "
                           f"{kappa:.2e} / px): the head's motion is not that of a rigid head seen by a camera")
    if kappa > 0 and out.std_pct > opts.max_std_pct:  # below 0 the reason above says more
        out.reasons.append(f"its standard deviation is {out.std_pct:.1f}% (limit {opts.max_std_pct}%): the head "
                           f"moves too little for the perspective to be measured")
    if out.parts_std_pct is not None and out.parts_std_pct > opts.max_std_pct:
        out.reasons.append(f"its standard deviation over the parts of the head is {out.parts_std_pct:.1f}% (limit "
                           f"{opts.max_std_pct}%): the tracks of different parts of the head disagree (compressed "
                           f"skin texture, moving hair or skin)")
    if out.halves_difference_pct is not None and out.halves_difference_pct > opts.max_halves_pct:
        halves_px = " and ".join(f"{h:.0f} px" if h else "no focal (no perspective)" for h in map(_px, out.halves))
        out.reasons.append(f"the halves of the clip give {halves_px} ({out.halves_difference_pct:.0f}% apart in "
                           f"1 / focal, limit {opts.max_halves_pct}%)")
    if out.halves:
        apart = _relative_pct(kappa - np.mean(out.halves), kappa)
        if apart > opts.max_halves_pct:
            out.reasons.append(f"the whole clip's focal is {apart:.0f}% from its halves' mean (limit "
                               f"{opts.max_halves_pct}%)")
    if kappa > 0 and not opts.min_ratio * focal <= 1.0 / kappa <= opts.max_ratio * focal:
        out.reasons.append(f"it is outside {opts.min_ratio}-{opts.max_ratio} x the landmark focal ({focal:.0f} px)")
    out.used = not out.reasons
    return out
