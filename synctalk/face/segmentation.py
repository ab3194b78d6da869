"""Weight-free face parsing, static background and the GT / torso images.

Parsing combines MediaPipe's selfie segmentation (the person) with the FaceMesh face oval:
the person above the jaw line is the head (hair included where it is above the jaw), a band
below the chin is the neck, the rest of the person is the torso. The face-only mask is the
face oval with the jaw edge moved down a little (no hair, no ears).

Limits of this default: hair that falls below the jaw line is labelled neck or torso, and
ears outside the person mask are lost. ``preprocess.parsing.backend=bisenet`` uses a 19-class
face-parsing checkpoint instead (:mod:`synctalk.face.bisenet`), grouped into the same labels
by :func:`labels_from_classes`.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from scipy.ndimage import distance_transform_edt


# the colours of parsing/<i>.png (RGB), as in the original SyncTalk / ER-NeRF data
PARSING_COLORS = {"head": (255, 0, 0), "neck": (0, 255, 0), "torso": (0, 0, 255), "background": (255, 255, 255)}
BACKGROUND, HEAD, NECK, TORSO = 0, 1, 2, 3
PALETTE_BGR = np.array([PARSING_COLORS[k] for k in ("background", "head", "neck", "torso")], np.uint8)[:, ::-1]
# colour bits (B*4 + G*2 + R) of the palette -> label: white 7, red 1, green 2, blue 4
_CODE_TO_LABEL = np.zeros(8, np.uint8)
_CODE_TO_LABEL[[7, 1, 2, 4]] = [BACKGROUND, HEAD, NECK, TORSO]


def face_oval_order() -> np.ndarray:
    """FaceMesh indices of the face oval, in order around the face."""
    import mediapipe as mp

    edges = list(mp.solutions.face_mesh.FACEMESH_FACE_OVAL)
    nxt: dict[int, list[int]] = {}
    for a, b in edges:
        nxt.setdefault(a, []).append(b)
        nxt.setdefault(b, []).append(a)
    start = edges[0][0]
    order, prev = [start], None
    while True:
        cur = order[-1]
        step = [n for n in nxt[cur] if n != prev][0]
        if step == start:
            return np.array(order)
        prev = cur
        order.append(step)


class PersonSegmenter:
    """MediaPipe selfie segmentation: person probability (H, W) in [0, 1]."""

    def __init__(self):
        import mediapipe as mp

        self._seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)

    def __call__(self, bgr: np.ndarray) -> np.ndarray:
        return self._seg.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).segmentation_mask.astype(np.float32)

    def __enter__(self) -> "PersonSegmenter":
        return self

    def __exit__(self, *exc) -> None:
        self._seg.close()


def parse_frame(person: np.ndarray, mesh: np.ndarray, oval: np.ndarray, jaw_shift: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Labels and face-only mask of one frame.

    Args:
        person: (H, W) person probability.
        mesh: (478, >=2) FaceMesh points in pixels.
        oval: face-oval indices in order (:func:`face_oval_order`).
        jaw_shift: pixels the jaw edge of the face mask is moved down.
    Returns:
        labels (H, W) uint8 in {0 background, 1 head, 2 neck, 3 torso}; face mask (H, W) bool.
    """
    h, w = person.shape
    poly = mesh[oval, :2].astype(np.float64)
    centre_y = poly[:, 1].mean()
    shifted = poly.copy()
    shifted[shifted[:, 1] > centre_y, 1] += jaw_shift
    face = np.zeros((h, w), np.uint8)
    cv2.fillPoly(face, [np.round(shifted).astype(np.int32)], 1)
    # jaw line: the lowest oval point per column, held flat beyond the face's sides
    lower = poly[poly[:, 1] > centre_y]
    lower = lower[np.argsort(lower[:, 0])]
    cols = np.arange(w)
    jaw_y = np.interp(cols, lower[:, 0], lower[:, 1])
    rows = np.arange(h)[:, None]
    fg = person > 0.5
    labels = np.zeros((h, w), np.uint8)
    labels[fg] = TORSO
    above_jaw = rows <= jaw_y[None, :]
    labels[fg & above_jaw] = HEAD
    x0, x1 = poly[:, 0].min(), poly[:, 0].max()
    face_h = poly[:, 1].max() - poly[:, 1].min()
    chin = poly[:, 1].max()
    band = (cols[None, :] > x0 + 0.2 * (x1 - x0)) & (cols[None, :] < x1 - 0.2 * (x1 - x0))
    neck = fg & ~above_jaw & band & (rows < chin + 0.45 * face_h)
    labels[neck] = NECK
    labels[face.astype(bool)] = HEAD
    return labels, face.astype(bool)


#: 19-class face-parsing ids (BiSeNet / CelebAMask-HQ) of each label, as the original tools group them
CLASSES_HEAD = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 17, 18)  # face, ears, hair, hat
CLASSES_NECK = (14, 15)
CLASSES_TORSO = (16,)
CLASSES_FACE_ONLY = (1, 2, 3, 4, 5, 6, 10, 11, 12, 13)  # no hair, ears or hat


def labels_from_classes(classes: np.ndarray, jaw_shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and face-only mask from a 19-class face-parsing map.

    The face-only mask's lower edge is moved down by ``jaw_shift`` pixels over the middle half of
    the face's width (the chin), as the portrait blending of the original expects.

    Args:
        classes: (H, W) class ids in [0, 19).
    Returns:
        labels (H, W) uint8 in {0 background, 1 head, 2 neck, 3 torso}; face mask (H, W) bool.
    """
    labels = np.full(classes.shape, BACKGROUND, np.uint8)
    labels[np.isin(classes, CLASSES_HEAD)] = HEAD
    labels[np.isin(classes, CLASSES_NECK)] = NECK
    labels[np.isin(classes, CLASSES_TORSO)] = TORSO
    face = np.isin(classes, CLASSES_FACE_ONLY)
    cols = np.flatnonzero(face.any(0))
    if len(cols) and jaw_shift > 0:
        x0, x1 = cols.min(), cols.max()
        quarter = (x1 - x0) / 4
        rows = np.arange(face.shape[0])[:, None]
        bottom = np.where(face.any(0), face.shape[0] - 1 - np.argmax(face[::-1], axis=0), -1)
        middle = (np.arange(face.shape[1]) >= x0 + quarter) & (np.arange(face.shape[1]) <= x1 - quarter) & (bottom >= 0)
        face |= middle[None] & (rows > bottom[None]) & (rows <= bottom[None] + jaw_shift)
    return labels, face


class BackgroundAccumulator:
    """Static background from sampled frames: the mean of each pixel over the frames where it
    is far from the person; pixels never seen are filled from the nearest seen pixel."""

    def __init__(self, margin_px: int):
        self.margin = max(1, margin_px)
        self.total: np.ndarray | None = None
        self.count: np.ndarray | None = None

    def add(self, bgr: np.ndarray, labels: np.ndarray) -> None:
        k = 2 * self.margin + 1
        near_person = cv2.dilate((labels != BACKGROUND).astype(np.uint8), np.ones((k, k), np.uint8)) > 0
        keep = ~near_person
        if self.total is None:
            self.total = np.zeros(bgr.shape, np.float64)
            self.count = np.zeros(bgr.shape[:2], np.int64)
        self.total[keep] += bgr[keep]
        self.count[keep] += 1

    def result(self) -> tuple[np.ndarray, float]:
        """The background (H, W, 3) uint8 BGR and the share of pixels that had to be filled."""
        if self.total is None or not self.count.any():
            raise ValueError("no background pixel was ever visible")
        seen = self.count > 0
        mean = self.total / np.maximum(self.count, 1)[..., None]
        _, (iy, ix) = distance_transform_edt(~seen, return_indices=True)
        filled = mean[iy, ix]
        return np.clip(filled + 0.5, 0, 255).astype(np.uint8), float(1 - seen.mean())


def compose_gt_and_torso(bgr: np.ndarray, labels: np.ndarray, person: np.ndarray, background: np.ndarray,
                         neck_gap_px: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``gt_imgs`` (the frame over the static background) and ``torso_imgs`` (BGRA neck and torso).

    Args:
        bgr: (H, W, 3) frame; labels: (H, W) parsing; person: (H, W) soft person mask;
        background: (H, W, 3) static background.
        neck_gap_px: how far up behind the head the neck is continued (see :func:`fill_neck_gap`).
    """
    alpha = np.where(labels == BACKGROUND, 0.0, np.clip(person, 0, 1))[..., None]
    gt = (bgr * alpha + background * (1 - alpha) + 0.5).astype(np.uint8)
    body = ((labels == NECK) | (labels == TORSO))[..., None] * alpha
    torso = np.concatenate([np.clip(bgr + 0.5, 0, 255).astype(np.uint8), (body * 255 + 0.5).astype(np.uint8)], -1)
    return gt, fill_neck_gap(torso, labels, neck_gap_px)


def fill_neck_gap(torso: np.ndarray, labels: np.ndarray, gap_px: int) -> np.ndarray:
    """Continue the neck upwards behind the head, so a head rendered in another pose leaves no hole.

    In each column that shows neck, the ``gap_px`` head pixels just above the neck's top take
    the colour found a little below that top, fully opaque.

    Args:
        torso: (H, W, 4) BGRA torso image; labels: (H, W) parsing.
    Returns:
        the filled copy.
    """
    neck = labels == NECK
    if gap_px <= 0 or not neck.any():
        return torso
    h = labels.shape[0]
    has_neck = neck.any(0)
    top = np.where(has_neck, neck.argmax(0), h)  # first neck row per column
    rows = np.arange(h)[:, None]
    gap = (rows >= top - gap_px) & (rows < top) & (labels == HEAD) & has_neck[None, :]
    sample_row = np.minimum(top + 2, h - 1)
    colour = torso[sample_row, np.arange(labels.shape[1]), :3]  # (W, 3)
    out = torso.copy()
    ys, xs = np.nonzero(gap)
    out[ys, xs, :3] = colour[xs]
    out[ys, xs, 3] = 255
    return out


def write_parsing(path: Path, labels: np.ndarray) -> None:
    """Save labels (H, W) in {0..3} with the parsing colours."""
    cv2.imwrite(str(path), PALETTE_BGR[labels])


def read_parsing(path: Path) -> np.ndarray:
    """Labels (H, W) in {0 background, 1 head, 2 neck, 3 torso} of a parsing image."""
    img = cv2.imread(str(path))
    if img is None:
        raise FileNotFoundError(path)
    code = (img[..., 0] > 127).astype(np.uint8) * 4 + (img[..., 1] > 127) * 2 + (img[..., 2] > 127)  # B, G, R bits
    return _CODE_TO_LABEL[code]


def overlay(bgr: np.ndarray, labels: np.ndarray, face: np.ndarray, lms68: np.ndarray) -> np.ndarray:
    """A checking image: parsing colours blended over the frame, the face-mask outline, the 68 landmarks."""
    out = cv2.addWeighted(bgr, 0.65, PALETTE_BGR[labels], 0.35, 0)
    contours, _ = cv2.findContours(face.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (255, 255, 0), 1)
    radius = max(1, bgr.shape[1] // 256)
    for x, y in lms68:
        cv2.circle(out, (int(round(x)), int(round(y))), radius, (0, 255, 0), -1)
    return out
