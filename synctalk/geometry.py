"""Camera and rotation helpers shared by the data, the models and the renderer.

Conventions (the same as the transforms json of the original SyncTalk / ER-NeRF):

* ``transform_matrix`` is a 4x4 **camera-to-world** matrix; the world frame is the
  head frame (the head sits at the origin and the camera moves around it).
* Camera axes follow OpenGL: x right, y up, the camera looks along -z.
* Image pixels: u to the right, v down; pixel centres at ``+0.5``.
* World units are metres; the NeRF works in ``scale * world`` so that the head fits
  inside the ``[-bound, bound]^3`` box.
"""
from __future__ import annotations

import numpy as np
import torch


def euler_to_matrix(euler: np.ndarray) -> np.ndarray:
    """Rotation matrices from Euler angles.

    Args:
        euler: (..., 3) angles in radians (pitch about x, yaw about y, roll about z).
    Returns:
        (..., 3, 3) rotation matrices ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)``.
    """
    euler = np.asarray(euler, dtype=np.float64)
    ax, ay, az = euler[..., 0], euler[..., 1], euler[..., 2]
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    one, zero = np.ones_like(ax), np.zeros_like(ax)
    rx = np.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).reshape(*ax.shape, 3, 3)
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(*ax.shape, 3, 3)
    rz = np.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).reshape(*ax.shape, 3, 3)
    return rz @ ry @ rx


def head_pose_to_c2w(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Camera-to-world matrices from head poses given in the camera frame.

    A head point ``X`` appears in the camera at ``rotation @ X + translation``.

    Args:
        rotation: (N, 3, 3) head-to-camera rotations.
        translation: (N, 3) head position in the camera frame, metres (z < 0).
    Returns:
        (N, 4, 4) camera-to-world (camera-to-head) matrices.
    """
    n = rotation.shape[0]
    c2w = np.tile(np.eye(4), (n, 1, 1))
    r_inv = np.transpose(rotation, (0, 2, 1))
    c2w[:, :3, :3] = r_inv
    c2w[:, :3, 3] = -np.einsum("nij,nj->ni", r_inv, translation)
    return c2w


def project_points(points_world: np.ndarray, c2w: np.ndarray, focal: float, cx: float, cy: float) -> np.ndarray:
    """Project world points into the image of a camera.

    Args:
        points_world: (N, P, 3) points, metres.
        c2w: (N, 4, 4) camera-to-world matrices.
        focal, cx, cy: intrinsics in pixels.
    Returns:
        (N, P, 2) pixel coordinates (u right, v down).
    """
    w2c = np.linalg.inv(c2w)
    cam = np.einsum("nij,npj->npi", w2c[:, :3, :3], points_world) + w2c[:, None, :3, 3]
    z = -cam[..., 2]
    u = focal * cam[..., 0] / z + cx
    v = -focal * cam[..., 1] / z + cy
    return np.stack([u, v], -1)


def pixel_rays(c2w: torch.Tensor, pixels: torch.Tensor, focal: float, cx: float, cy: float,
               scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through pixel centres.

    Args:
        c2w: (4, 4) camera-to-world matrix (world units: metres).
        pixels: (R, 2) integer pixel coordinates (u, v).
        focal, cx, cy: intrinsics in pixels.
        scale: world-to-NeRF scale applied to the ray origins.
    Returns:
        origins (R, 3) in NeRF units and unit directions (R, 3).
    """
    u = pixels[:, 0].to(c2w.dtype) + 0.5
    v = pixels[:, 1].to(c2w.dtype) + 0.5
    dirs_cam = torch.stack([(u - cx) / focal, -(v - cy) / focal, -torch.ones_like(u)], -1)
    dirs = dirs_cam @ c2w[:3, :3].T
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = (c2w[:3, 3] * scale).expand_as(dirs)
    return origins, dirs


def nearest_point_to_rays(origins: np.ndarray, dirs: np.ndarray, prior: np.ndarray, prior_weight: float = 1e-3
                          ) -> np.ndarray:
    """The point closest to a bundle of rays in the least-squares sense (a landmark seen from many cameras).

    Along directions the rays do not constrain (a head that hardly turns gives nearly parallel rays) the point
    stays near ``prior``: the system is ``sum_i (I - d_i d_i^T) x + w N x0 = sum_i (I - d_i d_i^T) o_i + w N x0``.

    Args:
        origins, dirs: (N, 3) ray origins and directions (any units); prior: (3,) fallback point.
    Returns:
        (3,) the point, in the rays' units.
    """
    d = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
    proj = np.eye(3)[None] - d[:, :, None] * d[:, None, :]  # (N, 3, 3) projections orthogonal to each ray
    w = prior_weight * len(d)
    a = proj.sum(0) + w * np.eye(3)
    b = np.einsum("nij,nj->i", proj, origins) + w * prior
    return np.linalg.solve(a, b)


def ray_box_intersection(origins: torch.Tensor, dirs: torch.Tensor, bound: float,
                         min_near: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances of rays through the box ``[-bound, bound]^3``.

    Args:
        origins, dirs: (R, 3) ray origins and unit directions.
    Returns:
        near, far: (R,) distances along the rays; ``far <= near`` where a ray misses.
    """
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (-bound - origins) * inv
    t1 = (bound - origins) * inv
    near = torch.minimum(t0, t1).amax(dim=-1).clamp(min=min_near)
    far = torch.maximum(t0, t1).amin(dim=-1)
    return near, far


def smooth_poses(c2w: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smoothed camera path.

    Translations are averaged with Gaussian weights over time (``sigma`` in frames, edges
    reflected); rotations are averaged the same way and projected back onto rotations
    (the nearest rotation to the weighted mean matrix, by SVD).

    Args: c2w (N, 4, 4). Returns (N, 4, 4).
    """
    if sigma <= 0 or len(c2w) < 2:
        return c2w.copy()
    radius = int(np.ceil(3 * sigma))
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    n = len(c2w)
    index = np.arange(n)[:, None] + offsets  # (N, K), reflected at the ends
    index = np.abs(index)
    index = np.where(index >= n, 2 * (n - 1) - index, index).clip(0, n - 1)
    mean = np.einsum("k,nkij->nij", weights, c2w[index][:, :, :3, :])  # (N, 3, 4)
    u, _, vt = np.linalg.svd(mean[:, :, :3])
    det = np.sign(np.linalg.det(u @ vt))
    u[:, :, -1] *= det[:, None]
    out = c2w.copy()
    out[:, :3, :3] = u @ vt
    out[:, :3, 3] = mean[:, :, 3]
    return out
