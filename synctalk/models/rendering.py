"""Volume rendering of a radiance field along rays (pure PyTorch, CPU and GPU).

Samples are placed stratified between each ray's entry into and exit from the scene
box; colours are alpha-composited front to back and whatever light passes through is
taken from the per-pixel background (the static background with the torso on it).
Samples outside the box, and with an occupancy grid those in empty cells, are never
sent to the field.
"""
from __future__ import annotations

from typing import Callable

import torch

from synctalk.geometry import ray_box_intersection
from synctalk.models.occupancy import OccupancyGrid

Field = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def sample_along_rays(origins: torch.Tensor, dirs: torch.Tensor, bound: float, num_samples: int,
                      perturb: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stratified sample depths inside the scene box.

    Returns:
        points (R, S, 3), depths (R, S) and interval lengths (R, S); rays that miss the
        box get zero-length intervals (so they contribute nothing).
    """
    near, far = ray_box_intersection(origins, dirs, bound)
    far = torch.maximum(far, near)
    steps = torch.linspace(0.0, 1.0, num_samples + 1, device=origins.device, dtype=origins.dtype)
    edges = near[:, None] + (far - near)[:, None] * steps  # (R, S+1)
    lower, upper = edges[:, :-1], edges[:, 1:]
    u = torch.rand_like(lower) if perturb else torch.full_like(lower, 0.5)
    depths = lower + (upper - lower) * u
    deltas = upper - lower
    points = origins[:, None, :] + dirs[:, None, :] * depths[..., None]
    return points, depths, deltas


def compositing_weights(density: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Each sample's share of the ray's colour (R, S): its opacity times the light that reaches it, from
    densities (R, S) >= 0 and interval lengths (R, S)."""
    alpha = 1.0 - torch.exp(-density * deltas)
    return alpha * light_reaching(alpha)[:, :-1]


def light_reaching(alpha: torch.Tensor) -> torch.Tensor:
    """(R, S + 1): the share of a ray's light that reaches each of its S samples of opacity ``alpha`` (R, S), front
    to back, and last what passes through them all."""
    return torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], -1), -1)


def composite(density: torch.Tensor, rgb: torch.Tensor, deltas: torch.Tensor, depths: torch.Tensor,
              background: torch.Tensor) -> dict[str, torch.Tensor]:
    """Alpha compositing.

    Args:
        density: (R, S) non-negative densities; rgb: (R, S, 3) in [0, 1];
        deltas, depths: (R, S); background: (R, 3).
    Returns:
        ``rgb`` (R, 3), ``depth`` (R,), ``opacity`` (R,) (sum of weights) and ``weights`` (R, S).
    """
    weights = compositing_weights(density, deltas)
    opacity = weights.sum(-1)
    color = (weights[..., None] * rgb).sum(-2) + (1.0 - opacity)[:, None] * background
    depth = (weights * depths).sum(-1)
    return {"rgb": color, "depth": depth, "opacity": opacity, "weights": weights}


def _field_samples(origins: torch.Tensor, dirs: torch.Tensor, bound: float, num_samples: int, perturb: bool,
                   occupancy: OccupancyGrid | None):
    """The samples of :func:`sample_along_rays` flattened (R * S, 3), their depths and intervals (R, S), and the
    flat indices of those the field is evaluated at: inside the box and, with a grid, in occupied cells."""
    points, depths, deltas = sample_along_rays(origins, dirs, bound, num_samples, perturb)
    flat_points = points.reshape(-1, 3)
    keep = deltas.reshape(-1) > 0
    if occupancy is not None:
        keep &= occupancy.is_occupied(flat_points)
    return flat_points, depths, deltas, keep.nonzero().squeeze(1)


def render_rays(field: Field, origins: torch.Tensor, dirs: torch.Tensor, background: torch.Tensor, bound: float,
                num_samples: int, perturb: bool, occupancy: OccupancyGrid | None = None) -> dict[str, torch.Tensor]:
    """Render rays through ``field(points (P, 3), dirs (P, 3))``.

    The field returns a dict with ``density`` (P,) and ``rgb`` (P, 3); any other (P,) entry
    (uncertainty, attention) is composited with the (detached) sample weights into a per-ray
    value, so losses on these read-outs train their own heads without moving the geometry
    (an uncertainty term could otherwise be lowered by emptying the field).
    ``samples`` in the result counts the samples the field was evaluated on.
    """
    flat_points, depths, deltas, index = _field_samples(origins, dirs, bound, num_samples, perturb, occupancy)
    r, s = depths.shape
    flat_dirs = dirs[:, None, :].expand(r, s, 3).reshape(-1, 3)
    values = field(flat_points[index], flat_dirs[index])
    dense = {k: v.new_zeros((r * s,) + v.shape[1:]).index_copy(0, index, v) for k, v in values.items()}
    out = composite(dense.pop("density").view(r, s), dense.pop("rgb").view(r, s, 3), deltas, depths, background)
    weights = out["weights"].detach()  # read-outs follow the geometry but never reshape it
    for key, value in dense.items():
        out[key] = (weights * value.view(r, s)).sum(-1)
    out["samples"] = torch.tensor(len(index))
    return out


MARCH_SAMPLES = 8  # samples per ray evaluated per step of the image path's front-to-back march


@torch.no_grad()
def render_rays_rgb(density_fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                    colour_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], origins: torch.Tensor,
                    dirs: torch.Tensor, background: torch.Tensor, bound: float, num_samples: int,
                    occupancy: OccupancyGrid | None = None, min_weight: float = 1e-4,
                    march_samples: int = MARCH_SAMPLES) -> torch.Tensor:
    """The colour (R, 3) of rays, for images: :func:`render_rays` without perturbation or read-outs, marched front
    to back with early ray termination, the colour evaluated only at the samples that show.

    ``density_fn(points (P, 3))`` gives densities (P,) and what the colour needs (P, G);
    ``colour_fn(that (V, G), dirs (V, 3))`` gives rgb (V, 3) in [0, 1]. The samples are evaluated
    ``march_samples`` per ray at a time, nearest first; a ray stops once the light still reaching it (its
    transmittance) is below ``min_weight`` (no sample behind could weigh more), and the colour is computed only
    where a sample's compositing weight exceeds ``min_weight`` (behind the surface and in nearly empty space it
    is not). The image differs from :func:`render_rays`'s by at most the weights left out plus the light of a
    stopped ray (each under ``min_weight``; 0: every sample, one pass). ``march_samples`` 0 or at least
    ``num_samples``: all samples in one pass.
    """
    flat_points, depths, deltas, index = _field_samples(origins, dirs, bound, num_samples, False, occupancy)
    r, s = depths.shape
    step = s if march_samples <= 0 or min_weight <= 0 else min(march_samples, s)
    rays, sample = torch.div(index, s, rounding_mode="floor"), index % s
    part = torch.div(sample, step, rounding_mode="floor")  # which step of the march evaluates each sample
    transmittance = torch.ones(r, device=origins.device, dtype=origins.dtype)
    color = torch.zeros(r, 3, device=origins.device, dtype=origins.dtype)
    for start in range(0, s, step):
        take = part == start // step
        if start:  # rays that have stopped take no more samples
            take &= transmittance[rays] >= min_weight
        picked = take.nonzero().squeeze(1)
        if not len(picked):
            continue
        p_rays, p_sample = rays[picked], sample[picked] - start
        width = min(step, s - start)
        density, colour_input = density_fn(flat_points[index[picked]])
        sigma = density.new_zeros(r, width)
        sigma[p_rays, p_sample] = density
        alpha = 1.0 - torch.exp(-sigma * deltas[:, start:start + width])
        passing = light_reaching(alpha)
        weights = alpha * passing[:, :-1] * transmittance[:, None]  # (R, width): as compositing_weights gives
        transmittance = transmittance * passing[:, -1]
        w = weights[p_rays, p_sample]
        shown = w > min_weight
        rgb = colour_fn(colour_input[shown], dirs[p_rays[shown]])
        color.index_add_(0, p_rays[shown], w[shown, None] * rgb)
    return color + transmittance[:, None] * background
