"""The torso: a 2D field in image space, deformed by the head pose.

As in the released SyncTalk / ER-NeRF code, three learnable 3D anchor points in the head
frame are projected with each frame's camera; their image positions (encoded) and a
per-frame code drive a small MLP that offsets the pixel coordinates, and a 2D hash grid at
the offset position gives the torso colour and alpha. The torso is composited over the
static background, and the head over the torso.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from synctalk.models.encoding import plane_grids
from synctalk.models.head_nerf import mlp


def frequency_encoding(x: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """[x, sin(2^k pi x), cos(2^k pi x)] for k < num_freqs; (N, D) -> (N, D * (1 + 2 num_freqs))."""
    freqs = (2.0 ** torch.arange(num_freqs, device=x.device, dtype=x.dtype)) * math.pi
    angles = x[..., None] * freqs  # (N, D, F)
    return torch.cat([x, angles.sin().flatten(-2), angles.cos().flatten(-2)], -1)


class TorsoField(nn.Module):
    """Pose-deformed 2D torso field.

    Args:
        num_frames: training frames (one learnable code each).
        code_dim: size of the per-frame code.
        num_levels, features_per_level, log2_hashmap_size, base_resolution, max_resolution:
            sizes of the 2D hash grid.
        hidden: MLP width.
        backend: "torch" or "tcnn" for the hash grid.
    """

    def __init__(self, num_frames: int, code_dim: int = 8, num_levels: int = 16, features_per_level: int = 2,
                 log2_hashmap_size: int = 16, base_resolution: int = 16, max_resolution: int = 2048,
                 hidden: int = 32, backend: str = "torch"):
        super().__init__()
        self.anchors = nn.Parameter(torch.tensor([[0.01, 0.01, 0.1], [-0.1, -0.1, 0.1], [0.1, -0.1, 0.1]]) * 0.25)
        self.codes = nn.Embedding(num_frames, code_dim)
        nn.init.zeros_(self.codes.weight)
        self.grid = plane_grids(backend, num_levels=num_levels, features_per_level=features_per_level,
                                log2_hashmap_size=log2_hashmap_size, base_resolution=base_resolution,
                                max_resolution=max_resolution, num_planes=1)
        pos_dim, anchor_dim = 2 * (1 + 2 * 8), 6 * (1 + 2 * 3)
        self.deform_net = mlp(pos_dim + anchor_dim + code_dim, hidden, 2, 3)
        self.color_net = mlp(self.grid.output_dim + pos_dim + anchor_dim + code_dim, hidden, 4, 3)
        nn.init.zeros_(self.deform_net[-1].weight)
        nn.init.zeros_(self.deform_net[-1].bias)

    def projected_anchors(self, c2w: torch.Tensor) -> torch.Tensor:
        """Anchor positions in normalised image coordinates of a camera, (6,) = 3 x (x/z, y/z)."""
        w2c = torch.linalg.inv(c2w)
        cam = self.anchors @ w2c[:3, :3].T + w2c[:3, 3]
        return (cam[:, :2] / (-cam[:, 2:]).clamp(min=1e-3)).reshape(-1)

    def code(self, frame: int | None) -> torch.Tensor:
        """The code of a training frame, or the mean code for frames not trained on, (code_dim,)."""
        if frame is None:
            return self.codes.weight.mean(0)
        return self.codes.weight[frame]

    def forward(self, xy: torch.Tensor, c2w: torch.Tensor, code: torch.Tensor) -> dict[str, torch.Tensor]:
        """Torso at image points.

        Args:
            xy: (R, 2) pixel positions normalised to [-1, 1].
            c2w: (4, 4) the frame's camera-to-world (head) matrix.
            code: (code_dim,) the frame's code (see :meth:`code`).
        Returns:
            ``rgb`` (R, 3), ``alpha`` (R,) in [0, 1] and the deformation ``offset`` (R, 2).
        """
        anchors = frequency_encoding(self.projected_anchors(c2w)[None], 3).expand(len(xy), -1)
        code = code[None].expand(len(xy), -1)
        cond = torch.cat([frequency_encoding(xy, 8), anchors, code], -1)
        offset = self.deform_net(cond)
        warped = (xy + offset).clamp(-1, 1)
        feats = self.grid(((warped + 1) / 2)[:, None, :])
        h = self.color_net(torch.cat([feats, cond], -1))
        return {"rgb": torch.sigmoid(h[:, 1:]), "alpha": torch.sigmoid(h[:, 0]), "offset": offset}
