"""The SyncTalk head: an audio- and expression-conditioned tri-plane hash NeRF.

Per frame the field is conditioned on
* an audio embedding: each frame's window of audio features goes through
  :class:`AudioNet`, and :class:`AudioAttNet` mixes the embeddings of neighbouring frames
  (the temporal smoother);
* the upper-face expression values (blendshapes or AU45);
* a small per-frame latent code (the mean code for frames not trained on).

Every point weighs the audio channels and the expression values with its own attention
(audio-spatial and expression attention, computed from the point's position encoding),
so the field can learn that audio drives the mouth and blinks drive the eyes. The
rendered attention maps are what the region-masked attention losses act on. An
uncertainty head gives each ray a confidence used to re-weight the photometric loss.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from synctalk.models.encoding import TriPlaneHashEncoding, spherical_harmonics
from synctalk.models.occupancy import OccupancyGrid
from synctalk.models.rendering import MARCH_SAMPLES, render_rays, render_rays_rgb


MLP_PRECISIONS = ("auto", "bf16", "fp32")


@functools.lru_cache(maxsize=None)
def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` ('cpu', 'cuda') multiplies bfloat16 matrices in hardware: AVX512-BF16 or AMX on a
    CPU (elsewhere oneDNN emulates bf16, slower than float32), bf16 tensor cores on a GPU (Ampere and later)."""
    if device_type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private: absent in some torch builds
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return False


class MLP(nn.Sequential):
    """Linear layers with ReLU between them, multiplied in float32 or bfloat16.

    ``precision``: ``fp32``; ``bf16`` (inputs, weights and activations in bfloat16 with float32 accumulation:
    about twice the speed of float32 for these 64-wide layers on a CPU with AVX512-BF16); ``auto``: bf16 where
    the device does it natively (:func:`native_bf16`), else fp32. ``fp32_outputs``: the first outputs that the
    last layer computes in float32 even under bf16 (a raw density of 10 has bf16 steps of 6%; the other
    outputs, e.g. geometry features feeding another bf16 network, need no more than bf16).
    The parameters (and so checkpoints) and the output are float32 whatever the precision."""

    def __init__(self, *layers: nn.Module, precision: str = "fp32", fp32_outputs: int = 0):
        super().__init__(*layers)
        if precision not in MLP_PRECISIONS:
            raise ValueError(f"mlp precision must be one of {', '.join(MLP_PRECISIONS)}, got {precision}")
        self.precision = precision
        self.fp32_outputs = fp32_outputs

    def compute_dtype(self, device: torch.device) -> torch.dtype:
        if self.precision == "bf16" or (self.precision == "auto" and native_bf16(device.type)):
            return torch.bfloat16
        return torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(P, in_dim) -> (P, out_dim), float32."""
        dtype = self.compute_dtype(x.device)
        if dtype == torch.float32:
            return super().forward(x)
        rows = x.shape[0]
        # oneDNN builds a kernel per matrix shape: pad the rows to one of 16 sizes per octave (at most 6% more)
        # so that the varying number of samples per step reuses a few cached kernels
        x = F.pad(x.to(dtype), (0, 0, 0, -rows % max(1 << max(rows.bit_length() - 5, 0), 1)))
        *hidden, output = self
        for layer in hidden:
            x = F.linear(x, layer.weight.to(dtype), layer.bias.to(dtype)) if isinstance(layer, nn.Linear) else layer(x)
        k = self.fp32_outputs
        if k >= output.out_features:
            return output(x[:rows].float())
        out = F.linear(x, output.weight[k:].to(dtype), output.bias[k:].to(dtype))[:rows].float()
        if k:
            out = torch.cat([F.linear(x[:rows].float(), output.weight[:k], output.bias[:k]), out], -1)
        return out


def mlp(in_dim: int, hidden: int, out_dim: int, num_layers: int, precision: str = "fp32",
        fp32_outputs: int = 0) -> MLP:
    """``num_layers`` linear layers with ReLU between them (see :class:`MLP` for ``precision``, ``fp32_outputs``)."""
    dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
    layers: list[nn.Module] = []
    for i in range(num_layers):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < num_layers - 1:
            layers.append(nn.ReLU(inplace=True))
    return MLP(*layers, precision=precision, fp32_outputs=fp32_outputs)


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


class AudioAttNet(nn.Module):
    """Temporal smoother: attention weights over the audio embeddings of neighbouring frames.

    Convolutions over the embedding channels score each of the ``length`` frames; a linear
    layer across frames and a softmax turn the scores into weights that sum to one.
    """

    def __init__(self, dim: int, length: int):
        super().__init__()
        layers: list[nn.Module] = []
        channels = dim
        while channels > 1:
            out = max(channels // 2, 1)
            layers += [nn.Conv1d(channels, out, 3, padding=1), nn.LeakyReLU(0.02, inplace=True)]
            channels = out
        self.score = nn.Sequential(*layers)
        self.mix = nn.Linear(length, length)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Args: embeddings (..., length, dim) in time order, any leading batch dimensions. Returns the smoothed
        embeddings (..., dim)."""
        batch = embeddings.reshape(-1, *embeddings.shape[-2:])  # (B, length, dim)
        scores = self.score(batch.transpose(1, 2))[:, 0]  # (B, length)
        weights = torch.softmax(self.mix(scores), -1)
        return (weights[:, None] @ batch)[:, 0].reshape(*embeddings.shape[:-2], -1)


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


EXPRESSION_REGIONS = ("face", "upper_face")


class HeadNeRF(nn.Module):
    """Audio- and expression-conditioned radiance field of the head.

    Args:
        encoding: the tri-plane hash encoding of positions.
        audio_in_dim, audio_window: shape of one frame's audio features (window, in_dim).
        eye_dim: number of upper-face values (the blendshape set).
        num_frames: training frames (one latent code each; 0 for none).
        audio_dim: size of the audio embedding fed to the density network.
        smooth_frames: frames mixed by the temporal smoother (1: no smoothing; 8 in SyncTalk).
        latent_dim: size of the per-frame latent code fed to the colour network (0: none).
        attention_hidden: width of the two attention networks.
        hidden, num_layers: density network width and depth.
        geo_feat_dim: geometry feature passed to the colour network.
        color_hidden, color_layers: colour network width and depth.
        sh_degree: spherical-harmonics degree of the view direction encoding.
        num_samples: samples per ray; bound: half-size of the scene box (NeRF units).
        density_bias: added to the raw density before exp(); a negative value starts the
            field nearly transparent (with 0 the box starts opaque and training can collapse
            to an empty field).
        mouth_dim: size of the mouth read from the audio embedding by a linear head (:meth:`predict_mouth`,
            the auxiliary target that ties the audio branch to the subject's mouth blendshapes; 0: none).
        mouth_condition: the density network also sees that predicted mouth (mouth_dim values, read from the
            audio alone, so new audio drives it the same way), beside the audio embedding.
        mouth_only: with ``mouth_condition``, the density network sees the audio only through the predicted
            mouth (no audio embedding): the mouth blendshapes are the one path from the audio to the face.
        mlp_precision: ``auto`` | ``bf16`` | ``fp32``: how the field's MLPs multiply (see :class:`MLP`).
    """

    def __init__(self, encoding: TriPlaneHashEncoding, audio_in_dim: int, audio_window: int, eye_dim: int,
                 num_frames: int = 0, audio_dim: int = 32, smooth_frames: int = 8, latent_dim: int = 4,
                 attention_hidden: int = 32, hidden: int = 64, num_layers: int = 3, geo_feat_dim: int = 64,
                 color_hidden: int = 64, color_layers: int = 2, sh_degree: int = 4, num_samples: int = 32,
                 bound: float = 1.0, density_bias: float = -2.0, mouth_dim: int = 0, mouth_condition: bool = False,
                 mouth_only: bool = False,
                 expression_region: str = "face", mlp_precision: str = "auto"):
        super().__init__()
        if expression_region not in EXPRESSION_REGIONS:
            raise ValueError(f"expression_region must be one of {', '.join(EXPRESSION_REGIONS)}, got {expression_region}")
        self.expression_region = expression_region
        if expression_region == "upper_face":  # set from the training data before training (set_upper_face_plane)
            self.register_buffer("upper_face_plane", torch.zeros(5))
        self._upper_face_plane_checked = False
        if smooth_frames < 1:
            raise ValueError(f"smooth_frames must be at least 1, got {smooth_frames}")
        self.density_bias = density_bias
        self.encoding = encoding
        self.audio_net = AudioNet(audio_in_dim, audio_window, audio_dim)
        self.smooth_frames = smooth_frames
        self.audio_att_net = AudioAttNet(audio_dim, smooth_frames) if smooth_frames > 1 else None
        enc_dim = encoding.output_dim
        if mouth_condition and not mouth_dim:
            raise ValueError("mouth_condition needs the mouth head (mouth_dim > 0: model.loss.audio_mouth_weight > 0)")
        if mouth_only and not mouth_condition:
            raise ValueError("mouth_only needs mouth_condition (the density network must see the predicted mouth)")
        self.mouth_condition, self.mouth_only = mouth_condition, mouth_only
        # what the density network sees of the audio
        cond_dim = (0 if mouth_only else audio_dim) + (mouth_dim if mouth_condition else 0)
        self.audio_spatial_att = mlp(enc_dim, attention_hidden, cond_dim, 2, mlp_precision)
        self.eye_att = mlp(enc_dim, attention_hidden, eye_dim, 2, mlp_precision) if eye_dim else None
        self.density_net = mlp(enc_dim + cond_dim + eye_dim, hidden, 1 + geo_feat_dim, num_layers, mlp_precision,
                               fp32_outputs=1)  # the raw density
        self.latent_dim = latent_dim
        self.latent_codes = nn.Parameter(torch.randn(max(num_frames, 1), latent_dim) * 0.1) if latent_dim else None
        self.color_net = mlp(geo_feat_dim + sh_degree ** 2 + latent_dim, color_hidden, 3, color_layers, mlp_precision)
        self.uncertainty_net = mlp(enc_dim, attention_hidden, 1, 2, mlp_precision)
        self.sh_degree = sh_degree
        self.num_samples = num_samples
        self.bound = bound
        self.mouth_head = nn.Linear(audio_dim, mouth_dim) if mouth_dim else None

    def grid_parameters(self) -> list[nn.Parameter]:
        return list(self.encoding.parameters())

    def network_parameters(self) -> list[nn.Parameter]:
        grid = {id(p) for p in self.grid_parameters()}
        return [p for p in self.parameters() if id(p) not in grid]

    # ------------------------------------------------------------------ conditions
    def audio_embedding(self, audio: torch.Tensor) -> torch.Tensor:
        """Args: audio (smooth_frames, window, in_dim), the features of neighbouring frames
        (see :func:`synctalk.data.datamodule.temporal_context`), or (window, in_dim) for one frame. Returns (audio_dim,)."""
        if audio.dim() == 2:
            audio = audio[None]
        if len(audio) != self.smooth_frames:
            if len(audio) == 1:
                audio = audio.expand(self.smooth_frames, -1, -1)
            else:
                raise ValueError(f"expected audio of {self.smooth_frames} frames, got {len(audio)}")
        embeddings = self.audio_net(audio)  # (T, audio_dim)
        if self.audio_att_net is None:
            return embeddings[0]
        return self.audio_att_net(embeddings)

    def predict_mouth(self, audio: torch.Tensor) -> torch.Tensor:
        """The mouth blendshapes (mouth_dim,) read from the audio embedding of ``audio`` (as :meth:`audio_embedding`)."""
        if self.mouth_head is None:
            raise ValueError("this network has no mouth head (mouth_dim=0)")
        return self.mouth_head(self.audio_embedding(audio))

    def latent(self, frame: int | None) -> torch.Tensor:
        """The latent code of a training frame, or the mean code for other frames, (latent_dim,)."""
        if self.latent_codes is None:
            return torch.zeros(0, device=self.density_net[0].weight.device)
        if frame is None or frame >= len(self.latent_codes):
            return self.latent_codes.mean(0)
        return self.latent_codes[frame]

    def condition(self, audio: torch.Tensor, eye: torch.Tensor, frame: int | None = None,
                  mouth: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The frame condition: ``audio``, what the density network sees of the audio: the audio embedding
        (audio_dim,), followed by the mouth (mouth_dim,) when ``mouth_condition`` (the mouth alone when
        ``mouth_only``); eye values (eye_dim,); latent (latent_dim,). The mouth is the one the mouth head reads from
        the audio, or ``mouth`` (mouth_dim,) when given (training with the true blendshapes standing in)."""
        embedding = self.audio_embedding(audio)
        if self.mouth_condition:
            mouth = self.mouth_head(embedding) if mouth is None else mouth.to(embedding)
            embedding = mouth if self.mouth_only else torch.cat([embedding, mouth])
        return {"audio": embedding, "eye": eye, "latent": self.latent(frame)}

    def set_upper_face_plane(self, plane: torch.Tensor) -> None:
        """The upper face's boundary (5,): unit normal towards the brows (3), offset and half-width (NeRF units);
        see :meth:`SubjectFrames.upper_face_plane <synctalk.data.datamodule.SubjectFrames.upper_face_plane>`."""
        if self.expression_region != "upper_face":
            raise ValueError("only a network with expression_region=upper_face has an upper-face plane")
        self.upper_face_plane.copy_(plane.to(self.upper_face_plane))
        self._upper_face_plane_checked = False

    def upper_face_weight(self, points: torch.Tensor) -> torch.Tensor:
        """(P, 1) in [0, 1]: a smooth step across the plane through the nose base, from exactly 0 one width below it
        (the lips and the jaw: no leak the network could amplify) to 1 one width above it."""
        plane = self.upper_face_plane
        if not self._upper_face_plane_checked:  # once, not per call (a GPU would wait for the comparison)
            if plane[4] <= 0:
                raise RuntimeError("the upper-face plane is not set: call set_upper_face_plane with the training data's")
            self._upper_face_plane_checked = True
        t = ((points @ plane[:3] - plane[3]) / plane[4] * 0.5 + 0.5).clamp(0, 1)
        return (t * t * (3 - 2 * t))[:, None]

    # ------------------------------------------------------------------ field
    def _position_features(self, points: torch.Tensor):
        """What depends on position only: encoding (P, E), audio attention (P, cond), eye attention (P, eye_dim)."""
        enc = self.encoding(points)
        audio_att = torch.sigmoid(self.audio_spatial_att(enc))
        eye_att = torch.sigmoid(self.eye_att(enc)) if self.eye_att is not None else None
        if eye_att is not None and self.expression_region == "upper_face":
            eye_att = eye_att * self.upper_face_weight(points)
        return enc, audio_att, eye_att

    def _density_net(self, enc: torch.Tensor, audio_att: torch.Tensor, eye_att: torch.Tensor | None,
                     cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """Density-network output (P, 1 + geo) of position features under one frame condition."""
        parts = [enc, cond["audio"] * audio_att]
        if eye_att is not None:
            parts.append(cond["eye"] * eye_att)
        return self.density_net(torch.cat(parts, -1))

    def _trunk(self, points: torch.Tensor, cond: dict[str, torch.Tensor]):
        """Position encoding (P, E), density-network output (P, 1 + geo), attentions (P, audio_dim), (P, eye_dim)."""
        enc, audio_att, eye_att = self._position_features(points)
        return enc, self._density_net(enc, audio_att, eye_att, cond), audio_att, eye_att

    def field(self, points: torch.Tensor, dirs: torch.Tensor, cond: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Everything the field says about points (P, 3) seen along dirs (P, 3) under ``cond``.

        Returns ``density`` (P,), ``rgb`` (P, 3), ``uncertainty`` (P,) >= 0, and the
        per-point attention magnitudes ``audio_att`` (P,) and ``eye_att`` (P,) in [0, 1].
        """
        enc, h, audio_att, eye_att = self._trunk(points, cond)
        return {"density": TruncExp.apply(h[:, 0] + self.density_bias),
                "rgb": self._colour(h[:, 1:], dirs, cond),
                "uncertainty": F.softplus(self.uncertainty_net(enc)[:, 0]),
                "audio_att": audio_att.mean(-1),
                "eye_att": eye_att.mean(-1) if eye_att is not None else torch.zeros_like(h[:, 0])}

    def _colour(self, geo: torch.Tensor, dirs: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """rgb (P, 3) in [0, 1] of geometry features (P, geo_feat_dim) seen along dirs (P, 3)."""
        colour_in = [geo, spherical_harmonics(dirs, self.sh_degree)]
        if self.latent_dim:
            colour_in.append(cond["latent"].expand(geo.shape[0], -1))
        return torch.sigmoid(self.color_net(torch.cat(colour_in, -1)))

    def density(self, points: torch.Tensor, conds: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """The largest density (P,) of points (P, 3) over several frame conditions (for the occupancy grid).

        The position encoding and attentions are computed once for all conditions."""
        enc, audio_att, eye_att = self._position_features(points)
        raw = torch.stack([self._density_net(enc, audio_att, eye_att, c)[:, 0] for c in conds]).amax(0)
        return TruncExp.apply(raw + self.density_bias)

    def render(self, origins: torch.Tensor, dirs: torch.Tensor, background: torch.Tensor, audio: torch.Tensor,
               eye: torch.Tensor, frame: int | None = None, perturb: bool = False,
               occupancy: OccupancyGrid | None = None, mouth: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Render rays of one frame.

        Args:
            origins, dirs: (R, 3) rays in NeRF units; background: (R, 3) in [0, 1];
            audio: (smooth_frames, window, in_dim) the audio features around the frame
                (or (window, in_dim)); eye: (eye_dim,); frame: training frame index (for its
                latent code; None for the mean code).
            occupancy: skip samples in cells this grid marks empty;
            mouth: (mouth_dim,) the mouth the density network sees instead of the predicted one (see :meth:`condition`).
        Returns:
            ``rgb`` (R, 3), ``depth`` (R,), ``opacity`` (R,), ``weights`` (R, S), and per ray
            ``uncertainty``, ``audio_att``, ``eye_att`` (R,) (weighted by the samples' weights).
        """
        cond = self.condition(audio, eye, frame, mouth)
        return render_rays(lambda p, d: self.field(p, d, cond), origins, dirs, background, self.bound,
                           self.num_samples, perturb, occupancy)

    @torch.no_grad()
    def render_rgb(self, origins: torch.Tensor, dirs: torch.Tensor, background: torch.Tensor,
                   cond: dict[str, torch.Tensor], occupancy: OccupancyGrid | None = None, min_weight: float = 1e-4,
                   march_samples: int = MARCH_SAMPLES) -> torch.Tensor:
        """The colour (R, 3) of rays for an image: what :meth:`render` gives as ``rgb``, without the read-outs
        (uncertainty, attention), marched front to back with early ray termination and the colour network run
        only where a sample shows (:func:`~synctalk.models.rendering.render_rays_rgb`). ``cond``: the frame's
        :meth:`condition`, computed once for all of a frame's rays."""
        def density(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self._trunk(points, cond)[1]
            return TruncExp.apply(h[:, 0] + self.density_bias), h[:, 1:]

        return render_rays_rgb(density, lambda geo, d: self._colour(geo, d, cond), origins, dirs, background,
                               self.bound, self.num_samples, occupancy, min_weight, march_samples)
