// Attention of packed documents over a shared prefix and, causally, themselves: bf16 on the CPU.
//
// For each document of a bucket (count documents of `length` tokens, packed from row `start`),
// every query row attends to the prefix's keys and to the document's keys up to its own
// position. Per (document, kv head) the keys and values are packed once into the VNNI layout
// of oneDNN's AMX micro-kernels (ATen's cpublas::pack), then each block of query rows of each
// head of the group multiplies them with cpublas::brgemm; the softmax runs in float32 over the
// whole row (the keys fit in cache), and columns past a block's last causal key are skipped.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t KEY_BLOCK = 64;  // columns of one packed key block (oneDNN's limit is 64)

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

inline uint16_t bf16_bits(float f) {  // round to nearest even; inputs are finite
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// 2^t for t in [-126, 0]: a degree-5 polynomial on the fraction (relative error ~2e-6, far
// below bf16's rounding), written so that the compiler vectorizes the loops it sits in.
inline float exp2_nonpositive(float t) {
  t = t < -126.f ? -126.f : t;
  const float n = floorf(t + 0.5f), f = t - n;  // f in [-0.5, 0.5]
  float p = 1.3333558e-3f;
  p = p * f + 9.6181291e-3f;
  p = p * f + 5.5504109e-2f;
  p = p * f + 2.4022651e-1f;
  p = p * f + 6.9314718e-1f;
  p = p * f + 1.f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

// exp(scale * (s[j] - max)) for j < n as bf16 into p (zeros from n to n_end); returns their sum.
float exp_row(const float* s, int64_t n, int64_t n_end, float scale, uint16_t* p) {
  float mx = -3.0e38f;
  for (int64_t j = 0; j < n; ++j) mx = s[j] > mx ? s[j] : mx;
  const float k = scale * 1.44269504f;  // to base 2
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    const float e = exp2_nonpositive((s[j] - mx) * k);
    sum += e;
    p[j] = bf16_bits(e);
  }
  for (int64_t j = n; j < n_end; ++j) p[j] = 0;
  return sum;
}

}  // namespace

bool supported() { return at::native::cpublas::could_pack(at::kBFloat16); }

// q [T, H, D], k and v [T, KV, D] (each token's heads contiguous), pk and pv [KV, P, D] (any
// strides; P may be 0), out [T, H, D]: writes the rows of the bucket's documents.
void prefix_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& pk, const at::Tensor& pv, at::Tensor& out,
                             int64_t start, int64_t count, int64_t length, int64_t q_block) {
  using bf16 = at::BFloat16;
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && k.scalar_type() == at::kBFloat16 &&
              v.scalar_type() == at::kBFloat16 && pk.scalar_type() == at::kBFloat16 &&
              pv.scalar_type() == at::kBFloat16 && out.scalar_type() == at::kBFloat16,
              "prefix_causal_attention takes bfloat16 tensors");
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3 && pk.dim() == 3 && pv.dim() == 3,
              "q, k, v are [tokens, heads, head_dim]; pk, pv [kv_heads, prefix, head_dim]");
  const int64_t H = q.size(1), D = q.size(2), KV = k.size(1), P = pk.size(1);
  TORCH_CHECK(q.stride(2) == 1 && q.stride(1) == D && k.stride(2) == 1 && k.stride(1) == D &&
              v.stride(2) == 1 && v.stride(1) == D && out.stride(2) == 1 &&
              out.stride(1) == D && pk.stride(2) == 1 && pv.stride(2) == 1,
              "each token's heads must be contiguous");
  TORCH_CHECK(H % KV == 0 && pk.size(0) == KV && pv.size(0) == KV && pv.size(1) == P,
              "head counts do not match");
  const int64_t d_block = std::min<int64_t>(D, KEY_BLOCK);
  TORCH_CHECK(D % 2 == 0 && D % d_block == 0, "head_dim must be even and divide into 64s");
  TORCH_CHECK(start >= 0 && length > 0 && count > 0 && start + count * length <= q.size(0),
              "the bucket runs past the packed rows");
  const int64_t group = H / KV, n_keys = P + length, n_pad = round_up(n_keys, KEY_BLOCK);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const int64_t q_row = q.stride(0), k_row = k.stride(0), v_row = v.stride(0);
  const int64_t o_row = out.stride(0);
  const int64_t pk_h = pk.stride(0), pk_r = pk.stride(1), pv_h = pv.stride(0), pv_r = pv.stride(1);
  const auto* qd = q.data_ptr<bf16>();
  const auto* kd = reinterpret_cast<const uint16_t*>(k.data_ptr<bf16>());
  const auto* vd = reinterpret_cast<const uint16_t*>(v.data_ptr<bf16>());
  const auto* pkd = reinterpret_cast<const uint16_t*>(pk.data_ptr<bf16>());
  const auto* pvd = reinterpret_cast<const uint16_t*>(pv.data_ptr<bf16>());
  auto* od = reinterpret_cast<uint16_t*>(out.data_ptr<bf16>());
  // per (document, kv head): K^T [D, n_pad] and V [n_pad, D], packed in column blocks
  at::Tensor packed = at::empty({count * KV, 2, D * n_pad}, q.options());
  auto* pd = packed.data_ptr<bf16>();

  // oneDNN's packed B is VNNI-2: B [K, N] stored as [K/2][N][2] (pairs of rows interleaved).
  at::parallel_for(0, count * KV, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t c = i / KV, g = i % KV;
      const uint16_t* kdoc = kd + (start + c * length) * k_row + g * D;
      const uint16_t* vdoc = vd + (start + c * length) * v_row + g * D;
      auto key = [&](int64_t j, const uint16_t* doc, const uint16_t* prefix, int64_t h_stride,
                     int64_t r_stride, int64_t row) -> const uint16_t* {
        return j < P ? prefix + g * h_stride + j * r_stride
               : j < n_keys ? doc + (j - P) * row : nullptr;
      };
      // K^T [D, n_pad] in blocks of KEY_BLOCK keys: block[d / 2][j][d % 2] = K[j][d], that is
      // a transpose of 32-bit pairs
      auto* kt = reinterpret_cast<uint32_t*>(pd + (i * 2) * D * n_pad);
      for (int64_t j = 0; j < n_pad; ++j) {
        const auto* row = reinterpret_cast<const uint32_t*>(key(j, kdoc, pkd, pk_h, pk_r, k_row));
        uint32_t* dst = kt + (j / KEY_BLOCK) * KEY_BLOCK * (D / 2) + j % KEY_BLOCK;
        for (int64_t d2 = 0; d2 < D / 2; ++d2) dst[d2 * KEY_BLOCK] = row ? row[d2] : 0u;
      }
      // V [n_pad, D] in blocks of d_block columns: block[j / 2][d][j % 2] = V[j][d]
      uint16_t* vt = reinterpret_cast<uint16_t*>(pd + (i * 2 + 1) * D * n_pad);
      for (int64_t j = 0; j < n_pad; j += 2) {
        const uint16_t* r0 = key(j, vdoc, pvd, pv_h, pv_r, v_row);
        const uint16_t* r1 = key(j + 1, vdoc, pvd, pv_h, pv_r, v_row);
        for (int64_t db = 0; db < D; db += d_block) {
          uint16_t* dst = vt + db * n_pad + j * d_block;
          for (int64_t d = 0; d < d_block; ++d) {
            dst[2 * d] = r0 ? r0[db + d] : 0;
            dst[2 * d + 1] = r1 ? r1[db + d] : 0;
          }
        }
      }
    }
  });

  const int64_t n_blocks = (length + q_block - 1) / q_block;
  at::parallel_for(0, count * KV * n_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> s(q_block * n_pad), o(q_block * D), inv(q_block);
    std::vector<uint16_t> p(q_block * n_pad);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t qb = i % n_blocks, cg = i / n_blocks, c = cg / KV, g = cg % KV;
      const int64_t i0 = qb * q_block, m = std::min(q_block, length - i0);
      const int64_t n_cut = std::min(n_pad, round_up(P + i0 + m, KEY_BLOCK));
      const bf16* kt = pd + (cg * 2) * D * n_pad;
      const bf16* vt = pd + (cg * 2 + 1) * D * n_pad;
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        const bf16* qp = qd + (start + c * length + i0) * q_row + h * D;
        for (int64_t jb = 0; jb < n_cut; jb += KEY_BLOCK)
          at::native::cpublas::brgemm(m, KEY_BLOCK, D, q_row, KEY_BLOCK, n_cut, false, qp,
                                      kt + jb * D, s.data() + jb, true);
        for (int64_t r = 0; r < m; ++r)
          inv[r] = 1.0f / exp_row(s.data() + r * n_cut, P + i0 + r + 1, n_cut, scale,
                                  p.data() + r * n_cut);
        for (int64_t db = 0; db < D; db += d_block)
          at::native::cpublas::brgemm(m, d_block, n_cut, n_cut, d_block, D, false,
                                      reinterpret_cast<const bf16*>(p.data()),
                                      vt + db * n_pad, o.data() + db, true);
        for (int64_t r = 0; r < m; ++r) {
          uint16_t* orow = od + (start + c * length + i0 + r) * o_row + h * D;
          const float f = inv[r];
          for (int64_t d = 0; d < D; ++d) orow[d] = bf16_bits(o[r * D + d] * f);
        }
      }
    }
    at::native::cpublas::brgemm_release(true);
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("supported", &supported, "whether oneDNN can pack bfloat16 for its micro-kernels");
  m.def("prefix_causal_attention", &prefix_causal_attention,
        "documents' attention over a shared prefix and, causally, themselves (bf16)");
}
