"""An audio-conditioned head NeRF on a tri-plane hash encoding.

Per frame the field is conditioned on an audio embedding (from a window of audio
features around the frame) and on the eye / upper-face blendshape values. Densities
come from the tri-plane features plus the conditions; colours from a geometry feature
and the view direction.
"""
from __future__ import annotations

import torch
from torch import nn

from synctalk.models.encoding import TriPlaneHashEncoding, spherical_harmonics
from synctalk.models.rendering import render_rays


def mlp(in_dim: int, hidden: int, out_dim: int, num_layers: int) -> nn.Sequential:
    """``num_layers`` linear layers with ReLU between them."""
    dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
    layers: list[nn.Module] = []
    for i in range(num_layers):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < num_layers - 1:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class AudioNet(nn.Module):
    """Window of per-frame audio features -> one audio embedding.

    Args:
        in_dim: feature size per audio step (80 mel bins, 29 DeepSpeech logits, ...).
        window: audio steps per video frame window (a power of two, e.g. 16).
        out_dim: embedding size.
    """

    def __init__(self, in_dim: int, window: int, out_dim: int = 32, hidden: int = 64):
        super().__init__()
        if window < 1 or window & (window - 1):
            raise ValueError(f"audio window must be a power of two, got {window}")
        layers: list[nn.Module] = []
        channels = in_dim
        length = window
        while length > 1:
            layers += [nn.Conv1d(channels, hidden, 3, stride=2, padding=1), nn.LeakyReLU(0.02, inplace=True)]
            channels, length = hidden, length // 2
        self.convs = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(channels, hidden), nn.LeakyReLU(0.02, inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Args: features (B, window, in_dim). Returns (B, out_dim)."""
        x = self.convs(features.transpose(1, 2))  # (B, hidden, 1)
        return self.head(x.squeeze(-1))


class TruncExp(torch.autograd.Function):
    """exp() whose gradient is clamped, the usual density activation of hash-grid NeRFs."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(-15, 15))


class HeadNeRF(nn.Module):
    """Audio- and eye-conditioned radiance field of the head.

    Args:
        encoding: the tri-plane hash encoding of positions.
        audio_in_dim, audio_window: shape of one frame's audio features (window, in_dim).
        audio_dim: size of the audio embedding fed to the density network.
        eye_dim: number of upper-face values (the blendshape set).
        hidden, num_layers: density network width and depth.
        geo_feat_dim: geometry feature passed to the colour network.
        color_hidden, color_layers: colour network width and depth.
        sh_degree: spherical-harmonics degree of the view direction encoding.
        num_samples: samples per ray; bound: half-size of the scene box (NeRF units).
        density_bias: added to the raw density before exp(); a negative value starts the
            field nearly transparent (with 0 the box starts opaque and training can collapse
            to an empty field on the demo subject).
    """

    def __init__(self, encoding: TriPlaneHashEncoding, audio_in_dim: int, audio_window: int, eye_dim: int,
                 audio_dim: int = 32, hidden: int = 64, num_layers: int = 3, geo_feat_dim: int = 64,
                 color_hidden: int = 64, color_layers: int = 2, sh_degree: int = 4, num_samples: int = 32,
                 bound: float = 1.0, density_bias: float = -2.0):
        super().__init__()
        self.density_bias = density_bias
        self.encoding = encoding
        self.audio_net = AudioNet(audio_in_dim, audio_window, audio_dim)
        self.density_net = mlp(encoding.output_dim + audio_dim + eye_dim, hidden, 1 + geo_feat_dim, num_layers)
        self.color_net = mlp(geo_feat_dim + sh_degree ** 2, color_hidden, 3, color_layers)
        self.sh_degree = sh_degree
        self.num_samples = num_samples
        self.bound = bound

    def grid_parameters(self) -> list[nn.Parameter]:
        return list(self.encoding.parameters())

    def network_parameters(self) -> list[nn.Parameter]:
        grid = {id(p) for p in self.grid_parameters()}
        return [p for p in self.parameters() if id(p) not in grid]

    def field(self, points: torch.Tensor, dirs: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Density (P,) and colour (P, 3) at points (P, 3) seen along dirs (P, 3).

        ``condition`` (C,) is the frame's audio embedding and eye values, shared by all points.
        """
        feats = self.encoding(points)
        h = self.density_net(torch.cat([feats, condition.expand(points.shape[0], -1)], -1))
        density = TruncExp.apply(h[:, 0] + self.density_bias)
        rgb = torch.sigmoid(self.color_net(torch.cat([h[:, 1:], spherical_harmonics(dirs, self.sh_degree)], -1)))
        return density, rgb

    def condition(self, audio: torch.Tensor, eye: torch.Tensor) -> torch.Tensor:
        """Args: audio (window, in_dim), eye (eye_dim,). Returns the frame condition (audio_dim + eye_dim,)."""
        return torch.cat([self.audio_net(audio[None])[0], eye], -1)

    def render(self, origins: torch.Tensor, dirs: torch.Tensor, background: torch.Tensor, audio: torch.Tensor,
               eye: torch.Tensor, perturb: bool = False) -> dict[str, torch.Tensor]:
        """Render rays of one frame.

        Args:
            origins, dirs: (R, 3) rays in NeRF units; background: (R, 3) in [0, 1];
            audio: (window, in_dim) the frame's audio features; eye: (eye_dim,).
        Returns:
            dict with ``rgb`` (R, 3), ``depth`` (R,), ``opacity`` (R,), ``weights`` (R, S).
        """
        cond = self.condition(audio, eye)
        return render_rays(lambda p, d: self.field(p, d, cond), origins, dirs, background, self.bound,
                           self.num_samples, perturb)
