"""An occupancy grid over the scene box, so that ray samples in empty space are skipped.

The grid keeps, per cell, a decaying maximum of the density seen at random points in the
cell (the field is conditioned per frame, so densities of several random frames are
taken). A cell is empty when that density is below both the grid's mean and the density
that would give a sample an opacity of ``alpha_threshold``, and so are all its
neighbours (the occupied set is grown by one cell, because one random point per cell can
miss a surface that only grazes it). Until the first update every cell counts as occupied. Pure PyTorch (CPU and GPU).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class OccupancyConfig:
    """``model.occupancy``: the occupancy grid and its update schedule."""

    enabled: bool = True  # skip ray samples in empty cells
    resolution: int = 64  # cells per side
    alpha_threshold: float = 0.01  # a cell is empty when one sample there stays below this opacity
    start_step: int = 200  # first grid update (every cell counts as occupied before)
    interval: int = 16  # steps between updates
    cells_per_update: int = 65536  # random cells re-measured per update (0: all)
    frames_per_update: int = 2  # random training frames whose conditions are measured (max density)


class OccupancyGrid(nn.Module):
    """A ``resolution^3`` grid of cells over ``[-bound, bound]^3``.

    Args:
        resolution: cells per side (128 in SyncTalk; 64 is enough at CPU resolutions).
        bound: half-size of the scene box (NeRF units).
        alpha_threshold: a cell stays occupied while one sample there (spacing ``step``)
            would reach this opacity.
        step: typical sample spacing (NeRF units), e.g. ``2 * bound / samples_per_ray``.
        decay: the stored density decays by this factor at every update of the cell.
        cells_per_update: cells re-measured per update (all cells when 0 or larger).
    """

    def __init__(self, resolution: int = 64, bound: float = 1.0, alpha_threshold: float = 0.01,
                 step: float = 2.0 / 32, decay: float = 0.95, cells_per_update: int = 65536):
        super().__init__()
        self.resolution, self.bound, self.decay = resolution, bound, decay
        self.density_threshold = -math.log(1.0 - alpha_threshold) / step
        self.cells_per_update = cells_per_update
        cells = resolution ** 3
        self.register_buffer("density", torch.zeros(cells))
        self.register_buffer("occupied", torch.ones(cells, dtype=torch.bool))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def cell_index(self, points: torch.Tensor) -> torch.Tensor:
        """Flat cell index (P,) of points (P, 3); points outside the box are clamped to it."""
        r = self.resolution
        ijk = ((points + self.bound) / (2 * self.bound) * r).long().clamp(0, r - 1)
        return (ijk[:, 0] * r + ijk[:, 1]) * r + ijk[:, 2]

    def is_occupied(self, points: torch.Tensor) -> torch.Tensor:
        """Bool (P,): whether each point lies in an occupied cell."""
        return self.occupied[self.cell_index(points)]

    def cell_points(self, cells: torch.Tensor) -> torch.Tensor:
        """A random point inside each of the cells (C,), (C, 3) in NeRF units."""
        r = self.resolution
        ijk = torch.stack([cells // (r * r), (cells // r) % r, cells % r], -1).float()
        return (ijk + torch.rand_like(ijk)) / r * (2 * self.bound) - self.bound

    @torch.no_grad()
    def update(self, density_fn: Callable[[torch.Tensor], torch.Tensor], chunk: int = 16384) -> None:
        """Re-measure a random subset of cells with ``density_fn(points (P, 3)) -> (P,)`` and re-threshold."""
        total = self.density.numel()
        if 0 < self.cells_per_update < total:
            cells = torch.randint(0, total, (self.cells_per_update,), device=self.density.device)
        else:
            cells = torch.arange(total, device=self.density.device)
        measured = torch.cat([density_fn(self.cell_points(c)) for c in cells.split(chunk)])
        self.density[cells] = torch.maximum(self.density[cells] * self.decay, measured)
        threshold = min(float(self.density.mean()), self.density_threshold)
        r = self.resolution
        solid = (self.density > threshold).float().view(1, 1, r, r, r)
        # one random point per cell can miss a surface that only grazes it: grow by one cell
        self.occupied.copy_(F.max_pool3d(solid, 3, stride=1, padding=1).view(-1) > 0)
        self.updates += 1

    @property
    def occupied_fraction(self) -> float:
        return float(self.occupied.float().mean())
