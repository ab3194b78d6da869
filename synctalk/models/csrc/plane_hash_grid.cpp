// Fused CPU kernels of the tri-plane multiresolution hash grid (synctalk.models.encoding).
//
// forward: for every point, plane and level, the four corner rows of the shared table are found (dense levels:
// row-major vertex index; hashed levels: (x ^ y * 2654435761) & mask) and bilinearly interpolated, in one pass
// without any index or weight tensor in memory. backward: the output gradient is scattered into the table; the
// (plane, level) slices own disjoint table rows, so they run in parallel without atomics.
// Same arithmetic as TorchPlaneHashGrids.forward (float32 coordinates, wrapping uint32 hash).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstdint>

namespace {

constexpr uint32_t kPrime = 2654435761u;

struct Corners {
  int64_t row[4];
  float weight[4];
};

// corners (0,0), (1,0), (0,1), (1,1) of the cell holding (u, v) at one plane and level
inline Corners corners(float u, float v, float res, int64_t side, bool dense, uint32_t mask, int64_t offset) {
  const float px = u * res, py = v * res;
  // floor, clamped to [0, res - 1]; truncation equals floor wherever the clamp does not decide (and, unlike
  // std::floor without SSE4.1, needs no library call)
  const int32_t top = static_cast<int32_t>(res) - 1;
  const int32_t x0 = std::max(std::min(static_cast<int32_t>(std::max(px, -1.0f)), top), 0);
  const int32_t y0 = std::max(std::min(static_cast<int32_t>(std::max(py, -1.0f)), top), 0);
  const float fx = px - static_cast<float>(x0), fy = py - static_cast<float>(y0), gx = 1.0f - fx, gy = 1.0f - fy;
  Corners c;
  if (dense) {
    const int64_t base = x0 + static_cast<int64_t>(y0) * side;
    c.row[0] = base; c.row[1] = base + 1; c.row[2] = base + side; c.row[3] = base + side + 1;
  } else {
    const uint32_t x = static_cast<uint32_t>(x0), x1 = x + 1u;
    const uint32_t hy0 = static_cast<uint32_t>(y0) * kPrime, hy1 = hy0 + kPrime;
    c.row[0] = (x ^ hy0) & mask; c.row[1] = (x1 ^ hy0) & mask; c.row[2] = (x ^ hy1) & mask; c.row[3] = (x1 ^ hy1) & mask;
  }
  for (int k = 0; k < 4; ++k) c.row[k] += offset;
  c.weight[0] = gx * gy; c.weight[1] = fx * gy; c.weight[2] = gx * fy; c.weight[3] = fx * fy;
  return c;
}

// The level layout of a grid (TorchPlaneHashGrids' buffers, read in place): resolution (L,) float32, offsets (P, L)
// int32 (first row of each plane and level in the shared table), dense_side (D,) int32 (the first D levels dense).
struct Levels {
  const float* resolution;
  const int32_t* offsets;
  const int32_t* dense_side;
  int64_t num_levels, num_dense;
  uint32_t mask;

  Levels(const torch::Tensor& resolution_, const torch::Tensor& offsets_, const torch::Tensor& dense_side_,
         int64_t table_mask, int64_t planes) {
    TORCH_CHECK(resolution_.scalar_type() == torch::kFloat && resolution_.is_contiguous(), "resolution: float32");
    TORCH_CHECK(offsets_.scalar_type() == torch::kInt && offsets_.is_contiguous() && offsets_.dim() == 2 &&
                offsets_.size(0) == planes && offsets_.size(1) == resolution_.size(0), "offsets: int32 (planes, levels)");
    TORCH_CHECK(dense_side_.scalar_type() == torch::kInt && dense_side_.size(0) <= resolution_.size(0),
                "dense_side: int32, at most one per level");
    resolution = resolution_.data_ptr<float>(); offsets = offsets_.data_ptr<int32_t>();
    dense_side = dense_side_.data_ptr<int32_t>();
    num_levels = resolution_.size(0); num_dense = dense_side_.size(0); mask = static_cast<uint32_t>(table_mask);
  }

  Corners at(int64_t plane, int64_t level, float u, float v) const {
    const bool dense = level < num_dense;
    return corners(u, v, resolution[level], dense ? dense_side[level] : 0, dense, mask,
                   offsets[plane * num_levels + level]);
  }
};

}  // namespace

// uv (N, P, 2) float32 in [0, 1]; table (T, F) float32; the level layout as in Levels. Returns (N, P, L, F).
torch::Tensor forward(torch::Tensor uv, torch::Tensor table, torch::Tensor resolution, torch::Tensor offsets,
                      torch::Tensor dense_side, int64_t table_mask) {
  TORCH_CHECK(uv.device().is_cpu() && table.device().is_cpu(), "plane_hash_grid: CPU tensors only");
  TORCH_CHECK(uv.scalar_type() == torch::kFloat && table.scalar_type() == torch::kFloat, "plane_hash_grid: float32");
  TORCH_CHECK(uv.dim() == 3 && uv.size(2) == 2, "uv must be (N, planes, 2)");
  TORCH_CHECK(table.dim() == 2, "table must be (T, F)");
  uv = uv.contiguous(); table = table.contiguous();
  const int64_t n = uv.size(0), planes = uv.size(1), width = table.size(1);
  const Levels levels(resolution, offsets, dense_side, table_mask, planes);
  auto out = torch::empty({n, planes, levels.num_levels, width}, table.options());
  const float* uvp = uv.data_ptr<float>();
  const float* tab = table.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, n, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t p = 0; p < planes; ++p) {
        const float u = uvp[(i * planes + p) * 2], v = uvp[(i * planes + p) * 2 + 1];
        float* dst = o + (i * planes + p) * levels.num_levels * width;
        for (int64_t l = 0; l < levels.num_levels; ++l) {
          const Corners c = levels.at(p, l, u, v);
          for (int64_t f = 0; f < width; ++f) {
            dst[l * width + f] = tab[c.row[0] * width + f] * c.weight[0] + tab[c.row[1] * width + f] * c.weight[1] +
                                 tab[c.row[2] * width + f] * c.weight[2] + tab[c.row[3] * width + f] * c.weight[3];
          }
        }
      }
    }
  });
  return out;
}

// grad (N, P, L, F) of forward's output -> gradient of the table (rows, F).
torch::Tensor backward(torch::Tensor grad, torch::Tensor uv, int64_t rows, torch::Tensor resolution,
                       torch::Tensor offsets, torch::Tensor dense_side, int64_t table_mask) {
  const int64_t n = uv.size(0), planes = uv.size(1), width = grad.size(3);
  const Levels levels(resolution, offsets, dense_side, table_mask, planes);
  // (P, L, N, F) and (P, N, 2): every (plane, level) task below reads its points contiguously
  auto g_t = grad.to(torch::kFloat).permute({1, 2, 0, 3}).contiguous();
  auto uv_t = uv.permute({1, 0, 2}).contiguous();
  auto out = torch::zeros({rows, width}, g_t.options());
  const float* uvp = uv_t.data_ptr<float>(); const float* g = g_t.data_ptr<float>(); float* t = out.data_ptr<float>();
  // each (plane, level) writes only its own rows of the table
  at::parallel_for(0, planes * levels.num_levels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t p = task / levels.num_levels, l = task % levels.num_levels;
      const float* uvs = uvp + p * n * 2;
      const float* gs = g + task * n * width;
      for (int64_t i = 0; i < n; ++i) {
        const Corners c = levels.at(p, l, uvs[2 * i], uvs[2 * i + 1]);
        if (width == 1) {
          const float gi = gs[i];
          for (int k = 0; k < 4; ++k) t[c.row[k]] += gi * c.weight[k];
        } else {
          const float* gi = gs + i * width;
          for (int k = 0; k < 4; ++k) {
            float* row = t + c.row[k] * width;
            for (int64_t f = 0; f < width; ++f) row[f] += gi[f] * c.weight[k];
          }
        }
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "plane hash grid lookup (CPU)");
  m.def("backward", &backward, "plane hash grid table gradient (CPU)");
}
