"""The tri-plane hash encoding against a straightforward per-point reference."""
from __future__ import annotations

import math

import pytest
import torch

from synctalk.errors import UserError
from synctalk.external import is_available
from synctalk.models import encoding
from synctalk.models.encoding import TriPlaneHashEncoding, level_resolutions, spherical_harmonics


def reference_encoding(enc: TriPlaneHashEncoding, points: torch.Tensor) -> torch.Tensor:
    """Loop-by-loop tri-plane lookup with the documented dense / hashed indexing."""
    grid = enc.grid
    table = grid.table_mask + 1
    res = grid.resolution.long().tolist()
    sizes = [min((r + 1) ** 2, table) for r in res]
    per_plane = sum(sizes)
    out = []
    for x in points:
        unit = ((x + enc.bound) / (2 * enc.bound)).clamp(0, 1)
        feats = []
        for plane, (a, b) in enumerate(((0, 1), (1, 2), (0, 2))):
            for level, r in enumerate(res):
                pu, pv = float(unit[a]) * r, float(unit[b]) * r
                cu, cv = min(math.floor(pu), r - 1), min(math.floor(pv), r - 1)
                fu, fv = pu - cu, pv - cv
                value = torch.zeros(grid.features_per_level)
                for du, dv, w in ((0, 0, (1 - fu) * (1 - fv)), (1, 0, fu * (1 - fv)), (0, 1, (1 - fu) * fv),
                                  (1, 1, fu * fv)):
                    iu, iv = cu + du, cv + dv
                    if (r + 1) ** 2 <= table:
                        idx = iu + iv * (r + 1)
                    else:
                        idx = (iu ^ (iv * 2654435761)) % table
                    row = plane * per_plane + sum(sizes[:level]) + idx
                    value = value + w * grid.embeddings[row]
                feats.append(value)
        out.append(torch.cat(feats))
    return torch.stack(out)


def test_level_resolutions_grow_geometrically_from_base_to_max():
    res = level_resolutions(12, 64, 512)
    assert res[0] == 64 and res[-1] == 512 and res == sorted(res)


@pytest.mark.parametrize("cpu_kernel", [True, False], ids=["fused", "tensor_ops"])
@pytest.mark.parametrize("features", [1, 2])
def test_torch_backend_matches_reference(features, cpu_kernel):
    torch.manual_seed(0)
    enc = TriPlaneHashEncoding(num_levels=5, features_per_level=features, log2_hashmap_size=8, base_resolution=4,
                               max_resolution=40, bound=1.0, cpu_kernel=cpu_kernel)
    with torch.no_grad():
        enc.grid.embeddings.uniform_(-1, 1)  # make every entry distinct
    assert 0 < enc.grid.num_dense < 5  # both dense and hashed levels are exercised
    points = torch.tensor([[0.0, 0.0, 0.0], [-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [0.3, -0.7, 0.55],
                           [0.999, -0.123, 0.5], [-0.42, 0.88, -0.05]])
    points = torch.cat([points, torch.rand(20, 3) * 2 - 1])
    got = enc(points)
    assert got.shape == (len(points), 3 * 5 * features)
    # float32 vs float64 interpolation weights differ by ~1e-6; an indexing error would be O(0.1)
    torch.testing.assert_close(got, reference_encoding(enc, points), rtol=1e-4, atol=1e-5)


def test_points_outside_the_box_are_clamped_to_its_faces():
    enc = TriPlaneHashEncoding(num_levels=2, base_resolution=4, max_resolution=8)
    torch.testing.assert_close(enc(torch.tensor([[5.0, -5.0, 0.2]])), enc(torch.tensor([[1.0, -1.0, 0.2]])))


def test_gradients_reach_only_the_touched_table_rows():
    enc = TriPlaneHashEncoding(num_levels=3, base_resolution=4, max_resolution=16)
    enc(torch.tensor([[0.1, 0.2, 0.3]])).sum().backward()
    touched = (enc.grid.embeddings.grad.abs().sum(-1) > 0).sum().item()
    assert 0 < touched <= 3 * 3 * 4


@pytest.mark.parametrize("cpu_kernel", [True, False], ids=["fused", "tensor_ops"])
@pytest.mark.parametrize("features", [1, 2])
def test_gradients_of_the_table_and_the_positions_are_right(features, cpu_kernel):
    """The hand-written backward (a scatter-add into the table; the interpolation weights for the positions,
    which need gradients where the torso warps its pixels): table gradients against autograd through the
    loop-by-loop reference, positions against finite differences (float64; random points lie away from cell edges)."""
    torch.manual_seed(1)
    enc = TriPlaneHashEncoding(num_levels=4, features_per_level=features, log2_hashmap_size=8, base_resolution=4,
                               max_resolution=40, cpu_kernel=cpu_kernel)
    with torch.no_grad():
        enc.grid.embeddings.uniform_(-1, 1)
    points = torch.rand(12, 3) * 1.8 - 0.9
    weights = torch.randn(12, enc.output_dim)
    (enc(points) * weights).sum().backward()
    table_grad = enc.grid.embeddings.grad.clone()
    enc.grid.embeddings.grad = None
    (reference_encoding(enc, points) * weights).sum().backward()
    torch.testing.assert_close(table_grad, enc.grid.embeddings.grad, rtol=1e-4, atol=1e-5)
    enc = enc.double()
    assert torch.autograd.gradcheck(enc, (points.double()[:4].requires_grad_(),), eps=1e-7, atol=1e-5)


def test_fused_cpu_lookup_gives_the_tensor_ops_numbers_at_the_model_size():
    """The default encoding (12 levels, 2^14 rows per level, 4 dense levels) on many points, both paths: the same
    features (the same float32 arithmetic) and table gradients equal up to the order of the sums."""
    assert encoding.cpu_kernel() is not None, "the C++ compiler is part of the supported setup"
    torch.manual_seed(2)
    fused, ops = TriPlaneHashEncoding(), TriPlaneHashEncoding(cpu_kernel=False)
    with torch.no_grad():
        fused.grid.embeddings.uniform_(-1, 1)
    ops.load_state_dict(fused.state_dict())
    points = torch.cat([torch.rand(5000, 3) * 2.4 - 1.2, torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])])
    out_fused, out_ops = fused(points), ops(points)
    assert type(out_fused.grad_fn.next_functions[0][0]).__name__ == "_FusedPlaneLookupBackward"
    assert torch.equal(out_fused, out_ops)
    upstream = torch.randn_like(out_ops)
    (out_fused * upstream).sum().backward()
    (out_ops * upstream).sum().backward()
    torch.testing.assert_close(fused.grid.embeddings.grad, ops.grid.embeddings.grad, rtol=1e-5, atol=1e-5)


def test_copies_of_the_package_share_one_kernel_build_and_a_changed_kernel_gets_its_own(tmp_path, monkeypatch):
    """An installed wheel, a checkout and an exported revision hold the kernel at different paths; torch would
    rebuild it whenever the path changes. The build is named by the source's content and compiles a copy kept
    in its build folder (no compiler runs here)."""
    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    name, source = encoding._kernel_source_in_build_folder(cpp_extension)
    assert source.is_relative_to(tmp_path / "extensions" / name)
    assert source.read_bytes() == encoding._KERNEL_SOURCE.read_bytes()
    written = source.stat().st_mtime_ns
    elsewhere = tmp_path / "wheel" / "csrc" / encoding._KERNEL_SOURCE.name
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_bytes(encoding._KERNEL_SOURCE.read_bytes())
    monkeypatch.setattr(encoding, "_KERNEL_SOURCE", elsewhere)
    assert encoding._kernel_source_in_build_folder(cpp_extension) == (name, source)
    assert source.stat().st_mtime_ns == written, "an unchanged source is not rewritten (ninja would rebuild)"
    elsewhere.write_text(elsewhere.read_text() + "\n// another kernel\n")
    other_name, other_source = encoding._kernel_source_in_build_folder(cpp_extension)
    assert other_name != name and other_source.read_bytes() == elsewhere.read_bytes()
    assert source.read_bytes() != elsewhere.read_bytes(), "the first build's source is left as it was"


def test_without_a_compiler_the_encoding_warns_once_and_uses_tensor_ops(monkeypatch, caplog):
    from torch.utils import cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    monkeypatch.setattr(encoding, "_cpu_kernel_cache", [])
    enc = TriPlaneHashEncoding(num_levels=3, base_resolution=4, max_resolution=16)
    points = torch.rand(10, 3) * 2 - 1
    with caplog.at_level("WARNING"):
        got = enc(points)
        enc(points)
    assert [r.message for r in caplog.records if "could not be built" in r.message] == [
        caplog.records[0].message], "one warning"
    assert "Ninja is required" in caplog.records[0].message
    reference = TriPlaneHashEncoding(num_levels=3, base_resolution=4, max_resolution=16, cpu_kernel=False)
    reference.load_state_dict(enc.state_dict())
    assert torch.equal(got, reference(points))


TRITON_CHECK = """
import json, sys
import torch
from synctalk.models import encoding
from synctalk.models.encoding import TorchPlaneHashGrids
torch.manual_seed(0)
errors = {}
# the model's sizes (4 dense levels, then hashed), several features, one plane (the torso's), no dense level
for name, sizes in {"model": dict(num_levels=12, features_per_level=1, log2_hashmap_size=14, base_resolution=64,
                                  max_resolution=512),
                    "features2": dict(num_levels=5, features_per_level=2, log2_hashmap_size=8, base_resolution=4,
                                      max_resolution=40),
                    "one_plane": dict(num_levels=4, features_per_level=2, log2_hashmap_size=8, base_resolution=4,
                                      max_resolution=40, num_planes=1),
                    "all_hashed": dict(num_levels=3, features_per_level=1, log2_hashmap_size=6, base_resolution=20,
                                       max_resolution=60)}.items():
    grids = TorchPlaneHashGrids(cpu_kernel=False, **sizes)
    with torch.no_grad():
        grids.embeddings.uniform_(-1, 1)
    uv = torch.rand(700, grids.num_planes, 2)
    uv[:5], uv[5:10] = 1.0, 0.0  # the grid's edges, where the cell index is clamped
    reference = grids(uv)
    upstream = torch.randn_like(reference)
    (reference * upstream).sum().backward()
    expected = grids.embeddings.grad.clone()
    grids.zero_grad()
    out = encoding._TritonPlaneLookup.apply(uv, grids.embeddings, grids)
    (out * upstream).sum().backward()
    scale = float(expected.abs().max())
    errors[name] = {"features": float((out - reference).abs().max()),
                    "gradient": float((grids.embeddings.grad - expected).abs().max()) / scale,
                    "dense": grids.num_dense, "shape_ok": out.shape == reference.shape}
json.dump(errors, sys.stdout)
"""


def test_triton_lookup_and_table_gradient_match_the_tensor_ops():
    """The Triton kernels (what CUDA GPUs run) interpreted on the CPU (``TRITON_INTERPRET=1``, in a fresh process:
    Triton reads it at import) against the tensor ops: features to 1e-6, table gradients to 1e-5 of their largest."""
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    errors = json.loads(done.stdout)
    assert errors["model"]["dense"] == 4 and errors["all_hashed"]["dense"] == 0
    for name, e in errors.items():
        assert e["shape_ok"] and e["features"] <= 1e-6 and e["gradient"] <= 1e-5, (name, e)


def test_the_gpu_lookup_is_chosen_only_where_it_can_run(monkeypatch):
    """``triton`` on a CUDA device when the kernels import and ``encoding.gpu_kernel`` is on; else the tensor ops."""
    grid = TriPlaneHashEncoding(num_levels=3, base_resolution=4, max_resolution=16, cpu_kernel=False).grid
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(encoding, "_gpu_kernel_cache", [object()])
    assert grid.lookup(cuda) == "triton" and grid.lookup(cpu) != "triton"
    grid.use_gpu_kernel = False
    assert grid.lookup(cuda) == "tensor_ops"
    grid.use_gpu_kernel = True
    monkeypatch.setattr(encoding, "_gpu_kernel_cache", [None])  # triton missing or failed once
    assert grid.lookup(cuda) == "tensor_ops"


def test_spherical_harmonics_are_orthonormal_on_the_sphere():
    torch.manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(200000, 3), dim=-1)
    sh = spherical_harmonics(dirs, 4)
    gram = sh.T @ sh * (4 * math.pi / len(dirs))
    torch.testing.assert_close(gram, torch.eye(16), atol=0.03, rtol=0)


@pytest.mark.skipif(is_available("tinycudann"), reason="tinycudann is installed here")
def test_tcnn_backend_without_the_package_says_how_to_install_it():
    with pytest.raises(UserError, match="pip install .*tiny-cuda-nn"):
        TriPlaneHashEncoding(backend="tcnn")


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="torch"):
        TriPlaneHashEncoding(backend="jax")
