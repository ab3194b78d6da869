"""Loading a dataset folder for training, validation and evaluation.

One training step uses one frame: its audio window and eye values condition the NeRF,
and ``rays_per_step`` of its pixels are rendered and compared with the ground truth.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from synctalk.data.layout import DatasetLayout, Transforms
from synctalk.errors import UserError
from synctalk.face.blendshape_sets import MOUTH_BLENDSHAPES, load_eye_features, load_mouth_targets
from synctalk.geometry import nearest_point_to_rays, pixel_rays

log = logging.getLogger(__name__)

MOUTH = slice(48, 68)  # 68-point layout
NOSE_TIP = 30
NOSE_BASE, CHIN, BROWS = 33, 8, slice(17, 27)
CLOSED_MOUTH_SHARE = 0.2  # the pause items' frames: this share of a split's frames, those with the lowest jawOpen
UPPER_FACE_EDGE = 0.03  # half the upper-face boundary's soft width, as a fraction of the chin-to-brow distance


def temporal_context(sequence: torch.Tensor, index: int, length: int) -> torch.Tensor:
    """Items ``index - length // 2 ... index + (length - 1) // 2`` of ``sequence`` (edges repeated).

    Args: sequence (N, ...). Returns (length, ...).
    """
    offsets = torch.arange(length) - length // 2
    return sequence[(index + offsets).clamp(0, len(sequence) - 1)]



def fold_transforms(layout: DatasetLayout, split: str, fold: tuple[int, ...]) -> Transforms:
    """The frames of ``split`` when the clip is cross-validated (``data.folds``): the dataset's training and
    held-out frames together in time order, cut into ``folds`` contiguous blocks of nearly equal length; block
    ``fold`` is the held-out split ("val"), the other blocks train, less ``gap`` frames on either side of the
    held-out block (frames whose audio windows reach into it). Run once per fold, the held-out blocks cover the
    whole clip (:func:`synctalk.metrics.lip_sync.pooled_lip_sync` reads them together).

    Args: fold: (fold, folds) or (fold, folds, gap), 0 <= fold < folds.
    """
    index, folds, gap = (*fold, 0)[:3]
    if folds < 2 or not 0 <= index < folds:
        raise UserError(f"data.fold={index} with data.folds={folds}: folds must be at least 2 and fold one of "
                        f"0..{max(folds - 1, 0)}")
    parts = [Transforms.read(layout.transforms(s)) for s in ("train", "val")]
    img_ids = np.concatenate([t.img_ids for t in parts])
    order = np.argsort(img_ids, kind="stable")
    n = len(order)
    if n < 3 * folds:
        raise UserError(f"data.folds={folds} leaves fewer than 3 held-out frames per fold in {n} frames")
    bounds = np.linspace(0, n, folds + 1).round().astype(int)
    held, trained = np.zeros(n, bool), np.ones(n, bool)
    held[bounds[index]:bounds[index + 1]] = True
    trained[max(bounds[index] - gap, 0):bounds[index + 1] + gap] = False
    keep = order[held if split == "val" else trained]
    return replace(parts[0], img_ids=img_ids[keep], aud_ids=np.concatenate([t.aud_ids for t in parts])[keep],
                   c2w=np.concatenate([t.c2w for t in parts])[keep])


def _read_rgb(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """Image as uint8 RGB(A) (H, W, C), resized to ``size`` (W, H) if given."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise UserError(f"cannot read image {path} (missing or corrupt)")
    if size is not None and (img.shape[1], img.shape[0]) != size:
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    if img.ndim == 2:
        img = img[..., None]
    code = {3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGBA}.get(img.shape[2])
    if code is not None:
        img = cv2.cvtColor(img, code)
    return img


class SubjectFrames:
    """One split of a dataset folder: cameras, conditions and (lazily decoded) images.

    Args:
        root: the dataset folder.
        split: "train" or "val".
        audio_name: features are read from ``aud_<audio_name>.npy`` (frames, window, dim).
        eye_names: blendshape names of the eye condition (or ["AU45"]).
        downscale: integer factor; images and intrinsics are reduced by it.
        scale: metres -> NeRF units.
        cache_mb: decoded images kept in memory (least recently used are dropped).
        last: keep only the split's last this many frames (None, or more than it has: all).
        fold: (fold, folds[, gap]): the split of a cross-validated clip (:func:`fold_transforms`); None: the
            dataset's.

    The features of pauses (:meth:`read_pause_audio`) are read when training asks for them.
    """

    def __init__(self, root: str | Path, split: str, audio_name: str, eye_names: list[str], downscale: int = 1,
                 scale: float = 4.0, smooth_window: int = 5, smooth_order: int = 3, cache_mb: int = 2048,
                 last: int | None = None, fold: tuple[int, ...] | None = None):
        self.layout = DatasetLayout(Path(root))
        self.layout.check_ready()
        tf = fold_transforms(self.layout, split, fold) if fold else Transforms.read(self.layout.transforms(split))
        if last is not None and last < len(tf.img_ids):
            if last < 1:
                raise UserError(f"cannot train on the last {last} frames of the {split} split")
            tf = replace(tf, img_ids=tf.img_ids[-last:], aud_ids=tf.aud_ids[-last:], c2w=tf.c2w[-last:])
        elif last is not None:
            log.warning("data.train_seconds keeps the last %d frames of the %s split, which has %d: all are used",
                        last, split, len(tf.img_ids))
        self.split, self.scale, self.downscale = split, scale, downscale
        self.img_ids, self.aud_ids = tf.img_ids, tf.aud_ids
        bc = cv2.imread(str(self.layout.background))
        if bc is None:
            raise UserError(f"cannot read {self.layout.background}")
        full_h, full_w = bc.shape[:2]
        if downscale < 1 or full_w % downscale or full_h % downscale:
            raise UserError(f"data.downscale={downscale} must divide the image size {full_w}x{full_h}")
        self.width, self.height = full_w // downscale, full_h // downscale
        self.focal, self.cx, self.cy = tf.focal / downscale, tf.cx / downscale, tf.cy / downscale
        self.c2w = torch.from_numpy(tf.c2w)
        feats_path = self.layout.audio_features(audio_name)
        if not feats_path.is_file():
            raise UserError(f"{feats_path} not found: this dataset has no '{audio_name}' audio features; "
                            f"run 'synctalk preprocess' on it again with the same audio_encoder (experiment=lip_sync "
                            f"reads audio_encoder=whisper): only the features stage runs")
        feats = np.load(feats_path)
        if feats.ndim == 2:  # one vector per frame, e.g. aud_ave.npy (frames, 512)
            feats = feats[:, None]
        if feats.ndim != 3:
            raise UserError(f"{feats_path} has shape {feats.shape}; expected (frames, window, dim)")
        if self.aud_ids.max() >= len(feats):
            raise UserError(f"{feats_path} covers {len(feats)} frames but {split} uses frame {self.aud_ids.max()}")
        self.all_audio = torch.from_numpy(feats.astype(np.float32))  # the whole track's features
        self.audio = self.all_audio[torch.from_numpy(np.asarray(self.aud_ids, np.int64))]
        self.audio_name = audio_name
        self.pause_audio = None  # (K, P, window, dim): read_pause_audio
        eye = load_eye_features(self.layout.root, eye_names, smooth_window, smooth_order)
        if self.img_ids.max() >= len(eye):
            raise UserError(f"eye features cover {len(eye)} frames but {split} uses frame {self.img_ids.max()}")
        self.eye = torch.from_numpy(eye[self.img_ids])
        mouth = load_mouth_targets(self.layout.root)
        self.mouth = torch.from_numpy(mouth[self.img_ids]) if mouth is not None and len(mouth) > self.img_ids.max() else None
        self.static_background = torch.from_numpy(_read_rgb(self.layout.background, self.size)).float() / 255
        self._cache: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()
        self._cache_bytes, self._cache_limit = 0, cache_mb * 2 ** 20
        self._landmarks: dict[int, np.ndarray] = {}
        self._has_torso: dict[int, bool] = {}

    def read_pause_audio(self) -> None:
        """Read ``pause_audio``, ``aud_<name>_pause.npy`` (floors, P, window, dim): the features of pauses, each
        noise floor alone (``audio_encoder.noise_floors_db``; :meth:`pause_context`)."""
        if self.pause_audio is not None:
            return
        path = self.layout.pause_audio_features(self.audio_name)
        if not path.is_file():
            raise UserError(f"{path} not found: data.pause_share > 0 trains on the features of pauses; run "
                            f"'synctalk preprocess' on this dataset again with audio_encoder={self.audio_name} and "
                            f"audio_encoder.noise_floors_db set (for example [-45,-35,-25]; only the features stage "
                            f"runs), or set data.pause_share=0")
        pause = np.load(path)
        if pause.ndim != 4 or pause.shape[2:] != tuple(self.all_audio.shape[1:]):
            raise UserError(f"{path} has shape {pause.shape}; expected (floors, frames, "
                            f"{', '.join(map(str, self.all_audio.shape[1:]))}) as aud_{self.audio_name}.npy: run the "
                            f"features stage again (synctalk preprocess)")
        self.pause_audio = torch.from_numpy(pause.astype(np.float32))

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def __len__(self) -> int:
        return len(self.img_ids)

    def _image_u8(self, kind: str, k: int) -> torch.Tensor:
        """Decoded image (H, W, C) uint8, kept in a bounded LRU cache."""
        key = (kind, k)
        if key in self._cache:
            self._cache.move_to_end(key)
        else:
            i = int(self.img_ids[k])
            path = {"gt": self.layout.gt_image, "original": self.layout.frame, "torso": self.layout.torso_image,
                    "face": self.layout.face_only_mask}[kind](i)
            image = torch.from_numpy(_read_rgb(path, self.size))
            self._cache[key] = image
            self._cache_bytes += image.numel()
            while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
                _, dropped = self._cache.popitem(last=False)
                self._cache_bytes -= dropped.numel()
        return self._cache[key]

    def _image(self, kind: str, k: int, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Decoded image (H, W, C) as float in [0, 1], or its values (R, C) at ``pixels`` (R, 2) (u, v)."""
        image = self._image_u8(kind, k)
        if pixels is not None:
            image = image[pixels[:, 1], pixels[:, 0]]
        return image.float() / 255

    def gt(self, k: int, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Parsed ground truth (H, W, 3): the frame over the static background; (R, 3) at ``pixels`` (R, 2)."""
        return self._image("gt", k, pixels)

    def original(self, k: int) -> torch.Tensor:
        """The original frame (H, W, 3), hair and real background included."""
        return self._image("original", k)

    def background(self, k: int, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """What the head is rendered over (H, W, 3): the frame's torso on the static background;
        (R, 3) at ``pixels`` (R, 2) (u, v)."""
        static = self.static_background if pixels is None else self.static_background[pixels[:, 1], pixels[:, 0]]
        if k not in self._has_torso:
            self._has_torso[k] = self.layout.torso_image(int(self.img_ids[k])).is_file()
        if not self._has_torso[k]:
            return static
        torso = self._image("torso", k, pixels)
        alpha = torso[..., 3:]
        return torso[..., :3] * alpha + static * (1 - alpha)

    def face_mask(self, k: int) -> torch.Tensor:
        """Face-only mask (H, W) in [0, 1]."""
        return self._image("face", k)[..., 0]

    def landmarks(self, k: int) -> np.ndarray:
        """The 68 landmarks of frame k in pixels at this split's resolution, (68, 2) (cached)."""
        if k not in self._landmarks:
            path = self.layout.landmarks(int(self.img_ids[k]))
            if not path.is_file():
                raise UserError(f"{path} not found: the lips stage, the attention and patch losses and "
                                f"model.net.expression_region=upper_face "
                                f"need the landmarks that 'synctalk preprocess' writes")
            self._landmarks[k] = np.loadtxt(path)[:, :2] / self.downscale  # stored at full resolution
        return self._landmarks[k]

    def _box(self, points: np.ndarray, margin: float) -> tuple[int, int, int, int]:
        (u0, v0), (u1, v1) = points.min(0), points.max(0)
        mu, mv = (u1 - u0) * margin + 2, (v1 - v0) * margin + 2
        return (int(max(u0 - mu, 0)), int(max(v0 - mv, 0)), int(min(u1 + mu, self.width - 1)),
                int(min(v1 + mv, self.height - 1)))

    def mouth_box(self, k: int, margin: float = 0.25) -> tuple[int, int, int, int]:
        """Pixel box (u0, v0, u1, v1) around the mouth landmarks of frame k."""
        return self._box(self.landmarks(k)[MOUTH], margin)

    def face_box(self, k: int, margin: float = 0.1) -> tuple[int, int, int, int]:
        """Pixel box (u0, v0, u1, v1) around all landmarks of frame k."""
        return self._box(self.landmarks(k), margin)

    def lower_face(self, k: int, pixels: torch.Tensor) -> torch.Tensor:
        """Bool (R,): pixels (R, 2) inside the face box and below the nose tip (landmark 30)."""
        u0, v0, u1, v1 = self.face_box(k)
        u, v = pixels[:, 0], pixels[:, 1]
        return (u >= u0) & (u <= u1) & (v <= v1) & (v > float(self.landmarks(k)[NOSE_TIP, 1]))

    def landmark_point(self, ids, frames: np.ndarray) -> np.ndarray:
        """The 3D point (3,) in NeRF units closest to the rays through the mean of landmarks ``ids`` in ``frames``
        (the landmark triangulated over the head's motion; the head origin where the motion cannot tell)."""
        uv = np.stack([self.landmarks(int(k))[ids].reshape(-1, 2).mean(0) for k in frames])
        c2w = self.c2w[frames].numpy().astype(np.float64)
        cam = np.stack([(uv[:, 0] - self.cx) / self.focal, -(uv[:, 1] - self.cy) / self.focal, -np.ones(len(uv))], -1)
        dirs = np.einsum("nij,nj->ni", c2w[:, :3, :3], cam)
        return nearest_point_to_rays(c2w[:, :3, 3] * self.scale, dirs, np.zeros(3))

    def upper_face_plane(self, max_frames: int = 200) -> torch.Tensor:
        """The plane through the nose base (landmark 33) and the mean viewing direction, normal towards the
        brows: (5,) float32, normal (3), offset and the soft boundary's half-width in NeRF units
        (``normal . x - offset`` > 0 above the nose base).

        The landmarks are triangulated over up to ``max_frames`` frames of this split. The plane contains the mean
        viewing direction: a ray through the lips stays below it at every depth, and the depths the landmarks'
        rays hardly fix cannot tilt it."""
        frames = np.unique(np.linspace(0, len(self) - 1, min(max_frames, len(self))).round().astype(int))
        nose, chin, brows = (self.landmark_point(ids, frames) for ids in (NOSE_BASE, CHIN, BROWS))
        views = nose - self.c2w[frames, :3, 3].numpy().astype(np.float64) * self.scale
        view = (views / np.linalg.norm(views, axis=1, keepdims=True)).mean(0)
        view /= np.linalg.norm(view)
        up = brows - chin - ((brows - chin) @ view) * view
        length = float(np.linalg.norm(up))
        if not np.isfinite(length) or length < 1e-6:
            raise UserError(f"cannot place the upper face of {self.layout.root}: the chin and brow landmarks "
                            f"coincide; check the landmark overlays of the dataset")
        normal = up / length
        return torch.tensor([*normal, normal @ nose, UPPER_FACE_EDGE * length], dtype=torch.float32)

    def audio_context(self, k: int, length: int) -> torch.Tensor:
        """Audio features of the ``length`` frames around frame k, (length, window, dim)."""
        return temporal_context(self.audio, k, length)

    def pause_context(self, variant: int, p: int, length: int) -> torch.Tensor:
        """Features of the ``length`` frames around frame p of the variant-th noise floor alone (a pause in a room
        with that noise), (length, window, dim)."""
        return temporal_context(self.pause_audio[variant], p, length)

    def closed_mouth_frames(self, share: float = CLOSED_MOUTH_SHARE) -> torch.Tensor:
        """The frames of this split whose mouth is most closed: the ``share`` of them with the lowest ``jawOpen``
        (``bs.npy``), (M,) int64 indices into the split."""
        if self.mouth is None:
            raise UserError(f"data.pause_share > 0 pairs pauses with the closed-mouth frames, found by the "
                            f"blendshapes stage's bs.npy, which {self.layout.root} lacks: run the blendshapes stage "
                            f"(synctalk preprocess) or set data.pause_share=0")
        jaw = self.mouth[:, MOUTH_BLENDSHAPES.index("jawOpen")]
        count = max(1, int(round(share * len(jaw))))
        return torch.argsort(jaw, stable=True)[:count]

    def shifted_audio_context(self, k: int, shift: int, length: int) -> torch.Tensor:
        """Audio features of the ``length`` frames around the audio ``shift`` frames away from frame k's, taken from
        the dataset's whole track (reflected at its ends), (length, window, dim)."""
        n = len(self.all_audio)
        a = int(self.aud_ids[k]) + shift
        a = abs(a) if a < 0 else (2 * (n - 1) - a if a >= n else a)
        return temporal_context(self.all_audio, int(np.clip(a, 0, n - 1)), length)

    def rays(self, k: int, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rays (origins, dirs) of frame k through pixels (R, 2) (u, v)."""
        return pixel_rays(self.c2w[k], pixels, self.focal, self.cx, self.cy, self.scale)

    def normalised(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel centres (R, 2) mapped to [-1, 1] across the image."""
        size = torch.tensor([self.width, self.height], dtype=torch.float32)
        return (pixels.float() + 0.5) / size * 2 - 1

    def all_pixels(self) -> torch.Tensor:
        v, u = torch.meshgrid(torch.arange(self.height), torch.arange(self.width), indexing="ij")
        return torch.stack([u.reshape(-1), v.reshape(-1)], -1)


class TrainRays(Dataset):
    """Item k: rays of training frame k with their targets and conditions.

    Args:
        rays_per_step: random rays over the whole image (a share ``lips_ray_fraction`` of
            them inside the mouth box).
        audio_frames: neighbouring frames of audio features per item (the temporal smoother).
        patch_size: when > 0, a square patch of ``patch_size``^2 rays is appended after the
            random rays; successive items alternate between a patch inside the face box and
            one centred on the mouth (``patch_region`` says which).
        regions: add ``lower_face`` (R,) for the masked attention loss.
        mouth_frames: the same split at another resolution (usually the dataset's own): the mouth-box rays and
            the mouth patches are drawn from its pixels and images, the other rays from ``frames``. Rays are
            resolution-free, so both kinds train the same field; ``pixels`` then mixes the two grids.
        pause_share: the share of items that are a pause: one of the frames whose mouth is most closed
            (:meth:`SubjectFrames.closed_mouth_frames`) with the features of a noise floor alone
            (``frames.pause_audio``), so that the head learns its subject's closed mouth for the pauses of new
            audio, which a clip of continuous speech hardly shows.
    """

    def __init__(self, frames: SubjectFrames, rays_per_step: int, lips_ray_fraction: float = 0.0,
                 audio_frames: int = 1, patch_size: int = 0, regions: bool = False,
                 mouth_frames: SubjectFrames | None = None, pause_share: float = 0.0):
        if not 0.0 <= pause_share <= 1.0:
            raise UserError(f"data.pause_share={pause_share} must be in [0, 1]")
        self.pause_share, self.closed_mouth = pause_share, None
        if pause_share > 0:
            frames.read_pause_audio()
            self.closed_mouth = frames.closed_mouth_frames()
        self.frames, self.rays_per_step, self.lips_ray_fraction = frames, rays_per_step, lips_ray_fraction
        self.audio_frames, self.patch_size, self.regions = audio_frames, patch_size, regions
        self.mouth_frames = mouth_frames if mouth_frames is not None else frames
        if mouth_frames is not None and len(mouth_frames) != len(frames):
            raise ValueError("mouth_frames must be the same split as frames")
        if patch_size > min(frames.width, frames.height):
            raise UserError(f"stage.patch_size={patch_size} is larger than the {frames.width}x{frames.height} images")
        self._draws = 0

    def __len__(self) -> int:
        return len(self.frames)

    def _patch(self, f: SubjectFrames, k: int, region: str) -> torch.Tensor:
        """Pixels (P*P, 2) of ``f``, a patch, row-major, inside the face box or centred on the mouth."""
        p = self.patch_size
        if region == "mouth":
            u0, v0, u1, v1 = f.mouth_box(k)
            cu, cv = (u0 + u1) // 2 - p // 2, (v0 + v1) // 2 - p // 2
        else:
            u0, v0, u1, v1 = f.face_box(k)
            cu = int(torch.randint(u0, max(u1 - p, u0) + 1, ()))
            cv = int(torch.randint(v0, max(v1 - p, v0) + 1, ()))
        cu, cv = min(max(cu, 0), f.width - p), min(max(cv, 0), f.height - p)
        v, u = torch.meshgrid(torch.arange(cv, cv + p), torch.arange(cu, cu + p), indexing="ij")
        return torch.stack([u.reshape(-1), v.reshape(-1)], -1)

    def _rays(self, f: SubjectFrames, k: int, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-ray items of frame k of ``f`` at ``pixels`` (R, 2) (u, v)."""
        origins, dirs = f.rays(k, pixels)
        rays = {"pixels": pixels, "xy": f.normalised(pixels), "origins": origins, "dirs": dirs,
                "rgb": f.gt(k, pixels), "background": f.background(k, pixels),
                "static_background": f.static_background[pixels[:, 1], pixels[:, 0]]}
        if self.regions:
            rays["lower_face"] = f.lower_face(k, pixels)
        return rays

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        f, m = self.frames, self.mouth_frames
        pause = self.pause_share > 0 and float(torch.rand(())) < self.pause_share
        if pause:  # a closed-mouth frame in place of frame k
            k = int(self.closed_mouth[torch.randint(len(self.closed_mouth), ())])
        n_lips = int(self.rays_per_step * self.lips_ray_fraction)
        groups = [(f, torch.stack([torch.randint(0, f.width, (self.rays_per_step - n_lips,)),
                                   torch.randint(0, f.height, (self.rays_per_step - n_lips,))], -1))]
        if n_lips:
            u0, v0, u1, v1 = m.mouth_box(k)
            groups.append((m, torch.stack([torch.randint(u0, u1 + 1, (n_lips,)),
                                           torch.randint(v0, v1 + 1, (n_lips,))], -1)))
        item: dict[str, torch.Tensor] = {}
        if self.patch_size:  # the patch comes last: the patch losses read the last patch_size^2 rays
            region = "mouth" if self._draws % 2 else "face"
            self._draws += 1
            source = m if region == "mouth" else f
            groups.append((source, self._patch(source, k, region)))
            item["patch_region"] = torch.tensor(int(region == "mouth"))
        parts = [self._rays(frames, k, pixels) for frames, pixels in groups]
        item.update({key: torch.cat([part[key] for part in parts]) for key in parts[0]})
        if pause:
            variant = int(torch.randint(len(f.pause_audio), ()))
            audio = f.pause_context(variant, int(torch.randint(f.pause_audio.shape[1], ())), self.audio_frames)
        else:
            audio = f.audio_context(k, self.audio_frames)
        item.update({"c2w": f.c2w[k], "audio": audio, "eye": f.eye[k], "index": torch.tensor(k)})
        if f.mouth is not None:
            item["mouth"] = f.mouth[k]
        return item


class FrameIndices(Dataset):
    """Item j: the index of the j-th selected frame (whole frames are rendered by the system)."""

    def __init__(self, indices: list[int]):
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> int:
        return self.indices[j]


def evenly_spaced(n: int, count: int) -> list[int]:
    """``count`` indices spread over range(n) (all of them when count is 0 or >= n)."""
    if count <= 0 or count >= n:
        return list(range(n))
    return np.linspace(0, n - 1, count).round().astype(int).tolist()


class SubjectDataModule(pl.LightningDataModule):
    """Training rays and validation frames of one dataset folder.

    ``prepare``, when given, is called with the folder before it is read, to make it on first use (the
    synthetic subject's generator, for example).
    """

    def __init__(self, root: str, audio_name: str, eye_names: list[str], scale: float = 4.0, downscale: int = 1,
                 rays_per_step: int = 1024, val_frames: int = 4, lips_ray_fraction: float = 0.0,
                 smooth_window: int = 5, smooth_order: int = 3, prepare: Callable[[Path], object] | None = None, cache_mb: int = 2048,
                 audio_frames: int = 1, patch_size: int = 0, regions: bool = False,
                 mouth_downscale: int | None = None, pause_share: float = 0.0, train_last: int | None = None,
                 fold: tuple[int, ...] | None = None):
        super().__init__()
        self.ray_args = dict(lips_ray_fraction=lips_ray_fraction, audio_frames=audio_frames, patch_size=patch_size,
                             regions=regions, pause_share=pause_share)
        self.root = Path(root)
        self.prepare = prepare
        self.frame_args = dict(audio_name=audio_name, eye_names=list(eye_names), downscale=downscale, scale=scale,
                               smooth_window=smooth_window, smooth_order=smooth_order, cache_mb=cache_mb, fold=fold)
        self.rays_per_step, self.val_frames, self.train_last = rays_per_step, val_frames, train_last
        self.mouth_downscale = mouth_downscale if mouth_downscale not in (None, downscale) else None
        if self.mouth_downscale is not None and self.mouth_downscale < 1:
            raise UserError(f"data.mouth_downscale={mouth_downscale} must be a positive integer (1: the mouth rays at "
                            f"the dataset's resolution) or null (at data.downscale)")
        self.train_frames: SubjectFrames | None = None
        self.train_mouth_frames: SubjectFrames | None = None  # the training frames at mouth_downscale
        self.val: SubjectFrames | None = None

    def prepare_data(self) -> None:
        if self.prepare is not None:
            self.prepare(self.root)

    def setup(self, stage: str | None = None) -> None:
        if self.train_frames is None:
            self.train_frames = SubjectFrames(self.root, "train", **self.frame_args, last=self.train_last)
            if self.mouth_downscale is not None:
                self.train_mouth_frames = SubjectFrames(self.root, "train", last=self.train_last,
                                                        **{**self.frame_args, "downscale": self.mouth_downscale})
            self.val = SubjectFrames(self.root, "val", **self.frame_args)

    def frames(self, split: str) -> SubjectFrames:
        self.prepare_data()
        self.setup()
        return {"train": self.train_frames, "val": self.val}[split]

    def train_dataloader(self) -> DataLoader:
        rays = TrainRays(self.train_frames, self.rays_per_step, mouth_frames=self.train_mouth_frames, **self.ray_args)
        return DataLoader(rays, batch_size=None, shuffle=True, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(FrameIndices(evenly_spaced(len(self.val), self.val_frames)), batch_size=None)
