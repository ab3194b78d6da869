"""The synthetic subject: a rendered talking head with known ground truth.

No downloaded assets. A head (a human face mesh from :mod:`synctalk.synthetic.human_face` whose eyes blink,
brows rise and mouth opens with a generated speech-like audio track, on a ray-cast skull with hair) moves with a
known rotation and translation in front of a pinhole camera of known focal length; a
static neck and torso sit in front of a static background. The result is written in
the same dataset layout as real preprocessing (:mod:`synctalk.data.layout`) plus
``ground_truth.npz`` (focal, poses, 2D/3D landmarks, blink / brow / mouth curves) and
``face_template.npy`` (the neutral 68 landmarks in the head frame, for ``face_model=template``).
Everything is deterministic for a seed.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from synctalk.audio.features import SAMPLE_RATE, mel_windows, write_wav
from synctalk.data.layout import DatasetLayout, Transforms, split_train_val
from synctalk.errors import UserError
from synctalk.face.blendshape_sets import BLENDSHAPE_NAMES
from synctalk.face.facemesh import MESH_TO_68
from synctalk.face.segmentation import PARSING_COLORS
from synctalk.geometry import euler_to_matrix, head_pose_to_c2w, project_points
from synctalk.io import atomic_path
from synctalk.synthetic.human_face import (EYES, INNER_LIPS, MOUTH_COLOR, SKIN, HAIR, TEETH_COLOR, TEXTURE_SIZE, IRIS,
                                           PUPIL, SCLERA, human_face, rasterize, vertex_normals)

# Head geometry in the head frame (metres; x to the subject's left, y up, z out of the face). The face is the
# textured mesh of synctalk.synthetic.human_face; the skull (hair on top and behind), the eyeballs and the mouth
# cavity are ellipsoids behind it. The skull is wider than the face mesh down to the level of the earlobes, so,
# as on a real head, the face's edge at the temples and cheeks lies on the head and not on its outline; below
# SKULL_FLOOR_Y it is cut off, so the jaw stays the outline against the neck.
SKULL_CENTER, SKULL_RADII = np.array([0.0, 0.025, -0.055]), np.array([0.094, 0.12, 0.095])
SKULL_FLOOR_Y = -0.03
EYEBALL_RADIUS = 0.012
HAIRLINE_Y = 0.074
# Static body in the camera frame (metres; depths relative to the camera distance).
NECK_RADIUS, NECK_Y, NECK_DEPTH = 0.042, (-0.2, 0.0), 0.005
TORSO_Y, TORSO_DEPTH, TORSO_RADII = -0.235, 0.03, np.array([0.19, 0.13, 0.09])
HEAD_HEIGHT = 0.03  # head centre above the optical axis
SKIN_DETAIL = 0.06  # amplitude of the skin's fine texture
RENDERER_VERSION = 5  # part of the cache key: subjects rendered by an older version are made again
SHIRT = np.array([0.2, 0.34, 0.6])
LIGHT = np.array([0.35, 0.45, 1.0]) / np.linalg.norm([0.35, 0.45, 1.0])
LABEL_BG, LABEL_HEAD, LABEL_NECK, LABEL_TORSO = 0, 1, 2, 3


@dataclass
class SyntheticSpec:
    """Everything that decides the synthetic subject (the cache key of its folder); the schema of ``data.synthetic``."""

    seed: int = 0
    num_frames: int = 100
    size: int = 128
    fps: float = 25.0
    focal_at_512: float = 1350.0  # focal length in pixels for a 512 px image, scaled with size
    distance: float = 0.9  # camera to head centre, metres
    # head motion amplitudes
    yaw_deg: float = 10.0
    pitch_deg: float = 6.0
    roll_deg: float = 4.0
    shift_m: float = 0.006
    blink_every_s: float = 1.6
    background_noise: float = 0.03  # per-frame noise in ori_imgs only (absent from gt_imgs)
    antialias: int = 2

    @property
    def focal(self) -> float:
        return self.focal_at_512 * self.size / 512.0

    def key(self) -> str:
        return hashlib.sha1(json.dumps({**asdict(self), "renderer": RENDERER_VERSION}, sort_keys=True).encode()
                            ).hexdigest()[:12]


def filmed_at(focal_at_512: float, **fields) -> SyntheticSpec:
    """The subject filmed with another focal length (px at 512 px), the camera moved so that the face keeps its size:
    the distance scales with the focal (1350 px at 0.9 m, 700 px at 0.47 m, 2600 px at 1.73 m)."""
    return SyntheticSpec(focal_at_512=focal_at_512,
                         distance=SyntheticSpec.distance * focal_at_512 / SyntheticSpec.focal_at_512, **fields)


# ----------------------------------------------------------------------------- motion and audio

def _smooth_noise(rng: np.random.Generator, t: np.ndarray, terms: int = 3) -> np.ndarray:
    """A smooth random curve in [-1, 1] made of a few sinusoids."""
    freqs = rng.uniform(0.1, 0.6, terms)
    phases = rng.uniform(0, 2 * np.pi, terms)
    amps = rng.uniform(0.5, 1.0, terms)
    y = (amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * t[None] + phases[:, None])).sum(0)
    return y / amps.sum()


def generate_speech(rng: np.random.Generator, duration: float) -> np.ndarray:
    """Speech-like audio: voiced syllables with moving formants, short gaps and pauses.

    Returns:
        (duration * 16000,) float32 samples.
    """
    n = int(round(duration * SAMPLE_RATE))
    out = np.zeros(n, np.float32)
    t = 0.15
    since_pause = 0.0
    while t < duration:
        if since_pause > rng.uniform(1.2, 2.0):
            t += rng.uniform(0.35, 0.6)
            since_pause = 0.0
            continue
        dur = rng.uniform(0.12, 0.28)
        start, stop = int(t * SAMPLE_RATE), min(int((t + dur) * SAMPLE_RATE), n)
        if stop <= start:
            break
        tt = np.arange(stop - start) / SAMPLE_RATE
        f0 = rng.uniform(105, 150) * (1 + 0.03 * np.sin(2 * np.pi * 5 * tt))
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        f1, f2 = rng.uniform(300, 850), rng.uniform(900, 2300)
        sig = np.zeros_like(tt)
        for k in range(1, 30):
            fk = k * f0.mean()
            if fk > 4000:
                break
            gain = np.exp(-((fk - f1) / 180) ** 2) + 0.6 * np.exp(-((fk - f2) / 300) ** 2) + 0.05
            sig += gain * np.sin(k * phase)
        env = np.sin(np.pi * tt / dur) ** 2 * rng.uniform(0.5, 1.0)
        out[start:stop] += (0.15 * env * sig).astype(np.float32)
        t += dur + rng.uniform(0.03, 0.12)
        since_pause += dur
    out += rng.normal(0, 0.002, n).astype(np.float32)
    return np.clip(out, -1, 1)


def mouth_opening(audio: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
    """Per-frame mouth opening in [0, 1] from the audio loudness around each frame."""
    hop = SAMPLE_RATE / fps
    rms = np.array([np.sqrt(np.mean(audio[int(i * hop):int((i + 1) * hop)] ** 2) + 1e-12) for i in range(num_frames)])
    level = np.clip((20 * np.log10(rms) + 45) / 25, 0, 1)  # -45 dBFS closed .. -20 dBFS fully open
    return np.convolve(np.pad(level, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid").astype(np.float32)


def blink_curve(rng: np.random.Generator, num_frames: int, fps: float, every_s: float) -> tuple[np.ndarray, list[int]]:
    """Blink amount per frame in [0, 1] (1 = closed) and the frames where blinks peak."""
    shape = np.array([0.35, 0.8, 1.0, 0.75, 0.35])
    curve = np.zeros(num_frames, np.float32)
    peaks = []
    f = int(rng.uniform(0.4, 1.0) * every_s * fps)
    while f + 2 < num_frames:
        for k, v in enumerate(shape):
            if 0 <= f - 2 + k < num_frames:
                curve[f - 2 + k] = max(curve[f - 2 + k], v)
        peaks.append(f)
        f += int(rng.uniform(0.7, 1.3) * every_s * fps)
    return curve, peaks


# ----------------------------------------------------------------------------- ray casting

def _ray_ellipsoid(o: np.ndarray, d: np.ndarray, center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """First hit distance of rays o + t d with an ellipsoid; inf where they miss."""
    os_, ds = (o - center) / radii, d / radii
    a = (ds * ds).sum(-1)
    b = 2 * (os_ * ds).sum(-1)
    c = (os_ * os_).sum(-1) - 1
    disc = b * b - 4 * a * c
    t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    return np.where((disc > 0) & (t > 0), t, np.inf)


def _ray_neck(d: np.ndarray, cz: float) -> np.ndarray:
    """Hit distance of camera rays (origin 0) with the vertical neck cylinder at depth z = cz."""
    a = d[..., 0] ** 2 + d[..., 2] ** 2
    b = -2 * d[..., 2] * cz
    c = cz ** 2 - NECK_RADIUS ** 2
    disc = b * b - 4 * a * c
    t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    y = t * d[..., 1]
    return np.where((disc > 0) & (t > 0) & (y > NECK_Y[0]) & (y < NECK_Y[1]), t, np.inf)


def _background(size: int) -> np.ndarray:
    """The static background: a soft gradient with a few shapes, (size, size, 3) in [0, 1]."""
    v, u = np.mgrid[0:size, 0:size] / size
    bg = np.stack([0.52 + 0.2 * v, 0.56 + 0.18 * v, 0.62 + 0.12 * v], -1)
    bg[(u > 0.06) & (u < 0.3) & (v > 0.08) & (v < 0.38)] = (0.82, 0.8, 0.7)
    bg[(u > 0.72) & (u < 0.95) & (v > 0.15) & (v < 0.2)] = (0.35, 0.28, 0.22)
    bg[(np.hypot(u - 0.88, v - 0.62) < 0.05)] = (0.7, 0.35, 0.3)
    return bg


def _value_noise(p: np.ndarray, cell: float) -> np.ndarray:
    """Smooth 3D value noise in [-1, 1] with features about ``cell`` metres wide, fixed to the head."""
    q = p / cell
    i0 = np.floor(q)
    w = q - i0
    w = w * w * (3 - 2 * w)  # smoothstep between lattice values
    out = np.zeros(p.shape[:-1])
    for corner in np.ndindex(2, 2, 2):
        c = i0 + corner
        value = np.modf(np.sin(c @ np.array([12.9898, 78.233, 37.719])) * 43758.5453)[0]  # hash in (-1, 1)
        weight = np.prod(np.where(np.array(corner, bool), w, 1 - w), axis=-1)
        out += weight * value
    return out


def _skull_texture(p: np.ndarray, shade: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Albedo of skull points (head frame) and whether each is skin (not hair)."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    hair = (y > HAIRLINE_Y - 0.3 * np.maximum(z - 0.0, 0)) | ((z < -0.045) & (y > -0.06))
    # strands, with tufts and locks varying along them (pure stripes would give flow nothing to lock on along them)
    strands = 1 + 0.25 * np.sin(900 * x + 40 * np.sin(30 * y)) + 0.2 * _value_noise(p, 0.003)
    skin = SKIN[None] * (1 + SKIN_DETAIL * _value_noise(p, 0.002))[..., None]
    color = np.where(hair[..., None], HAIR[None] * strands[..., None], skin)
    return color * shade[..., None], ~hair


def _eye_and_mouth(p: np.ndarray, part: np.ndarray, eye_centres: np.ndarray, teeth_y: float) -> np.ndarray:
    """Albedo of points on the eyeballs (part 0, 1: looking along +z) and in the mouth cavity (part 2)."""
    color = np.broadcast_to(MOUTH_COLOR, p.shape).copy()
    color[(part == 2) & (p[..., 1] > teeth_y) & (np.abs(p[..., 0]) < 0.02)] = TEETH_COLOR
    for k in (0, 1):
        on = part == k
        q = p[on] - eye_centres[k]
        angle = np.arccos(np.clip(q[:, 2] / EYEBALL_RADIUS, -1, 1))
        c = np.where((angle < 0.45)[:, None], IRIS, SCLERA)
        color[on] = np.where((angle < 0.2)[:, None], PUPIL, c)
    return color


def _bilinear(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """``image`` (H, W, C) sampled at pixel positions ``xy`` (N, 2), bilinearly, clamped at the border."""
    h, w = image.shape[:2]
    x = np.clip(xy[:, 0], 0, w - 1.001)
    y = np.clip(xy[:, 1], 0, h - 1.001)
    x0, y0 = x.astype(np.int64), y.astype(np.int64)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def render_frame(size: int, focal: float, distance: float, rotation: np.ndarray, translation: np.ndarray, blink: float,
                 brow: float, mouth: float, antialias: int = 2) -> dict[str, np.ndarray]:
    """Render one frame: the face mesh rasterised, the rest of the head and the body ray-cast.

    Args:
        distance: mean camera-to-head distance (places the static body), metres.
        rotation (3, 3), translation (3,): head-to-camera pose (metres, OpenGL camera).
        blink, brow, mouth: expression values in [0, 1].
    Returns:
        ``person`` (H, W, 3) colour of the person, ``torso`` (H, W, 4) RGBA torso and neck
        without the head, ``labels`` (H, W) {0 background, 1 head, 2 neck, 3 torso},
        ``face`` (H, W) bool face-skin mask; H = W = size.
    """
    s = size * antialias
    f = focal * antialias
    v, u = np.mgrid[0:s, 0:s].astype(np.float64) + 0.5
    d = np.stack([(u - s / 2) / f, -(v - s / 2) / f, -np.ones_like(u)], -1)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    # the face mesh, rasterised
    face = human_face()
    verts = face.pose(blink, brow, mouth)
    cam = verts @ rotation.T + translation
    px = np.stack([f * cam[:, 0] / -cam[:, 2] + s / 2, -f * cam[:, 1] / -cam[:, 2] + s / 2], -1) - 0.5
    ids, bary = rasterize(px, -cam[:, 2], face.triangles, s)
    on_mesh = ids >= 0
    tri = face.triangles[ids[on_mesh]]
    w = bary[on_mesh][..., None]
    t_mesh = np.full((s, s), np.inf)
    t_mesh[on_mesh] = np.linalg.norm((cam[tri] * w).sum(1), axis=-1)
    uv = (face.uv[tri] * w).sum(1) * TEXTURE_SIZE - 0.5
    albedo = _bilinear(face.texture, uv)
    normals = (vertex_normals(verts, face.triangles)[tri] * w).sum(1) @ rotation.T
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True) + 1e-12
    mesh_rgb = albedo * (0.35 + 0.65 * np.clip(normals @ LIGHT, 0, 1))[:, None]
    # skull, eyeballs and mouth cavity, in the head frame
    o_h = -rotation.T @ translation
    d_h = d @ rotation  # == (R^T d^T)^T
    rest = face.vertices
    # eyeballs centred behind each eye opening, their front just behind the lids' middle
    eye_centres = np.array([[*rest[eye, :2].mean(0), min(rest[eye[4], 2], rest[eye[12], 2]) - EYEBALL_RADIUS - 0.0005]
                            for eye in EYES])
    lips = rest[INNER_LIPS]
    corner = np.abs(lips[[0, 10], 0]).mean()
    cavity_c = np.array([0.0, lips[:, 1].mean() - 0.004, lips[:, 2].min() - 0.02])
    cavity_r = np.array([corner * 1.4, 0.028, 0.02])
    t_parts = np.stack([_ray_ellipsoid(o_h, d_h, c, np.full(3, EYEBALL_RADIUS)) for c in eye_centres]
                       + [_ray_ellipsoid(o_h, d_h, cavity_c, cavity_r)])
    part = t_parts.argmin(0)
    t_part = t_parts.min(0)
    t_skull = _ray_ellipsoid(o_h, d_h, SKULL_CENTER, SKULL_RADII)
    t_skull[(o_h[1] + d_h[..., 1] * np.where(np.isfinite(t_skull), t_skull, 0)) < SKULL_FLOOR_Y] = np.inf
    t_head = np.minimum(np.minimum(t_mesh, t_part), t_skull)
    hit = np.isfinite(t_head)
    p_h = o_h + d_h * np.where(hit, t_head, 0)[..., None]
    head_rgb, skin = np.zeros(p_h.shape), np.zeros(hit.shape, bool)
    sel = hit & (t_skull <= t_head) & ~(t_mesh <= t_head) & ~(t_part <= t_head)
    n_c = ((p_h[sel] - SKULL_CENTER) / SKULL_RADII ** 2) @ rotation.T
    n_c /= np.linalg.norm(n_c, axis=-1, keepdims=True) + 1e-12
    head_rgb[sel], skin[sel] = _skull_texture(p_h[sel], 0.35 + 0.65 * np.clip(n_c @ LIGHT, 0, 1))
    sel = hit & (t_part <= t_head) & ~(t_mesh <= t_head)
    head_rgb[sel] = 0.85 * _eye_and_mouth(p_h[sel], part[sel], eye_centres, rest[13, 1] - 0.0025)
    skin[sel] = True
    sel = on_mesh & (t_mesh <= t_head)
    head_rgb[sel], skin[sel] = mesh_rgb[t_mesh[on_mesh] <= t_head[on_mesh]], True
    t_head = np.where(hit, t_head, np.inf)
    # body, in the camera frame
    neck_z = -distance - NECK_DEPTH
    torso_center = np.array([0.0, TORSO_Y, -distance - TORSO_DEPTH])
    t_neck = _ray_neck(d, neck_z)
    t_torso = _ray_ellipsoid(np.zeros(3), d, torso_center, TORSO_RADII)
    t_body = np.minimum(t_neck, t_torso)
    p_b = d * np.where(np.isfinite(t_body), t_body, 0)[..., None]
    neck_n = np.stack([p_b[..., 0], np.zeros_like(u), p_b[..., 2] - neck_z], -1)
    torso_n = (p_b - torso_center) / TORSO_RADII ** 2
    n_b = np.where((t_neck < t_torso)[..., None], neck_n, torso_n)
    n_b /= np.linalg.norm(n_b, axis=-1, keepdims=True) + 1e-12
    shade_b = 0.35 + 0.65 * np.clip(n_b @ LIGHT, 0, 1)
    collar = np.abs(p_b[..., 1] - (TORSO_Y + TORSO_RADII[1] - 0.012)) < 0.006
    body_rgb = np.where((t_neck < t_torso)[..., None], SKIN * 0.9, np.where(collar[..., None], 0.9, SHIRT))
    body_rgb = body_rgb * shade_b[..., None]
    labels = np.full((s, s), LABEL_BG, np.int64)
    labels[np.isfinite(t_body)] = np.where(t_neck < t_torso, LABEL_NECK, LABEL_TORSO)[np.isfinite(t_body)]
    head_front = hit & (t_head <= t_body)
    labels[head_front] = LABEL_HEAD
    person = np.where(head_front[..., None], head_rgb, body_rgb)
    body_alpha = np.isfinite(t_body).astype(np.float64)

    def down(a):
        return a.reshape(size, antialias, size, antialias, *a.shape[2:]).mean((1, 3))

    onehot = np.eye(4)[labels]
    return {
        "person": down(person * (labels != LABEL_BG)[..., None]),
        "person_alpha": down((labels != LABEL_BG).astype(np.float64)),
        "torso": np.concatenate([down(body_rgb * body_alpha[..., None]), down(body_alpha)[..., None]], -1),
        "labels": down(onehot).argmax(-1),
        "face": down((head_front & skin).astype(np.float64)) > 0.5,
    }


# ----------------------------------------------------------------------------- landmarks

def landmarks_3d(blink: float, brow: float, mouth: float) -> np.ndarray:
    """The 68 landmarks (iBUG 300-W order) of the synthetic face, (68, 3) in the head frame: its mesh vertices
    at :data:`synctalk.face.facemesh.MESH_TO_68`."""
    return human_face().pose(blink, brow, mouth)[MESH_TO_68]


# ----------------------------------------------------------------------------- the subject

def generate(spec: SyntheticSpec, root: Path, progress: bool = True) -> Path:
    """Write the synthetic subject to ``root`` (atomically; reused when already complete).

    Returns:
        ``root``.
    """
    import fcntl

    root = Path(root)
    marker = root / "synthetic_spec.json"
    root.parent.mkdir(parents=True, exist_ok=True)
    # runs started in parallel (a joblib sweep) share the subject: one makes it while the others wait
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and json.loads(marker.read_text()).get("key") == spec.key():
            return root
        if root.exists() and any(root.iterdir()) and not marker.is_file():
            raise UserError(f"{root} exists and is not a synthetic subject: refusing to replace it "
                            f"(choose another data.root for data=synthetic)")
        with atomic_path(root) as tmp:
            _write(spec, tmp, progress)
            write_video(tmp, spec.fps)
    return root


def write_video(root: Path, fps: float) -> Path:
    """``<root>/video.mp4``: the subject's original frames with its audio, the input a real subject would
    bring, so the synthetic subject can go through ``synctalk preprocess`` and be compared with its
    ``ground_truth.npz`` (``preprocess.ground_truth``)."""
    from synctalk.audio.features import load_audio
    from synctalk.video import VideoWriter

    frames = sorted((root / "ori_imgs").glob("*.jpg"), key=lambda p: int(p.stem))
    with VideoWriter(root / "video.mp4", fps, load_audio(root / "aud.wav")) as writer:
        for path in frames:
            writer.write(cv2.imread(str(path))[..., ::-1])
    return root / "video.mp4"


def _write(spec: SyntheticSpec, root: Path, progress: bool) -> None:
    rng = np.random.default_rng(spec.seed)
    n, size, fps = spec.num_frames, spec.size, spec.fps
    t = np.arange(n) / fps
    euler = np.radians(np.stack([spec.pitch_deg * _smooth_noise(rng, t), spec.yaw_deg * _smooth_noise(rng, t),
                                 spec.roll_deg * _smooth_noise(rng, t)], -1))
    trans = np.stack([spec.shift_m * _smooth_noise(rng, t), HEAD_HEIGHT + spec.shift_m * _smooth_noise(rng, t),
                      -spec.distance + spec.shift_m * _smooth_noise(rng, t)], -1)
    rotation = euler_to_matrix(euler)
    audio = generate_speech(rng, n / fps + 0.2)[: int(round(n / fps * SAMPLE_RATE))]
    mouth = mouth_opening(audio, n, fps)
    blink, blink_peaks = blink_curve(rng, n, fps, spec.blink_every_s)
    brow = np.clip(_smooth_noise(rng, t, 2) * 1.5 - 0.3, 0, 1).astype(np.float32)
    c2w = head_pose_to_c2w(rotation, trans)
    focal, cx, cy = spec.focal, size / 2.0, size / 2.0
    lms3d = np.stack([landmarks_3d(blink[i], brow[i], mouth[i]) for i in range(n)])
    lms2d = project_points(lms3d, c2w, focal, cx, cy)

    layout = DatasetLayout(root)
    for sub in ("ori_imgs", "parsing", "face_mask", "gt_imgs", "torso_imgs"):
        (root / sub).mkdir(parents=True)
    bg = _background(size)
    cv2.imwrite(str(layout.background), _to_bgr8(bg))
    palette = np.array([PARSING_COLORS[k] for k in ("background", "head", "neck", "torso")], np.uint8)[:, ::-1]
    for i in tqdm(range(n), desc="synthetic subject", disable=not progress):
        fr = render_frame(size, focal, spec.distance, rotation[i], trans[i], float(blink[i]), float(brow[i]), float(mouth[i]),
                          spec.antialias)
        alpha = fr["person_alpha"][..., None]
        gt = fr["person"] + (1 - alpha) * bg
        noisy_bg = np.clip(bg + rng.normal(0, spec.background_noise, bg.shape), 0, 1)
        ori = fr["person"] + (1 - alpha) * noisy_bg
        cv2.imwrite(str(layout.frame(i)), _to_bgr8(ori), [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(layout.gt_image(i)), _to_bgr8(gt), [cv2.IMWRITE_JPEG_QUALITY, 95])
        np.savetxt(layout.landmarks(i), lms2d[i], fmt="%.4f")
        cv2.imwrite(str(layout.parsing(i)), palette[fr["labels"]])
        cv2.imwrite(str(layout.face_only_mask(i)), fr["face"].astype(np.uint8) * 255)
        cv2.imwrite(str(layout.head_mask(i)), (fr["labels"] == LABEL_HEAD).astype(np.uint8) * 255)
        torso = fr["torso"]
        rgba = np.concatenate([torso[..., :3] / np.maximum(torso[..., 3:], 1e-6), torso[..., 3:]], -1)
        cv2.imwrite(str(layout.torso_image(i)), (np.clip(rgba, 0, 1) * 255 + 0.5).astype(np.uint8)[..., [2, 1, 0, 3]])

    write_wav(layout.audio, audio)
    np.save(layout.audio_features("mel"), mel_windows(audio, n, fps))
    bs = np.zeros((n, len(BLENDSHAPE_NAMES)), np.float32)
    col = BLENDSHAPE_NAMES.index
    bs[:, col("eyeBlinkLeft")] = bs[:, col("eyeBlinkRight")] = blink
    bs[:, col("browInnerUp")] = brow
    bs[:, col("browOuterUpLeft")] = bs[:, col("browOuterUpRight")] = 0.8 * brow
    bs[:, col("jawOpen")] = mouth
    bs[:, col("mouthClose")] = 1 - mouth
    np.save(layout.blendshapes, bs)
    (root / "au.csv").write_text("frame, AU45_r\n" + "".join(f"{i + 1}, {2 * b:.4f}\n" for i, b in enumerate(blink)))
    train_ids, val_ids = split_train_val(n)
    for split, ids in (("train", train_ids), ("val", val_ids)):
        Transforms(focal, cx, cy, ids, ids, c2w[ids].astype(np.float32)).write(layout.transforms(split))
    np.save(root / "face_template.npy", landmarks_3d(0.0, 0.0, 0.0))
    np.savez(root / "ground_truth.npz", focal=focal, euler=euler, translation=trans, rotation=rotation, c2w=c2w,
             landmarks_2d=lms2d, landmarks_3d=lms3d, blink=blink, blink_peaks=np.array(blink_peaks), brow=brow,
             mouth=mouth)
    (root / "synthetic_spec.json").write_text(json.dumps({"key": spec.key(), **asdict(spec)}, indent=2))


def _to_bgr8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)[..., ::-1]
