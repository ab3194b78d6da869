"""Face models for the Head Motion Tracker: 3D landmark positions from identity and expression.

Every backend gives the 68 landmarks of the 68-point layout in the *head frame* (metres; x to the
image's right for a frontal face, y up, z out of the face, origin about 5 cm behind the face):

- ``canonical`` (the default, weight-free): MediaPipe's canonical metric face (true depth, shipped as
  ``canonical_face_68.txt``) with a bounded identity: the face's width, height and depth each scale by
  at most ``CANONICAL_ID_BOUND`` x 5%, so the depth can never collapse to a flat face that would make
  every focal length fit; expression = the subject's FaceMesh components (as ``subject``).
- ``subject`` (weight-free): the subject's own FaceMesh 3D landmarks, similarity-aligned over the
  video (generalised Procrustes) and averaged into a template, scaled to a 90 mm distance between
  the outer eye corners; identity = free per-point offsets (mm), expression = the first principal
  components of the aligned residuals (unit-variance coefficients).
- ``template``: a fixed 68-point 3D template from a file (a scan, another face model, a synthetic
  subject's true shape) with the subject's FaceMesh expression components; no identity freedom.
- ``bfm``: the Basel Face Model 2009 (``01_MorphableModel.mat``) with the expression basis the
  3DMM trackers of the field use (``Exp_Pca.bin``, ``std_exp.txt``, ``BFM_exp_idx.mat``) and the 68
  landmark vertex ids (a text file); 100 identity and 79 expression coefficients.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from synctalk.errors import UserError
from synctalk.face.expressions import OUTER_EYE_CORNERS_M
from synctalk.face.facemesh import MESH_TO_68
from synctalk.io import atomic_path

CANONICAL_FACE = Path(__file__).with_name("canonical_face_68.txt")  # mm, head axes, Apache-2.0 (see its header)
CANONICAL_NOTICE = """MediaPipe's canonical metric face mesh (468 vertices, centimetres) from the Face Landmarker model
(face_landmarker.task: geometry_pipeline_metadata_landmarks.binarypb), reduced to the 68-point layout
(synctalk.face.facemesh.MESH_TO_68) and written in millimetres, head axes: x to the image's right for a
frontal face, y up, z out of the face. Regenerate: python -m synctalk.face.face_model face_landmarker.task
Copyright 2020-2023 The MediaPipe Authors. Licensed under the Apache License, Version 2.0
(http://www.apache.org/licenses/LICENSE-2.0); derived work: vertex subset and unit change only."""
CANONICAL_MESH = Path(__file__).with_name("canonical_face.obj")  # the synthetic subject's face
CANONICAL_MESH_NOTICE = """MediaPipe's canonical metric face mesh (468 vertices in centimetres, 898 triangles, texture coordinates)
from the Face Landmarker model (face_landmarker.task: geometry_pipeline_metadata_landmarks.binarypb), head axes:
x to the image's right for a frontal face, y up, z out of the face. Regenerate:
python -m synctalk.face.face_model face_landmarker.task
Copyright 2020-2023 The MediaPipe Authors. Licensed under the Apache License, Version 2.0
(http://www.apache.org/licenses/LICENSE-2.0); derived work: format change only."""
CANONICAL_ID_STEP = 0.05  # one identity unit of the canonical model: 5% of the face's width, height or depth
CANONICAL_ID_BOUND = 2.0  # identity units: at most +-10% per axis
HEAD_DEPTH_M = 0.05  # the head-frame origin sits this far behind the face's rigid points
# 68-point landmarks that expressions hardly move: the upper jaw contour, the nose and the eye corners
RIGID_68 = [0, 1, 2, 3, 13, 14, 15, 16, *range(27, 36), 36, 39, 42, 45]


class FaceModel(nn.Module):
    """Linear face model ``points = mean + id_basis @ id + exp_basis @ exp``.

    Args:
        mean: (P, 3) metres.
        id_basis: (P, 3, I) metres per unit identity coefficient.
        exp_basis: (P, 3, E) metres per unit expression coefficient.
        name: backend name, for reports.
        id_bound: identity coefficients are kept within +-``id_bound`` by the fit (None: unbounded).
    """

    def __init__(self, mean: np.ndarray, id_basis: np.ndarray, exp_basis: np.ndarray, name: str,
                 id_bound: float | None = None):
        super().__init__()
        self.id_bound = id_bound
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

    def subset(self, points: list[int]) -> "FaceModel":
        """The same model over some of its points."""
        return FaceModel(self.mean[points].numpy(), self.id_basis[points].numpy(), self.exp_basis[points].numpy(),
                         self.name, self.id_bound)

    def without_expressions(self) -> "FaceModel":
        """The same model with no expression components: a rigid face of the model's identity freedom."""
        return FaceModel(self.mean.numpy(), self.id_basis.numpy(), self.exp_basis[..., :0].numpy(), self.name,
                         self.id_bound)

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


def _head_frame(mean: np.ndarray) -> np.ndarray:
    """Centre a (P, 3) shape and put the head-frame origin behind the face (nose tip about 7 cm in front)."""
    mean = mean - mean.mean(0)
    mean[:, 2] += HEAD_DEPTH_M - mean[:, 2].max() + 0.02
    return mean


def _subject_shapes(mesh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The subject's FaceMesh shapes, similarity-aligned (generalised Procrustes), scaled to a 90 mm outer-eye
    distance and reduced to the 68 points: per frame (N, 68, 3) and their mean (68, 3), metres, head axes."""
    pts = _to_head_axes(mesh)
    pts -= pts.mean(1, keepdims=True)
    ref = pts[len(pts) // 2]
    for _ in range(3):  # generalised Procrustes: align to the mean, recompute the mean
        aligned = np.stack([_similarity_align(p, ref) for p in pts])
        ref = aligned.mean(0)
        ref -= ref.mean(0)
    scale = OUTER_EYE_CORNERS_M / np.linalg.norm(ref[33] - ref[263])
    return aligned[:, MESH_TO_68] * scale, ref[MESH_TO_68] * scale


def _expression_basis(shapes: np.ndarray, num_exp: int) -> np.ndarray:
    """(68, 3, E) principal components of the shapes' deviations from their mean, one standard deviation each."""
    residual = (shapes - shapes.mean(0)).reshape(len(shapes), -1)
    num_exp = min(num_exp, max(len(shapes) - 1, 0))
    if num_exp <= 0:
        return np.zeros((shapes.shape[1], 3, 0))
    _, s, vt = np.linalg.svd(residual, full_matrices=False)
    std = s[:num_exp] / np.sqrt(max(len(shapes) - 1, 1))
    return (vt[:num_exp] * std[:, None]).T.reshape(shapes.shape[1], 3, num_exp)


def subject_face_model(mesh: np.ndarray, num_exp: int = 10, id_scale_m: float = 0.001) -> FaceModel:
    """The weight-free face model of one subject from its FaceMesh landmarks.

    Args:
        mesh: (N, 478, 3) FaceMesh points of the video (pixels; z on the scale of x).
        num_exp: expression components kept.
        id_scale_m: metres per unit identity coefficient (one per point and axis).
    """
    shapes, mean = _subject_shapes(mesh)
    id_basis = np.eye(len(MESH_TO_68) * 3).reshape(len(MESH_TO_68), 3, -1) * id_scale_m
    return FaceModel(_head_frame(mean), id_basis, _expression_basis(shapes, num_exp), "subject")


def _metres_per_unit(points: np.ndarray, eye_corners: tuple[int, int]) -> float:
    """The unit of a face shape given in metres, millimetres or micrometres: the power of ten that makes the
    outer eye corners a human distance apart."""
    d = np.linalg.norm(points[eye_corners[0]] - points[eye_corners[1]])
    if not np.isfinite(d) or d <= 0:
        raise UserError("the face shape has coincident outer eye corners: it is not a face shape")
    return float(10.0 ** np.round(np.log10(OUTER_EYE_CORNERS_M / d)))


def read_template(path: str | Path) -> np.ndarray:
    """A 68-point 3D face template (``.npy`` or a whitespace text file, 68 rows x 3) in metres, head axes."""
    if not path:
        raise UserError("the face template is not configured: set face_model.template=/path/to/68x3 "
                        "(.npy or .txt; head axes: x to the image's right for a frontal face, y up, z out of the face)")
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"face template {path} does not exist (face_model.template)")
    try:
        points = np.load(path) if path.suffix == ".npy" else np.loadtxt(path)
    except ValueError as err:
        raise UserError(f"face template {path} cannot be read: {err}") from err
    points = np.asarray(points, np.float64)
    if points.shape != (68, 3) or not np.isfinite(points).all():
        raise UserError(f"face template {path} holds an array of shape {points.shape}; expected 68 x 3 finite "
                        f"values (the 68-point layout)")
    return points * _metres_per_unit(points, (36, 45))


def template_face_model(path: str | Path, mesh: np.ndarray, num_exp: int = 10) -> FaceModel:
    """A fixed 68-point 3D template as the identity (from a scan, another face model, or a synthetic subject's
    truth), with the expression components of the subject's own FaceMesh landmarks; no identity freedom.

    Args:
        path: the template file (:func:`read_template`); mesh: (N, 478, 3) FaceMesh points of the video.
    """
    template = read_template(path)
    shapes, _ = _subject_shapes(mesh)
    return FaceModel(_head_frame(template), np.zeros((68, 3, 0)), _expression_basis(shapes, num_exp), "template")


def canonical_face_model(mesh: np.ndarray, num_exp: int = 10) -> FaceModel:
    """MediaPipe's canonical metric face with a bounded identity (three axis scales) and the subject's FaceMesh
    expression components.

    Args:
        mesh: (N, 478, 3) FaceMesh points of the video.
    """
    mean = _head_frame(read_template(CANONICAL_FACE))
    centred = mean - mean.mean(0)
    id_basis = np.zeros((68, 3, 3))
    for axis in range(3):  # identity k scales axis k about the face's centre
        id_basis[:, axis, axis] = centred[:, axis] * CANONICAL_ID_STEP
    shapes, _ = _subject_shapes(mesh)
    return FaceModel(mean, id_basis, _expression_basis(shapes, num_exp), "canonical", CANONICAL_ID_BOUND)


def canonical_mesh_from_task(task_file: str | Path, with_uv: bool = False
                             ) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(468, 3) MediaPipe's canonical face mesh in centimetres (head axes), read from a Face Landmarker model
    file (a zip holding ``geometry_pipeline_metadata_landmarks.binarypb``); with ``with_uv`` also its texture
    coordinates (468, 2; OBJ convention, v up) and triangles (898, 3)."""
    import zipfile

    from mediapipe.tasks.cc.vision.face_geometry.proto import geometry_pipeline_metadata_pb2

    try:
        with zipfile.ZipFile(task_file) as archive:
            raw = archive.read("geometry_pipeline_metadata_landmarks.binarypb")
    except (OSError, KeyError, zipfile.BadZipFile) as err:
        raise UserError(f"{task_file} is not a Face Landmarker model with its face geometry: {err}") from err
    metadata = geometry_pipeline_metadata_pb2.GeometryPipelineMetadata()
    metadata.ParseFromString(raw)
    vertices = np.asarray(metadata.canonical_mesh.vertex_buffer, np.float64).reshape(-1, 5)  # x, y, z, u, v
    if not with_uv:
        return vertices[:, :3]
    uv = np.stack([vertices[:, 3], 1.0 - vertices[:, 4]], 1)
    return vertices[:, :3], uv, np.asarray(metadata.canonical_mesh.index_buffer, np.int64).reshape(-1, 3)


def write_canonical_template(task_file: str | Path, path: str | Path = CANONICAL_FACE) -> np.ndarray:
    """Write the 68-point canonical face (mm) derived from ``task_file``, with its licence notice; returns it."""
    points = canonical_mesh_from_task(task_file)[MESH_TO_68] * 10.0
    with atomic_path(Path(path)) as tmp:
        np.savetxt(tmp, points, fmt="%.4f", header=CANONICAL_NOTICE)
    return points


def read_obj(path: Path = CANONICAL_MESH) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices (V, 3), texture coordinates (V, 2; v grows downwards) and triangles (T, 3) of an OBJ file whose
    vertex and texture indices agree (as in ``canonical_face.obj``)."""
    vertices, uv, faces = [], [], []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if parts[0] == "v":
            vertices.append([float(x) for x in parts[1:4]])
        elif parts[0] == "vt":
            uv.append([float(x) for x in parts[1:3]])
        elif parts[0] == "f":
            faces.append([int(p.split("/")[0]) - 1 for p in parts[1:4]])
    uv_array = np.array(uv, np.float64)
    uv_array[:, 1] = 1.0 - uv_array[:, 1]  # OBJ texture v grows upwards
    return np.array(vertices, np.float64), uv_array, np.array(faces, np.int64)


def write_canonical_mesh(task_file: str | Path, path: str | Path = CANONICAL_MESH) -> None:
    """Write the canonical face mesh of ``task_file`` as an OBJ file (cm, texture coordinates), with its notice."""
    vertices, uv, triangles = canonical_mesh_from_task(task_file, with_uv=True)
    lines = ["# " + line for line in CANONICAL_MESH_NOTICE.splitlines()]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
    lines += [f"vt {u:.6f} {v:.6f}" for u, v in uv]
    lines += ["f " + " ".join(f"{i + 1}/{i + 1}" for i in tri) for tri in triangles]
    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")


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
        raise UserError("the BFM folder is not configured: set face_model.bfm_dir=/path/to/BFM")
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
    # releases differ in units (micrometres, millimetres)
    unit = _metres_per_unit(mean, (36, 45))
    mean = mean * unit
    id_basis = (shape_pc[rows, :num_id] * shape_ev[None, :num_id]).reshape(68, 3, num_id) * unit
    exp_basis = (exp_pc[:num_exp, exp_rows].T * exp_std[None, :num_exp]).reshape(68, 3, num_exp) * unit
    return FaceModel(_head_frame(mean), id_basis, exp_basis, "bfm")


@dataclass
class FaceModelSpec:
    """The ``face_model`` config group: the face model the Head Motion Tracker fits (a subclass per model, its
    settings as fields) and how strongly the fit holds its coefficients to zero.

    Adding a face model: a subclass with :meth:`build` and ``conf/face_model/<name>.yaml`` naming it by
    ``_target_``; ``synctalk preprocess face_model=<name>`` then fits it.
    """

    num_exp: int = 10  # expression components (from the subject's landmarks, except where a model has its own)
    id_reg: float = 0.5  # weight of mean(identity^2) in the landmark fit
    exp_reg: float = 0.5  # weight of mean(expression^2)

    def build(self, mesh: np.ndarray) -> FaceModel:
        """The model for one video; mesh: (N, 478, 3) landmarks of the video (pixels)."""
        raise NotImplementedError


@dataclass
class CanonicalFace(FaceModelSpec):
    """:func:`canonical_face_model`: MediaPipe's metric face, bounded identity (weight-free, shipped)."""

    def build(self, mesh: np.ndarray) -> FaceModel:
        return canonical_face_model(mesh, self.num_exp)


@dataclass
class SubjectFace(FaceModelSpec):
    """:func:`subject_face_model`: the subject's own mean landmarks, free identity."""

    def build(self, mesh: np.ndarray) -> FaceModel:
        return subject_face_model(mesh, self.num_exp)


@dataclass
class TemplateFace(FaceModelSpec):
    """:func:`template_face_model`: a fixed 3D shape; ``template``: its 68 x 3 file (.npy or text)."""

    template: Optional[str] = None

    def build(self, mesh: np.ndarray) -> FaceModel:
        return template_face_model(self.template, mesh, self.num_exp)


@dataclass
class BaselFace(FaceModelSpec):
    """:func:`bfm_face_model`: the Basel Face Model 2009 from the files in ``bfm_dir``."""

    bfm_dir: Optional[str] = None
    num_id: int = 100
    num_exp: int = 79

    def build(self, mesh: np.ndarray) -> FaceModel:
        return bfm_face_model(self.bfm_dir, self.num_id, self.num_exp)


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m synctalk.face.face_model /path/to/face_landmarker.task")
    write_canonical_template(sys.argv[1])
    write_canonical_mesh(sys.argv[1])
    print(f"wrote {CANONICAL_FACE} and {CANONICAL_MESH}")
