"""Face models for the Head Motion Tracker: 3D landmark positions from identity and expression.

Both backends give the 68 landmarks of the 68-point layout in the *head frame* (metres; x to the
image's right for a frontal face, y up, z out of the face, origin about 5 cm behind the face):

- ``subject`` (weight-free): the subject's own FaceMesh 3D landmarks, similarity-aligned over the
  video (generalised Procrustes) and averaged into a template, scaled to a 90 mm distance between
  the outer eye corners; identity = free per-point offsets (mm), expression = the first principal
  components of the aligned residuals (unit-variance coefficients).
- ``bfm``: the Basel Face Model 2009 (``01_MorphableModel.mat``) with the expression basis the
  3DMM trackers of the field use (``Exp_Pca.bin``, ``std_exp.txt``, ``BFM_exp_idx.mat``) and the 68
  landmark vertex ids (a text file); 100 identity and 79 expression coefficients.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from synctalk.data.face_geometry import OUTER_EYE_CORNERS_M
from synctalk.data.landmarks import MESH_TO_68
from synctalk.errors import UserError

HEAD_DEPTH_M = 0.05  # the head-frame origin sits this far behind the face's rigid points


class FaceModel(nn.Module):
    """Linear face model ``points = mean + id_basis @ id + exp_basis @ exp``.

    Args:
        mean: (P, 3) metres.
        id_basis: (P, 3, I) metres per unit identity coefficient.
        exp_basis: (P, 3, E) metres per unit expression coefficient.
        name: backend name, for reports.
    """

    def __init__(self, mean: np.ndarray, id_basis: np.ndarray, exp_basis: np.ndarray, name: str):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("id_basis", torch.as_tensor(id_basis, dtype=torch.float32))
        self.register_buffer("exp_basis", torch.as_tensor(exp_basis, dtype=torch.float32))
        self.name = name

    @property
    def num_id(self) -> int:
        return self.id_basis.shape[-1]

    @property
    def num_exp(self) -> int:
        return self.exp_basis.shape[-1]

    def forward(self, id_coeff: torch.Tensor, exp_coeff: torch.Tensor) -> torch.Tensor:
        """Args: id_coeff (B, I), exp_coeff (B, N, E). Returns (B, N, P, 3) metres."""
        shape = self.mean + torch.einsum("pci,bi->bpc", self.id_basis, id_coeff)
        return shape[:, None] + torch.einsum("pce,bne->bnpc", self.exp_basis, exp_coeff)


def _to_head_axes(mesh: np.ndarray) -> np.ndarray:
    """FaceMesh (u right, v down, depth away from the camera) -> head axes (x right, y up, z out)."""
    return np.stack([mesh[..., 0], -mesh[..., 1], -mesh[..., 2]], -1).astype(np.float64)


def _similarity_align(src: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``src`` (P, 3) rotated, scaled and translated onto ``ref`` (both centred)."""
    u, s, vt = np.linalg.svd(src.T @ ref)
    d = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1, 1, d]) @ vt
    scale = (s * [1, 1, d]).sum() / (src ** 2).sum()
    return scale * src @ rot


def subject_face_model(mesh: np.ndarray, num_exp: int = 10, id_scale_m: float = 0.001) -> FaceModel:
    """The weight-free face model of one subject from its FaceMesh landmarks.

    Args:
        mesh: (N, 478, 3) FaceMesh points of the video (pixels; z on the scale of x).
        num_exp: expression components kept.
        id_scale_m: metres per unit identity coefficient (one per point and axis).
    """
    pts = _to_head_axes(mesh)
    pts -= pts.mean(1, keepdims=True)
    ref = pts[len(pts) // 2]
    for _ in range(3):  # generalised Procrustes: align to the mean, recompute the mean
        aligned = np.stack([_similarity_align(p, ref) for p in pts])
        ref = aligned.mean(0)
        ref -= ref.mean(0)
    scale = OUTER_EYE_CORNERS_M / np.linalg.norm(ref[33] - ref[263])
    aligned, ref = aligned * scale, ref * scale
    sub = aligned[:, MESH_TO_68]
    mean = ref[MESH_TO_68].copy()
    mean[:, 2] += HEAD_DEPTH_M - mean[:, 2].max() + 0.02  # nose tip about 7 cm in front of the origin
    shift = mean - ref[MESH_TO_68]
    residual = (sub + shift - mean).reshape(len(sub), -1)
    residual -= residual.mean(0)
    num_exp = min(num_exp, max(len(sub) - 1, 0))
    if num_exp > 0:
        _, s, vt = np.linalg.svd(residual, full_matrices=False)
        std = s[:num_exp] / np.sqrt(max(len(sub) - 1, 1))
        exp_basis = (vt[:num_exp] * std[:, None]).T.reshape(len(MESH_TO_68), 3, num_exp)
    else:
        exp_basis = np.zeros((len(MESH_TO_68), 3, 0))
    id_basis = np.eye(len(MESH_TO_68) * 3).reshape(len(MESH_TO_68), 3, -1) * id_scale_m
    return FaceModel(mean, id_basis, exp_basis, "subject")


def _read_exp_pca(path: Path, num_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """``Exp_Pca.bin``: int32 count E, then float32 mean (3V) and basis (E, 3V)."""
    raw = path.read_bytes()
    count = int(np.frombuffer(raw[:4], np.int32)[0])
    floats = np.frombuffer(raw[4:], np.float32)
    if floats.size != 3 * num_vertices * (count + 1):
        raise UserError(f"{path} holds {floats.size} values; expected {3 * num_vertices * (count + 1)} "
                        f"for {count} components over {num_vertices} vertices")
    return floats[:3 * num_vertices], floats[3 * num_vertices:].reshape(count, 3 * num_vertices)


def bfm_face_model(folder: str | Path | None, num_id: int = 100, num_exp: int = 79) -> FaceModel:
    """The Basel Face Model 2009 restricted to the 68 landmarks, in metres.

    Files in ``folder`` (user-supplied; the BFM licence forbids redistribution):
    ``01_MorphableModel.mat`` (shapeMU, shapePC, shapeEV), ``Exp_Pca.bin`` and
    ``std_exp.txt`` (expression basis over the front-face vertices), ``BFM_exp_idx.mat``
    (``trimIndex``: 1-based BFM vertex of each expression vertex) and ``landmarks_68.txt`` (68
    0-based BFM vertex ids).
    """
    from scipy.io import loadmat

    if not folder:
        raise UserError("the BFM folder is not configured: set preprocess.face_model.bfm_dir=/path/to/BFM")
    folder = Path(folder).expanduser()
    names = ("01_MorphableModel.mat", "Exp_Pca.bin", "std_exp.txt", "BFM_exp_idx.mat", "landmarks_68.txt")
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise UserError(f"{folder} lacks {', '.join(missing)} (the BFM 2009 files and the expression basis)")
    mm = loadmat(str(folder / "01_MorphableModel.mat"))
    shape_mu, shape_pc, shape_ev = mm["shapeMU"][:, 0], mm["shapePC"], mm["shapeEV"][:, 0]
    lms = np.loadtxt(folder / "landmarks_68.txt", dtype=np.int64).reshape(-1)
    if len(lms) != 68 or lms.max() * 3 + 2 >= len(shape_mu):
        raise UserError(f"{folder / 'landmarks_68.txt'} must hold 68 vertex ids of the BFM mesh")
    trim = loadmat(str(folder / "BFM_exp_idx.mat"))["trimIndex"].reshape(-1).astype(np.int64) - 1
    exp_mu, exp_pc = _read_exp_pca(folder / "Exp_Pca.bin", len(trim))
    exp_std = np.loadtxt(folder / "std_exp.txt").reshape(-1)
    where = {int(v): k for k, v in enumerate(trim)}
    if any(int(v) not in where for v in lms):
        raise UserError("a landmark vertex of landmarks_68.txt is outside the expression basis (BFM_exp_idx.mat)")
    rows = np.array([[3 * v, 3 * v + 1, 3 * v + 2] for v in lms]).reshape(-1)
    exp_rows = np.array([[3 * where[int(v)] + c for c in range(3)] for v in lms]).reshape(-1)
    num_id, num_exp = min(num_id, shape_pc.shape[1]), min(num_exp, exp_pc.shape[0])
    mean = (shape_mu[rows] + exp_mu[exp_rows]).reshape(68, 3)
    # releases differ in units (micrometres, millimetres): the power of ten that makes the outer eye
    # corners (landmarks 36, 45) a human distance apart converts to metres
    unit = 10.0 ** np.round(np.log10(OUTER_EYE_CORNERS_M / np.linalg.norm(mean[36] - mean[45])))
    mean = mean * unit
    id_basis = (shape_pc[rows, :num_id] * shape_ev[None, :num_id]).reshape(68, 3, num_id) * unit
    exp_basis = (exp_pc[:num_exp, exp_rows].T * exp_std[None, :num_exp]).reshape(68, 3, num_exp) * unit
    # move into the head frame of the weight-free model: centred, origin behind the face
    mean = mean - mean.mean(0)
    mean[:, 2] += HEAD_DEPTH_M - mean[:, 2].max() + 0.02
    return FaceModel(mean, id_basis, exp_basis, "bfm")
