"""The focal length measured on the tracked head points: bundle adjustment with the focal free (self-calibration).

The landmark focal search reads perspective through a landmark detector, which follows only part of it (its shape
prior pulls the focal towards one value; ``tracker.check_perspective``). The head points tracked by optical flow move
with the pixels, so their perspective is the camera's. Here the points (P, 3), the poses of the frames and one focal
are fitted together to the tracks by Levenberg-Marquardt (Gauss-Newton with an adaptive damping), starting from the
landmark fit:

- each frame's translation is written ``t = focal * tau``: changing the focal alone moves the head away or closer so
  that it keeps its size in the image, which is the valley the reprojection error has along the focal (with plain
  translations first-order steps crawl along it);
- the reference frame's rotation and ``tau`` stay fixed (the gauge: a rigid motion and a scale of the whole scene);
  the scale of the head is that of the face-model fit;
- the normal equations are solved with the frames or the points eliminated, whichever leaves fewer unknowns (a
  Schur complement over the frames' 6 x 6 or the points' 3 x 3 blocks), so a step costs one dense solve over
  min(6N, 3P) + 1 unknowns (the focal among them);
- a Huber loss (iteratively re-weighted); after each round the points and observations over ``outlier_factor`` times
  the median error are dropped and the fit runs again (expressions, occluding contours, drifting flow);
- the focal's standard deviation comes from the inverse of the normal matrix at the solution, scaled by the residual
  variance. It assumes independent track errors, so it is a lower bound; the halves of the clip (each fitted alone)
  show the spread that errors correlated in time leave, and a jackknife over six parts of the head (the fit repeated
  with each part's points left out) the spread that errors correlated in space leave. Video compression makes such
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


@dataclass
class FocalFit:
    """One self-calibrating bundle adjustment: the focal (px), its standard deviation (px), the fitted scene."""

    focal: float
    std_px: float
    rms_px: float  # over the observations used
    rotation: np.ndarray  # (N, 3, 3) head -> OpenCV camera
    translation: np.ndarray  # (N, 3) metres
    points3d: np.ndarray  # (P, 3) head frame, metres
    used: np.ndarray  # (N, P) bool: the observations of the last round
    iterations: int


class _Problem:
    """Reprojection residuals of tracks (N, P, 2) and their Jacobians, float64."""

    def __init__(self, points2d: np.ndarray, cx: float, cy: float, huber_px: float):
        self.uv = torch.as_tensor(points2d, dtype=torch.float64)
        self.cx, self.cy, self.huber = cx, cy, huber_px

    def residuals(self, rot, tau, points, focal) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, P, 2) projected - tracked px and (N, P, 3) camera-frame points."""
        cam = torch.einsum("nab,pb->npa", rot, points) + (focal * tau)[:, None]
        z = cam[..., 2].clamp(min=1e-6)
        proj = torch.stack([focal * cam[..., 0] / z + self.cx, focal * cam[..., 1] / z + self.cy], -1)
        return proj - self.uv, cam

    def cost(self, rot, tau, points, focal, used) -> float:
        """Huber cost (px^2) of the used observations."""
        err = self.residuals(rot, tau, points, focal)[0].norm(dim=-1)
        d = self.huber
        return float((torch.where(err < d, 0.5 * err ** 2, d * (err - 0.5 * d)) * used).sum())


def fit_focal(points2d: np.ndarray, used: np.ndarray, points3d: np.ndarray, rotation: np.ndarray,
              translation: np.ndarray, focal: float, cx: float, cy: float, reference: int, huber_px: float = 1.0,
              max_iterations: int = 50, tolerance: float = 1e-9) -> FocalFit:
    """Levenberg-Marquardt over points, poses and the focal (see the module docstring).

    Args:
        points2d: (N, P, 2) tracks, px; used: (N, P) bool, the observations to fit; points3d: (P, 3) metres;
        rotation (N, 3, 3), translation (N, 3): starting poses (head -> OpenCV camera) at ``focal`` px;
        reference: the frame whose rotation and translation / focal stay fixed; frames with fewer than
            :data:`MIN_POINTS` used observations are left out (their poses returned as given).
        tolerance: stops when an accepted step lowers the cost by less than this fraction.
    """
    f64 = torch.float64
    problem = _Problem(points2d, cx, cy, huber_px)
    few = np.asarray(used).sum(1) < MIN_POINTS  # frames that cannot fix a pose: left out, their pose kept
    used = np.where(few[:, None], False, used)
    w_used = torch.as_tensor(used, dtype=f64)
    rot = torch.as_tensor(rotation, dtype=f64).clone()
    f = torch.tensor(float(focal), dtype=f64)
    tau = torch.as_tensor(translation, dtype=f64) / f
    pts = torch.as_tensor(points3d, dtype=f64).clone()
    n, p = w_used.shape
    free = torch.as_tensor(~few, dtype=f64)
    free[reference] = 0.0
    lam, cost = 1e-3, problem.cost(rot, tau, pts, f, w_used)
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        normal = _normal_equations(problem, rot, tau, pts, f, w_used, free)
        improved = False
        while lam < 1e10:
            d_c, d_p, d_f = _solve(normal.damped(lam))
            f_new = f + d_f
            if f_new <= 0:
                lam *= 4
                continue
            rot_new, tau_new, pts_new = _rotate(d_c[:, :3]) @ rot, tau + d_c[:, 3:], pts + d_p
            new_cost = problem.cost(rot_new, tau_new, pts_new, f_new, w_used)
            if new_cost < cost:
                rot, tau, pts, f = rot_new, tau_new, pts_new, f_new
                improved, gain = True, (cost - new_cost) / max(cost, 1e-12)
                cost, lam = new_cost, max(lam / 3, 1e-12)
                break
            lam *= 4
        if not improved or gain < tolerance:
            break
    normal = _normal_equations(problem, rot, tau, pts, f, w_used, free)
    err = problem.residuals(rot, tau, pts, f)[0].norm(dim=-1)
    rms = float(((err ** 2 * w_used).sum() / w_used.sum().clamp(min=1)).sqrt())
    dof = max(2 * float(w_used.sum()) - 6 * (n - 1) - 3 * p - 1, 1.0)
    std = float(np.sqrt(2 * cost / dof * _focal_variance(normal.damped(0.0))))
    return FocalFit(float(f), std, rms, rot.numpy(), (tau * f).numpy(), pts.numpy(), np.asarray(used, bool),
                    iterations)


@dataclass
class _Normal:
    """Gauss-Newton normal equations in blocks. Frame unknowns (N, 6): rotation (left increment, radians), tau; point
    unknowns (P, 3); the focal. ``g_*`` are negative gradients of the cost."""

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


def _normal_equations(problem: _Problem, rot, tau, pts, f, w_used, free) -> _Normal:
    """Gauss-Newton normal equations with Huber weights (:class:`_Normal`)."""
    r, cam = problem.residuals(rot, tau, pts, f)
    err = r.norm(dim=-1)
    w = w_used * torch.where(err < problem.huber, torch.ones_like(err), problem.huber / err.clamp(min=1e-12))
    x, y, z = cam.unbind(-1)
    n, p = w_used.shape
    a = torch.zeros(n, p, 2, 3, dtype=r.dtype)  # d(projection) / d(camera point)
    a[..., 0, 0] = a[..., 1, 1] = f / z
    a[..., 0, 2], a[..., 1, 2] = -f * x / z ** 2, -f * y / z ** 2
    j_rot = -a @ _skew(cam - (f * tau)[:, None])
    j_c = torch.cat([j_rot, a * f], -1) * free[:, None, None, None]  # (N, P, 2, 6)
    j_x = a @ rot[:, None]  # (N, P, 2, 3)
    j_f = torch.stack([x / z, y / z], -1)[..., None] + a @ tau[:, None, :, None]  # (N, P, 2, 1)
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
    """The focal's entry of the inverse normal matrix (unit residual variance), px^2; infinite where the normal
    matrix is singular even so (the focal is not measured)."""
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

    problem = _Problem(points2d, cx, cy, 1.0)
    err = problem.residuals(torch.as_tensor(fit.rotation), torch.as_tensor(fit.translation) / fit.focal,
                            torch.as_tensor(fit.points3d), torch.tensor(fit.focal, dtype=torch.float64))[0]
    return fit.used & ~find_outliers(err.norm(dim=-1).numpy(), fit.used, factor)


@dataclass
class FocalFromPoints:
    """The focal measured on the tracked points, with how sure it is and whether it is used."""

    focal: float  # px, the whole clip's
    std_pct: float  # the standard deviation, % of the focal (independent track errors: a lower bound)
    halves: list = field(default_factory=list)  # px, each half of the clip fitted alone ([] when not run)
    halves_difference_pct: float | None = None
    parts: list = field(default_factory=list)  # px, fitted with each part of the head left out ([] when not run)
    parts_std_pct: float | None = None  # the jackknife standard deviation over the parts, % of the focal
    rms_px: float = 0.0
    frames: int = 0
    points: int = 0
    used: bool = False
    reasons: list = field(default_factory=list)  # why it is not used

    def to_dict(self) -> dict:
        std_pct = round(self.std_pct, 2) if math.isfinite(self.std_pct) else None  # None: not measurable at all
        return {"focal_points": round(self.focal, 2), "focal_points_std_pct": std_pct,
                "focal_points_halves": [round(h, 1) for h in self.halves],
                "focal_points_halves_difference_pct": (None if self.halves_difference_pct is None
                                                       else round(self.halves_difference_pct, 2)),
                "focal_points_parts": [round(p, 1) for p in self.parts],
                "focal_points_parts_std_pct": (None if self.parts_std_pct is None else round(self.parts_std_pct, 2)),
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
    """The focal fitted again with each part of the head (:func:`head_parts`) left out, from ``fit``'s solution
    and observations, and the jackknife standard deviation of the focal over them, % of ``fit.focal``."""
    part = head_parts(points2d[reference], fit.used.any(0))
    found = []
    for k in range(PART_GRID[0] * PART_GRID[1]):
        kept = fit.used & (part != k)[None]
        found.append(fit_focal(points2d, kept, fit.points3d, fit.rotation, fit.translation, fit.focal, cx, cy,
                               reference, opts.huber_px, opts.iterations).focal)
    values = np.asarray(found)
    std = math.sqrt((len(values) - 1) / len(values) * ((values - values.mean()) ** 2).sum())
    return found, 100 * std / fit.focal


def measure_focal(points2d: np.ndarray, visible: np.ndarray, points3d: np.ndarray, rotation: np.ndarray,
                  translation: np.ndarray, focal: float, cx: float, cy: float, reference: int, opts,
                  progress: bool = False) -> FocalFromPoints:
    """The focal of the tracked points on at most ``opts.frames`` frames spread over the clip (the reference among
    them), the whole clip and then each half of it, and whether to use it.

    Args:
        points2d: (N, P, 2) tracks px; visible: (N, P); points3d (P, 3), rotation (N, 3, 3), translation (N, 3):
            the start (the landmark fit at ``focal`` px; points back-projected on it).
        opts: ``tracker.focal_points`` (:class:`synctalk.stabilizer.options.FocalPointsOptions`).
    It is not used (the landmark focal is kept, and the reasons are given) when its standard deviation (from the
    normal matrix, or over the parts of the head: :func:`jackknife_parts`) is over ``opts.max_std_pct`` % (too
    little head motion to see perspective, or tracks whose errors mimic it), when the halves differ by more than
    ``opts.max_halves_pct`` % from each other or from the whole clip's, or when it lands outside
    ``opts.min_ratio``-``opts.max_ratio`` times the landmark focal.
    """
    ids = focal_frames(len(points2d), opts.frames, reference)
    ref = int(np.searchsorted(ids, reference))
    halves = [part for part in np.array_split(np.arange(len(ids)), 2)]
    jobs = [np.arange(len(ids))] + ([np.unique(np.r_[h, ref]) for h in halves] if opts.check_halves else [])
    results = []
    for job in tqdm(jobs, desc="focal from points", disable=not progress):
        sel = ids[job]
        used = visible[sel] & (visible[sel].sum(0) >= MIN_VIEWS)[None]
        start = (points3d, rotation[sel], translation[sel], focal)
        fit = None
        for round_ in range(max(opts.rounds, 1)):
            fit = fit_focal(points2d[sel], used, *start, cx, cy, int(np.searchsorted(sel, reference)), opts.huber_px,
                            opts.iterations)
            if round_ + 1 < opts.rounds and opts.outlier_factor > 0:
                used = drop_outliers(fit, points2d[sel], cx, cy, opts.outlier_factor)
                start = (fit.points3d, fit.rotation, fit.translation, fit.focal)
        results.append(fit)
    whole = results[0]
    out = FocalFromPoints(whole.focal, 100 * whole.std_px / whole.focal, rms_px=whole.rms_px, frames=len(ids),
                          points=int(whole.used.any(0).sum()))
    if len(results) == 3:
        out.halves = [results[1].focal, results[2].focal]
        out.halves_difference_pct = 100 * abs(out.halves[0] - out.halves[1]) / whole.focal
    if opts.check_parts:
        out.parts, out.parts_std_pct = jackknife_parts(whole, points2d[ids], ref, cx, cy, opts)
    if out.std_pct > opts.max_std_pct:
        out.reasons.append(f"its standard deviation is {out.std_pct:.1f}% (limit {opts.max_std_pct}%): the head "
                           f"moves too little for the perspective to be measured")
    if out.parts_std_pct is not None and out.parts_std_pct > opts.max_std_pct:
        out.reasons.append(f"its standard deviation over the parts of the head is {out.parts_std_pct:.1f}% (limit "
                           f"{opts.max_std_pct}%): the tracks of different parts of the head disagree (compressed "
                           f"skin texture, moving hair or skin)")
    if out.halves_difference_pct is not None and out.halves_difference_pct > opts.max_halves_pct:
        out.reasons.append(f"the halves of the clip give {out.halves[0]:.0f} and {out.halves[1]:.0f} px "
                           f"({out.halves_difference_pct:.0f}% apart, limit {opts.max_halves_pct}%)")
    if out.halves:
        apart = 100 * abs(whole.focal - np.mean(out.halves)) / whole.focal
        if apart > opts.max_halves_pct:
            out.reasons.append(f"the whole clip's focal is {apart:.0f}% from its halves' mean (limit "
                               f"{opts.max_halves_pct}%)")
    if not opts.min_ratio * focal <= whole.focal <= opts.max_ratio * focal:
        out.reasons.append(f"it is outside {opts.min_ratio}-{opts.max_ratio} x the landmark focal ({focal:.0f} px)")
    out.used = not out.reasons
    return out
