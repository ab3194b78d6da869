"""Positional encodings: the tri-plane multiresolution hash grid and spherical harmonics.

Two interchangeable backends share one interface and one output layout:
``backend="torch"`` (pure PyTorch, CPU and GPU) and ``backend="tcnn"`` (tiny-cuda-nn,
used when installed). The output of :class:`TriPlaneHashEncoding` is ordered
plane-major (xy, yz, xz), then level (coarse to fine), then feature.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path

import torch
from torch import nn

from synctalk import external

_HASH_PRIME = 2654435761
_HASH_PRIME_I32 = _HASH_PRIME - 2 ** 32  # same low 32 bits, fits int32
_PLANES = ((0, 1), (1, 2), (0, 2))  # xy, yz, xz
_KERNEL_SOURCE = Path(__file__).with_name("csrc") / "plane_hash_grid.cpp"
log = logging.getLogger(__name__)
_cpu_kernel_cache: list = []  # [module or None] once the first build was tried


def cpu_kernel():
    """The fused CPU lookup of :class:`TorchPlaneHashGrids` (``csrc/plane_hash_grid.cpp``), compiled with the
    system's C++ compiler on first use (about 20 s, then cached by torch in ``~/.cache/torch_extensions``, one
    build per kernel source: see :func:`_kernel_source_in_build_folder`); None, with one warning, where it cannot
    be built (the tensor-op path is used then)."""
    if not _cpu_kernel_cache:
        try:
            # importing cpp_extension warns on a CUDA build of torch without a GPU ("No CUDA runtime is found"),
            # which says nothing about this CPU-only kernel
            extension_log = logging.getLogger("torch.utils.cpp_extension")
            level = extension_log.level
            extension_log.setLevel(logging.ERROR)
            try:
                from torch.utils import cpp_extension
            finally:
                extension_log.setLevel(level)
            log.info("loading the fused CPU hash-grid kernel (built once per machine and source, about 20 s)")
            name, source = _kernel_source_in_build_folder(cpp_extension)
            module = cpp_extension.load(name=name, sources=[str(source)], extra_cflags=["-O3", "-fopenmp"],
                                        extra_ldflags=["-fopenmp"])
        except Exception as error:  # no compiler, no ninja, headers missing: the slower path still works
            log.warning("the fused CPU hash-grid kernel could not be built (%s); using tensor ops "
                        "(encoding.cpu_kernel=false hides this)", str(error).splitlines()[0] if str(error) else error)
            module = None
        _cpu_kernel_cache.append(module)
    return _cpu_kernel_cache[0]


def _kernel_source_in_build_folder(cpp_extension) -> tuple[str, Path]:
    """Extension name and source path of the CPU kernel's build. torch rebuilds an extension whenever its source
    path changes, so every copy of this package (a checkout, an installed wheel, a revision exported by
    ``benchmarks/speedup.py``) would rebuild the kernel whenever another copy ran last. The name carries a hash of
    the source and the source is copied into the build folder: copies with the same kernel share one build."""
    text = _KERNEL_SOURCE.read_bytes()
    name = f"synctalk_plane_hash_grid_{hashlib.sha256(text).hexdigest()[:12]}"
    source = Path(cpp_extension._get_build_directory(name, verbose=False)) / _KERNEL_SOURCE.name
    if not source.is_file() or source.read_bytes() != text:  # rewritten only when missing: ninja reads its time
        partial = source.with_name(f"{source.name}.{os.getpid()}.partial")
        partial.write_bytes(text)
        os.replace(partial, source)
    return name, source


_gpu_kernel_cache: list = []  # [module or None] once the import was tried


def gpu_kernel():
    """The Triton lookup of :class:`TorchPlaneHashGrids` on CUDA GPUs (:mod:`synctalk.models.triton_grid`,
    compiled by Triton on first use); None, with one warning, where Triton does not import (the tensor-op path is
    used then). A kernel that fails to compile on its first call is turned off the same way (:func:`_gpu_failed`)."""
    if not _gpu_kernel_cache:
        try:
            from synctalk.models import triton_grid
        except Exception as error:  # triton missing (it comes with PyPI's CUDA builds of torch) or broken
            log.warning("the Triton hash-grid kernel is not available (%s); using tensor ops on the GPU "
                        "(encoding.gpu_kernel=false hides this)", str(error).splitlines()[0] if str(error) else error)
            triton_grid = None
        _gpu_kernel_cache.append(triton_grid)
    return _gpu_kernel_cache[0]


def _gpu_failed(error: Exception) -> None:
    """Turn the Triton lookup off for this process after its first failure, with one warning."""
    log.warning("the Triton hash-grid kernel failed (%s: %s); using tensor ops on the GPU from now on "
                "(encoding.gpu_kernel=false hides this)", type(error).__name__,
                str(error).splitlines()[0] if str(error) else "")
    _gpu_kernel_cache[:] = [None]


class _TritonPlaneLookup(torch.autograd.Function):
    """:meth:`TorchPlaneHashGrids.forward`'s lookup in the Triton kernels; gradient for the table only."""

    @staticmethod
    def forward(ctx, uv, table, grids):
        ctx.save_for_backward(uv)
        ctx.grids, ctx.rows = grids, table.shape[0]
        return gpu_kernel().forward(uv, table, grids)

    @staticmethod
    def backward(ctx, grad):
        (uv,) = ctx.saved_tensors
        return None, gpu_kernel().backward(grad, uv, ctx.rows, ctx.grids), None


class _FusedPlaneLookup(torch.autograd.Function):
    """:meth:`TorchPlaneHashGrids.forward`'s lookup in the fused CPU kernel; gradient for the table only."""

    @staticmethod
    def forward(ctx, uv, table, grids):
        kernel = cpu_kernel()
        ctx.save_for_backward(uv)
        ctx.grids, ctx.rows = grids, table.shape[0]
        return kernel.forward(uv, table, grids.resolution, grids.offsets, grids.dense_side, grids.table_mask)

    @staticmethod
    def backward(ctx, grad):
        (uv,) = ctx.saved_tensors
        g = ctx.grids
        grad_table = cpu_kernel().backward(grad, uv, ctx.rows, g.resolution, g.offsets, g.dense_side, g.table_mask)
        return None, grad_table, None


def level_resolutions(num_levels: int, base_resolution: int, max_resolution: int) -> list[int]:
    """Grid resolution (cells per side) of every level, growing geometrically."""
    if num_levels == 1:
        return [base_resolution]
    growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / (num_levels - 1))
    return [int(math.floor(base_resolution * growth ** level)) for level in range(num_levels)]


class _TableInterpolation(torch.autograd.Function):
    """``sum_c weights[c] * table[index[c]]`` with a scatter-add backward.

    The generic backward of an embedding lookup (sort, then reduce) is the largest cost of a
    hash-grid training step on a CPU; here the table gradient is one scatter-add of the
    weighted output gradient, and the corner features are not kept for backward. Corners
    come first (corner-major), so the weighted sum runs over contiguous slices.
    """

    @staticmethod
    def forward(ctx, table, index, weights):
        ctx.save_for_backward(table if ctx.needs_input_grad[2] else None, index, weights)
        ctx.rows = table.shape[0]
        return (_gather(table, index) * weights[..., None]).sum(0)

    @staticmethod
    def backward(ctx, grad):
        table, index, weights = ctx.saved_tensors
        grad_table = grad_weights = None
        if ctx.needs_input_grad[0]:
            width = grad.shape[-1]
            spread = (grad[None] * weights[..., None]).reshape(-1, width)  # (C * M, F)
            flat = index.reshape(-1).long()
            if width == 1:
                grad_table = grad.new_zeros(ctx.rows).scatter_add_(0, flat, spread[:, 0])[:, None]
            else:
                grad_table = grad.new_zeros(ctx.rows, width).index_add_(0, flat, spread)
        if ctx.needs_input_grad[2]:
            grad_weights = (_gather(table, index) * grad[None]).sum(-1)
        return grad_table, None, grad_weights


def _gather(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of ``table`` (T, F) at ``index`` (...), (..., F); one-wide tables are gathered flat (faster)."""
    if table.shape[1] == 1:
        return table.view(-1).index_select(0, index.reshape(-1)).view(*index.shape, 1)
    return table.index_select(0, index.reshape(-1)).view(*index.shape, table.shape[1])


def interpolate_table(table: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum of table rows over corners.

    Args: table (T, F); index (C, ...) integer rows; weights (C, ...). Returns (..., F).
    Differentiable in ``table`` and ``weights``.
    """
    return _TableInterpolation.apply(table, index, weights)


class TorchPlaneHashGrids(nn.Module):
    """``num_planes`` 2D multiresolution hash grids in pure PyTorch, sharing one table.

    Coarse levels whose ``(res + 1)^2`` vertices fit in the table are stored densely;
    finer levels hash vertex coordinates into ``2**log2_hashmap_size`` entries.
    Features are bilinearly interpolated from the four surrounding vertices.
    ``cpu_kernel``: on a CPU, look up in one fused C++ pass (:func:`cpu_kernel`; the same numbers, about 3x less
    time for the lookup and its backward) instead of tensor ops; ``gpu_kernel``: on a CUDA GPU, in the Triton
    kernels (:func:`gpu_kernel`). Positions that need a gradient always use the tensor ops.
    """

    def __init__(self, num_levels: int, features_per_level: int, log2_hashmap_size: int,
                 base_resolution: int, max_resolution: int, num_planes: int = 3, cpu_kernel: bool = True,
                 gpu_kernel: bool = True):
        super().__init__()
        self.use_cpu_kernel = cpu_kernel
        self.use_gpu_kernel = gpu_kernel
        self.num_levels = num_levels
        self.features_per_level = features_per_level
        self.num_planes = num_planes
        table = 2 ** log2_hashmap_size
        res = level_resolutions(num_levels, base_resolution, max_resolution)
        sizes = [min((r + 1) ** 2, table) for r in res]
        level_offsets = torch.tensor([0] + sizes[:-1]).cumsum(0)
        per_plane = sum(sizes)
        # offsets[p, l]: first row of plane p, level l in the shared table
        offsets = level_offsets[None, :] + per_plane * torch.arange(num_planes)[:, None]
        num_dense = sum((r + 1) ** 2 <= table for r in res)  # dense levels come first (coarse to fine)
        side = torch.tensor(res[:num_dense], dtype=torch.int32) + 1
        self.num_dense = num_dense
        self.register_buffer("resolution", torch.tensor(res, dtype=torch.float32), persistent=False)
        self.register_buffer("offsets", offsets.to(torch.int32), persistent=False)
        self.register_buffer("dense_side", side, persistent=False)
        self.table_mask = table - 1
        self.embeddings = nn.Parameter(torch.empty(num_planes * per_plane, features_per_level).uniform_(-1e-4, 1e-4))

    @property
    def output_dim(self) -> int:
        return self.num_planes * self.num_levels * self.features_per_level

    def fused_on(self, device: torch.device) -> bool:
        """Whether lookups on ``device`` (of positions without gradient) run in the fused CPU kernel."""
        return (self.use_cpu_kernel and device.type == "cpu" and self.embeddings.dtype == torch.float32
                and cpu_kernel() is not None)

    def triton_on(self, device: torch.device) -> bool:
        """Whether lookups on ``device`` (of positions without gradient) run in the Triton kernels."""
        return (self.use_gpu_kernel and device.type == "cuda" and self.embeddings.dtype == torch.float32
                and gpu_kernel() is not None)

    def lookup(self, device: torch.device) -> str:
        """How the grid is read on ``device``: ``fused_cpu``, ``triton`` or ``tensor_ops``."""
        return "fused_cpu" if self.fused_on(device) else "triton" if self.triton_on(device) else "tensor_ops"

    def forward(self, uv: torch.Tensor) -> torch.Tensor:
        """Args: uv (N, planes, 2) in [0, 1]. Returns (N, planes * levels * features), plane-major."""
        if uv.dtype == torch.float32 and not uv.requires_grad:
            if self.fused_on(uv.device):
                return _FusedPlaneLookup.apply(uv, self.embeddings, self).flatten(1)
            if self.triton_on(uv.device):
                try:
                    return _TritonPlaneLookup.apply(uv, self.embeddings, self)
                except Exception as error:  # e.g. Triton cannot compile for this GPU: the tensor ops still work
                    _gpu_failed(error)
        res = self.resolution
        px, py = uv[..., 0, None] * res, uv[..., 1, None] * res  # (N, P, L) grid coordinates
        x0f = torch.minimum(px.floor(), res - 1).clamp_(min=0)
        y0f = torch.minimum(py.floor(), res - 1).clamp_(min=0)
        fx, fy = px - x0f, py - y0f
        x0, y0 = x0f.to(torch.int32), y0f.to(torch.int32)
        nd = self.num_dense
        # dense levels: row-major vertex index; hashed levels: x ^ (y * prime) in wrapping int32 (the masked
        # low bits are exact); masking leaves dense indices (< table size) unchanged
        side = self.dense_side
        base = x0[..., :nd] + y0[..., :nd] * side
        xh, hy0 = x0[..., nd:], y0[..., nd:] * _HASH_PRIME_I32
        xh1, hy1 = xh + 1, hy0 + _HASH_PRIME_I32
        idx = torch.stack([torch.cat([base, xh ^ hy0], -1), torch.cat([base + 1, xh1 ^ hy0], -1),
                           torch.cat([base + side, xh ^ hy1], -1), torch.cat([base + side + 1, xh1 ^ hy1], -1)])
        idx = (idx & self.table_mask) + self.offsets  # (4, N, P, L): corners (0,0), (1,0), (0,1), (1,1)
        gx, gy = 1 - fx, 1 - fy
        weights = torch.stack([gx * gy, fx * gy, gx * fy, fx * fy])  # (4, N, P, L)
        out = interpolate_table(self.embeddings, idx, weights)  # (N, P, L, F)
        return out.flatten(1)


class TcnnPlaneHashGrids(nn.Module):
    """The same plane grids on tiny-cuda-nn's fused HashGrid kernels (GPU only)."""

    def __init__(self, num_levels: int, features_per_level: int, log2_hashmap_size: int,
                 base_resolution: int, max_resolution: int, num_planes: int = 3):
        super().__init__()
        tcnn = external.require("tinycudann", "encoding backend 'tcnn'")
        growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / max(num_levels - 1, 1))
        config = {"otype": "HashGrid", "n_levels": num_levels, "n_features_per_level": features_per_level,
                  "log2_hashmap_size": log2_hashmap_size, "base_resolution": base_resolution,
                  "per_level_scale": growth, "interpolation": "Linear"}
        self.planes = nn.ModuleList(tcnn.Encoding(2, config, dtype=torch.float32) for _ in range(num_planes))
        self.num_levels = num_levels
        self.features_per_level = features_per_level
        self.num_planes = num_planes

    @property
    def output_dim(self) -> int:
        return self.num_planes * self.num_levels * self.features_per_level

    def lookup(self, device: torch.device) -> str:
        return "tcnn"

    def forward(self, uv: torch.Tensor) -> torch.Tensor:
        """Args: uv (N, planes, 2) in [0, 1]. Returns (N, planes * levels * features), plane-major."""
        return torch.cat([enc(uv[:, i]).float() for i, enc in enumerate(self.planes)], -1)


GRID_BACKENDS = {"torch": TorchPlaneHashGrids, "tcnn": TcnnPlaneHashGrids}


def plane_grids(backend: str, **kwargs) -> nn.Module:
    """A :class:`TorchPlaneHashGrids` or :class:`TcnnPlaneHashGrids` with the given sizes."""
    if backend not in GRID_BACKENDS:
        raise ValueError(f"unknown encoding backend {backend!r}; choose one of {sorted(GRID_BACKENDS)}")
    return GRID_BACKENDS[backend](**kwargs)


class TriPlaneHashEncoding(nn.Module):
    """Tri-plane hash encoding of points inside ``[-bound, bound]^3``.

    Args:
        backend: "torch" (default, runs everywhere) or "tcnn" (needs tiny-cuda-nn).
        bound: half-size of the scene box, NeRF units.
        cpu_kernel: torch backend on a CPU: the fused C++ lookup (:func:`cpu_kernel`) instead of tensor ops.
        gpu_kernel: torch backend on a CUDA GPU: the Triton lookup (:func:`gpu_kernel`) instead of tensor ops.
    """

    def __init__(self, backend: str = "torch", num_levels: int = 12, features_per_level: int = 1,
                 log2_hashmap_size: int = 14, base_resolution: int = 64, max_resolution: int = 512,
                 bound: float = 1.0, cpu_kernel: bool = True, gpu_kernel: bool = True):
        super().__init__()
        sizes = dict(num_levels=num_levels, features_per_level=features_per_level,
                     log2_hashmap_size=log2_hashmap_size, base_resolution=base_resolution,
                     max_resolution=max_resolution, num_planes=3)
        if backend == "torch":
            sizes.update(cpu_kernel=cpu_kernel, gpu_kernel=gpu_kernel)
        self.grid = plane_grids(backend, **sizes)
        self.bound = bound

    @property
    def output_dim(self) -> int:
        return self.grid.output_dim

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Args: points (N, 3) NeRF units. Returns features (N, output_dim)."""
        unit = ((points + self.bound) / (2 * self.bound)).clamp(0.0, 1.0)
        return self.grid(torch.stack([unit[:, list(p)] for p in _PLANES], 1))


def spherical_harmonics(dirs: torch.Tensor, degree: int = 4) -> torch.Tensor:
    """Real spherical harmonics of unit directions (tiny-cuda-nn's ordering).

    Args:
        dirs: (N, 3) unit vectors.
        degree: 1 to 4.
    Returns:
        (N, degree**2) coefficients.
    """
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree > 2:
        xy, xz, yz, x2, y2, z2 = x * y, x * z, y * z, x * x, y * y, z * z
        out += [1.0925484305920792 * xy, -1.0925484305920792 * yz, 0.94617469575755997 * z2 - 0.31539156525251999,
                -1.0925484305920792 * xz, 0.54627421529603959 * (x2 - y2)]
    if degree > 3:
        out += [0.59004358992664352 * y * (-3.0 * x2 + y2), 2.8906114426405538 * xy * z,
                0.45704579946446572 * y * (1.0 - 5.0 * z2), 0.3731763325901154 * z * (5.0 * z2 - 3.0),
                0.45704579946446572 * x * (1.0 - 5.0 * z2), 1.4453057213202769 * z * (x2 - y2),
                0.59004358992664352 * x * (-x2 + 3.0 * y2)]
    return torch.stack(out, -1)
