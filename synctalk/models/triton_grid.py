"""The tri-plane hash-grid lookup and its table gradient as Triton kernels (CUDA GPUs).

The same arithmetic as :meth:`TorchPlaneHashGrids.forward <synctalk.models.encoding.TorchPlaneHashGrids.forward>`
and the fused CPU kernel (``csrc/plane_hash_grid.cpp``): for every point, plane and level the four corner rows of
the shared table (dense levels: row-major vertex index; hashed levels: ``(x ^ y * 2654435761) & mask``) are
bilinearly interpolated in one pass, with no index or weight tensor in memory. The backward scatters the output
gradient into the table with atomic adds. Triton is a PyPI package with its own compiler (no CUDA toolkit needed);
with ``TRITON_INTERPRET=1`` the kernels run on CPU tensors, which is how the tests check them on any machine.

Import this module only where it is used (:func:`synctalk.models.encoding.gpu_kernel` does): Triton decides at
import time whether its kernels are compiled or interpreted.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 128  # points per program


@triton.jit
def _corners(u, v, resolution_ptr, offsets_ptr, side_ptr, p: tl.constexpr, level: tl.constexpr,
             LEVELS: tl.constexpr, NUM_DENSE: tl.constexpr, TABLE_MASK: tl.constexpr):
    """Table rows (int32) and bilinear weights of corners (0,0), (1,0), (0,1), (1,1) of the cell holding (u, v) at
    plane ``p`` and ``level``."""
    res = tl.load(resolution_ptr + level)
    offset = tl.load(offsets_ptr + p * LEVELS + level)
    px = u * res
    py = v * res
    x0f = tl.maximum(tl.minimum(tl.floor(px), res - 1.0), 0.0)
    y0f = tl.maximum(tl.minimum(tl.floor(py), res - 1.0), 0.0)
    fx = px - x0f
    fy = py - y0f
    gx = 1.0 - fx
    gy = 1.0 - fy
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    if level < NUM_DENSE:
        side = tl.load(side_ptr + level)
        r00 = x0 + y0 * side
        r10 = r00 + 1
        r01 = r00 + side
        r11 = r01 + 1
    else:  # wrapping uint32 hash; the masked low bits are what the int32 tensor ops compute
        xu = x0.to(tl.uint32)
        x1u = xu + 1
        hy0 = y0.to(tl.uint32) * 2654435761
        hy1 = hy0 + 2654435761
        r00 = ((xu ^ hy0) & TABLE_MASK).to(tl.int32)
        r10 = ((x1u ^ hy0) & TABLE_MASK).to(tl.int32)
        r01 = ((xu ^ hy1) & TABLE_MASK).to(tl.int32)
        r11 = ((x1u ^ hy1) & TABLE_MASK).to(tl.int32)
    return (r00 + offset, r10 + offset, r01 + offset, r11 + offset, gx * gy, fx * gy, gx * fy, fx * fy)


@triton.jit
def _plane_grid(uv_ptr, table_ptr, values_ptr, resolution_ptr, offsets_ptr, side_ptr, n,
                PLANES: tl.constexpr, LEVELS: tl.constexpr, NUM_DENSE: tl.constexpr, FEATURES: tl.constexpr,
                TABLE_MASK: tl.constexpr, BACKWARD: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """Forward: values (n, PLANES * LEVELS * FEATURES), plane-major, = the lookup of uv (n, PLANES, 2) in [0, 1] in
    table (T, FEATURES). Backward: table += the output gradient held in values, spread on the corners."""
    points = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    valid = points < n
    for p in tl.static_range(PLANES):
        u = tl.load(uv_ptr + points * (2 * PLANES) + 2 * p, mask=valid, other=0.0)
        v = tl.load(uv_ptr + points * (2 * PLANES) + 2 * p + 1, mask=valid, other=0.0)
        for level in tl.static_range(LEVELS):
            r00, r10, r01, r11, w00, w10, w01, w11 = _corners(u, v, resolution_ptr, offsets_ptr, side_ptr, p, level,
                                                              LEVELS, NUM_DENSE, TABLE_MASK)
            for f in tl.static_range(FEATURES):
                at = values_ptr + points * (PLANES * LEVELS * FEATURES) + (p * LEVELS + level) * FEATURES + f
                if BACKWARD:
                    g = tl.load(at, mask=valid, other=0.0)
                    tl.atomic_add(table_ptr + r00 * FEATURES + f, w00 * g, mask=valid)
                    tl.atomic_add(table_ptr + r10 * FEATURES + f, w10 * g, mask=valid)
                    tl.atomic_add(table_ptr + r01 * FEATURES + f, w01 * g, mask=valid)
                    tl.atomic_add(table_ptr + r11 * FEATURES + f, w11 * g, mask=valid)
                else:
                    value = w00 * tl.load(table_ptr + r00 * FEATURES + f, mask=valid, other=0.0)
                    value += w10 * tl.load(table_ptr + r10 * FEATURES + f, mask=valid, other=0.0)
                    value += w01 * tl.load(table_ptr + r01 * FEATURES + f, mask=valid, other=0.0)
                    value += w11 * tl.load(table_ptr + r11 * FEATURES + f, mask=valid, other=0.0)
                    tl.store(at, value, mask=valid)


def _sizes(grids, backward: bool) -> dict:
    """The kernels' compile-time sizes, and no fused multiply-add: contracting ``u * res - x0`` into one FMA moves
    the cell fraction by up to half a unit in the last place of ``u * res`` (3e-5 at 512 cells), so the features
    would differ from the tensor ops' by up to 5e-5 (measured on an H200); without it they agree to rounding."""
    return dict(PLANES=grids.num_planes, LEVELS=grids.num_levels, NUM_DENSE=grids.num_dense,
                FEATURES=grids.features_per_level, TABLE_MASK=grids.table_mask, BACKWARD=backward, BLOCK_SIZE=BLOCK,
                enable_fp_fusion=False)


def _side(grids) -> torch.Tensor:
    """dense_side, never empty (a kernel argument must point somewhere even with no dense level)."""
    side = grids.dense_side
    return side if side.numel() else torch.zeros(1, dtype=torch.int32, device=side.device)


def forward(uv: torch.Tensor, table: torch.Tensor, grids) -> torch.Tensor:
    """Args: uv (N, planes, 2) float32 in [0, 1]; table (T, F) float32; grids: the
    :class:`~synctalk.models.encoding.TorchPlaneHashGrids` whose layout buffers (resolution, offsets,
    dense_side) describe the table. Returns (N, planes * levels * F) float32."""
    uv = uv.contiguous()
    n = uv.shape[0]
    out = torch.empty(n, grids.output_dim, dtype=torch.float32, device=uv.device)
    if n:
        _plane_grid[(triton.cdiv(n, BLOCK),)](uv, table.contiguous(), out, grids.resolution, grids.offsets,
                                              _side(grids), n, **_sizes(grids, backward=False))
    return out


def backward(grad: torch.Tensor, uv: torch.Tensor, rows: int, grids) -> torch.Tensor:
    """The table gradient (rows, F) of :func:`forward` for the output gradient grad (N, planes * levels * F)."""
    grad = grad.contiguous().float()
    n = uv.shape[0]
    grad_table = torch.zeros(rows, grids.features_per_level, dtype=torch.float32, device=grad.device)
    if n:
        _plane_grid[(triton.cdiv(n, BLOCK),)](uv.contiguous(), grad_table, grad, grids.resolution, grids.offsets,
                                              _side(grids), n, **_sizes(grids, backward=True))
    return grad_table
