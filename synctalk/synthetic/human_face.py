"""The synthetic subject's human face: a textured triangle mesh with a person's proportions.

The mesh is MediaPipe's canonical face (468 vertices, 898 triangles, with its texture coordinates; shipped as
``canonical_face.obj``), given an identity of its own so that it is *not* the stabilizer's default face model:
wider and shorter, a longer nose and a smooth random shape on every vertex (:data:`IDENTITY`). The eyes and
the mouth are openings in the mesh with eyeballs and a mouth cavity behind them; blinks close the upper lids,
the jaw opens the lips and the brows rise. The texture is painted from the mesh's own landmarks in its
texture space (skin with fine detail that point tracking can follow, brows, lips, lash lines), so a face
detector finds it and everything it sees moves with the surface.

Units: metres, head frame (x to the subject's left, y up, z out of the face); images are rasterised with
:func:`rasterize` (painter's order, back faces culled) at the caller's resolution.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from synctalk.face.face_model import read_obj

TEXTURE_SIZE = 1024

# loops of the mesh (MediaPipe FaceMesh indices), subject's right first
INNER_LIPS = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95]
OUTER_LIPS = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146]
EYES = (  # (outer corner, upper lid ..., inner corner, lower lid ...)
    [33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7],
    [263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249],
)
BROWS = ([70, 63, 105, 66, 107, 55, 65, 52, 53, 46], [300, 293, 334, 296, 336, 285, 295, 282, 283, 276])
NOSTRILS = ((98, 2), (327, 2))  # a nostril sits between the nose wing and the base of the columella

#: The subject's identity, applied to the canonical face: axis scales about the face centre, the nose tip pushed
#: forward (Gaussian falloff), and a smooth random displacement of every vertex (a few sinusoids in 3D).
IDENTITY = {"scale": (1.06, 0.96, 1.0), "nose_forward_m": 0.003, "nose_sigma_m": 0.015, "shape_noise_m": 0.001,
            "seed": 7}
MOUTH_OPEN_M = 0.013  # lip gap at the centre when the mouth value is 1
BROW_RAISE_M = 0.007
SKIN, HAIR = np.array([0.86, 0.66, 0.55]), np.array([0.24, 0.15, 0.1])
LIP_COLOR, BROW_COLOR, LASH_COLOR = np.array([0.72, 0.36, 0.36]), np.array([0.22, 0.14, 0.1]), np.array([0.12, 0.08, 0.07])
MOUTH_COLOR, TEETH_COLOR = np.array([0.28, 0.05, 0.07]), np.array([0.9, 0.88, 0.82])
SCLERA, IRIS, PUPIL = np.array([0.93, 0.92, 0.9]), np.array([0.3, 0.2, 0.12]), np.array([0.03, 0.03, 0.03])


def _smooth_shape(points: np.ndarray, amplitude: float, seed: int) -> np.ndarray:
    """A smooth random displacement field (N, 3), at most about ``amplitude`` metres, features ~5 cm wide."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(points)
    for _ in range(4):
        freq = rng.normal(0, 1, 3)
        freq *= rng.uniform(15, 40) / np.linalg.norm(freq)  # rad / m
        out += rng.normal(0, 1, 3) * np.sin(points @ freq + rng.uniform(0, 2 * np.pi))[:, None]
    return out * amplitude / np.abs(out).max()


@dataclass
class HumanFace:
    """The face mesh of the synthetic subject (neutral) and how it moves."""

    vertices: np.ndarray  # (V, 3) neutral, metres, head frame
    uv: np.ndarray  # (V, 2) in [0, 1], v downwards
    triangles: np.ndarray  # (T, 3), eyes and mouth open
    texture: np.ndarray  # (TEXTURE_SIZE, TEXTURE_SIZE, 3) albedo in [0, 1]

    def pose(self, blink: float, brow: float, mouth: float) -> np.ndarray:
        """(V, 3) vertices with the expression: blink, brow and mouth in [0, 1] (0: eyes open, brows rest,
        lips closed)."""
        v = self.vertices.copy()
        x, y = v[:, 0], v[:, 1]
        # jaw: everything under the upper inner lip moves down (and a little back) with the weight of the
        # lower lip, fading out beyond the mouth corners; at 0 the lower lip meets the upper one
        upper = v[INNER_LIPS[:11]]
        line = np.interp(x, upper[:, 0], upper[:, 1])
        corner = np.abs(upper[[0, -1], 0]).mean()
        gap0 = v[13, 1] - v[14, 1]
        below = _smoothstep((line - y) / max(gap0, 1e-4))
        across = np.sqrt(np.clip(1 - (x / (1.35 * corner)) ** 2, 0, 1))
        drop = (mouth * MOUTH_OPEN_M - gap0) * below * across
        v[:, 1] -= drop
        v[:, 2] -= 0.3 * np.maximum(drop, 0)
        for eye in EYES:
            ring = v[eye]
            upper_lid, lower_lid = ring[:9], ring[[0, 15, 14, 13, 12, 11, 10, 9, 8]]  # corner to corner
            lo, hi = sorted((upper_lid[0, 0], upper_lid[-1, 0]))
            order = np.argsort(upper_lid[:, 0])
            lid_up = np.interp(x, upper_lid[order, 0], upper_lid[order, 1])
            order = np.argsort(lower_lid[:, 0])
            lid_lo = np.interp(x, lower_lid[order, 0], lower_lid[order, 1])
            inside_x = _smoothstep((np.minimum(x - lo, hi - x)) / 0.004 + 0.5)
            above = y >= lid_up - 1e-6
            fade = 1 - _smoothstep((y - lid_up) / 0.01)
            v[:, 1] -= blink * (lid_up - lid_lo) * np.where(above, fade, 0) * inside_x
            # brow: the region a finger's width above the lid rises
            centre_y = v[BROWS[EYES.index(eye)]][:, 1].mean()
            near_brow = np.exp(-((y - centre_y) / 0.012) ** 2) * _smoothstep((np.minimum(x - lo, hi - x)) / 0.01 + 0.8)
            v[:, 1] += brow * BROW_RAISE_M * near_brow * (y > lid_up + 0.003)
        return v


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0, 1)
    return t * t * (3 - 2 * t)


@lru_cache(maxsize=2)
def human_face(identity_seed: int = IDENTITY["seed"]) -> HumanFace:
    """The synthetic subject's face (cached): the canonical mesh with :data:`IDENTITY`, its openings cut, its
    texture painted."""
    vertices_cm, uv, triangles = read_obj()
    v = vertices_cm * 0.01
    centre = v.mean(0)
    v = centre + (v - centre) * np.array(IDENTITY["scale"])
    nose = np.exp(-(((v - v[1]) ** 2).sum(1)) / (2 * IDENTITY["nose_sigma_m"] ** 2))
    v[:, 2] += IDENTITY["nose_forward_m"] * nose
    v += _smooth_shape(v, IDENTITY["shape_noise_m"], identity_seed)
    openings = [set(INNER_LIPS), set(EYES[0]), set(EYES[1])]
    keep = np.array([not any(set(t) <= loop for loop in openings) for t in triangles.tolist()])
    return HumanFace(v, uv, triangles[keep], _paint_texture(uv, identity_seed))


def _paint_texture(uv: np.ndarray, seed: int) -> np.ndarray:
    """Albedo in texture space (TEXTURE_SIZE^2, 3): skin with pores and blotches, cheeks, brows, lips, lash lines
    and nostrils, drawn from the mesh's own landmark loops."""
    n = TEXTURE_SIZE
    rng = np.random.default_rng(seed)
    detail = np.zeros((n, n))
    for cells, weight in ((n // 6, 0.6), (n // 24, 0.5), (n // 90, 1.0)):  # ~25 mm, 6 mm, 1.7 mm features
        noise = cv2.resize(rng.uniform(-1, 1, (cells, cells)), (n, n), interpolation=cv2.INTER_CUBIC)
        detail += weight * noise
    tex = SKIN[None, None] * (1 + 0.05 * detail)[..., None]
    px = uv * n
    yy, xx = np.mgrid[0:n, 0:n]
    for cheek in (px[50], px[280]):  # cheek centres
        tex *= 1 - 0.06 * np.exp(-((xx - cheek[0]) ** 2 + (yy - cheek[1]) ** 2) / (2 * (0.06 * n) ** 2))[..., None] \
            * np.array([0, 1, 1])
    layer = np.zeros((n, n), np.uint8)

    def fill(loop: list[int], color: np.ndarray, strands: bool = False) -> None:
        layer[:] = 0
        cv2.fillPoly(layer, [np.round(px[loop] * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
        alpha = cv2.GaussianBlur(layer, (0, 0), 1.5).astype(np.float64)[..., None] / 255
        paint = color[None, None] * (1 + (0.25 * np.sin(xx * 0.9 + 3 * np.sin(yy * 0.2)))[..., None] if strands else 1)
        tex[:] = tex * (1 - alpha) + paint * alpha

    for brow in BROWS:
        fill(brow, BROW_COLOR, strands=True)
    fill(OUTER_LIPS, LIP_COLOR)
    for eye in EYES:  # lash line along the upper lid, a thin one under the eye
        layer[:] = 0
        cv2.polylines(layer, [np.round(px[eye[:9]] * 16).astype(np.int32)], False, 255, 5, cv2.LINE_AA, shift=4)
        cv2.polylines(layer, [np.round(px[eye[8:] + eye[:1]] * 16).astype(np.int32)], False, 110, 2, cv2.LINE_AA, shift=4)
        alpha = layer.astype(np.float64)[..., None] / 255
        tex[:] = tex * (1 - alpha) + LASH_COLOR * alpha
    for wing, base in NOSTRILS:
        c = 0.55 * px[wing] + 0.45 * px[base]
        layer[:] = 0
        cv2.ellipse(layer, (int(c[0]), int(c[1])), (int(0.012 * n), int(0.006 * n)), 0, 0, 360, 255, -1)
        alpha = cv2.GaussianBlur(layer, (0, 0), 3).astype(np.float64)[..., None] / 255 * 0.7
        tex[:] = tex * (1 - alpha) + np.array([0.25, 0.12, 0.1]) * alpha
    return np.clip(tex, 0, 1)


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(V, 3) unit normals, area-weighted over the triangles around each vertex (outwards for the face)."""
    a, b, c = (vertices[triangles[:, k]] for k in range(3))
    face_n = np.cross(b - a, c - a)
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, triangles[:, k], face_n)
    if (normals * (vertices - vertices.mean(0))).sum() < 0:  # whatever the winding, the normals point outwards
        normals = -normals
    return normals / (np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12)


def rasterize(points: np.ndarray, depth: np.ndarray, triangles: np.ndarray, size: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Which triangle each pixel sees, and where on it.

    Args:
        points (V, 2): image positions, pixels (x right, y down); depth (V,): distance along the view, metres.
        triangles (T, 3); size: the image side.
    Returns:
        ``ids`` (size, size) triangle index or -1, and ``bary`` (size, size, 3) perspective-correct barycentric
        weights of its vertices. Triangles facing away from the camera are skipped; the rest are drawn far to near.
    """
    p = points[triangles]  # (T, 3, 2)
    area = (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) - (p[:, 2, 0] - p[:, 0, 0]) * (p[:, 1, 1] - p[:, 0, 1])
    ids = np.full((size, size), -1, np.int32)
    fixed = np.round(p * 16).astype(np.int32)
    front = np.sign(np.median(area)) * area > 1e-9
    for t in np.argsort(-depth[triangles].mean(1)):
        if front[t]:
            cv2.fillConvexPoly(ids, fixed[t], int(t), cv2.LINE_8, shift=4)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    hit = ids >= 0
    t = ids[hit]
    q = np.stack([xx[hit], yy[hit]], -1)  # pixel centres sit at integer positions for cv2's fill
    e1, e2, r = p[t, 1] - p[t, 0], p[t, 2] - p[t, 0], q - p[t, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    b1 = (r[:, 0] * e2[:, 1] - r[:, 1] * e2[:, 0]) / det
    b2 = (e1[:, 0] * r[:, 1] - e1[:, 1] * r[:, 0]) / det
    b = np.clip(np.stack([1 - b1 - b2, b1, b2], -1), 0, 1)
    b = b / depth[triangles[t]]  # perspective-correct weights
    bary = np.zeros((size, size, 3))
    bary[hit] = b / b.sum(-1, keepdims=True)
    return ids, bary
