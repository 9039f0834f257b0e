// Attention of packed documents over a shared prefix and, causally, themselves: bf16 on the CPU.
//
// For each document of a bucket (count documents of `length` tokens, packed from row `start`),
// every query row attends to the prefix's keys and to the document's keys up to its own
// position. Per (document, kv head) the keys and values are written once into the VNNI layout
// that oneDNN's AMX micro-kernels read (ATen's cpublas::brgemm). A work item is a block of
// query rows of one document for all the query heads of one kv head, stacked into one matrix:
// one micro-kernel call gives their scores, a float32 softmax runs over each whole row (the
// keys fit in cache), and one more call multiplies by the values. Key blocks past the item's
// last causal key are skipped. With AVX-512 the softmax and the bf16 rounding are vectorized
// by hand; elsewhere a scalar version runs.
//
// The scorer may hand over the documents' q and k rows raw, as the QKV projection wrote them:
// then Qwen3's per-head RMS norms and RoPE are applied here, to k while its rows are packed and
// to q while a block's rows are gathered, and the scorer's own pass over them (a read and a
// write of every q and k row) is skipped. The rows of the QKV output lie a page or more apart,
// beyond the reach of the hardware prefetchers, so the rows ahead are prefetched by hand.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "vec_math.h"

namespace {

using qrank::bf16_bits;
using qrank::round_up;
#if defined(__AVX512F__)
using qrank::exp2_nonpositive;
using qrank::load_bf16;
using qrank::store_bf16;
#endif

constexpr int64_t KEY_BLOCK = 32;  // keys are padded, and cut causally, in blocks of this
static_assert(KEY_BLOCK % 16 == 0, "score rows are processed 16 floats at a time");

#if defined(__AVX512F__)

inline __mmask16 lanes_below(int64_t j0, int64_t n) {
  const int64_t left = n - j0;
  return left >= 16 ? 0xFFFF : left <= 0 ? 0 : static_cast<__mmask16>((1u << left) - 1);
}

// exp(scale * (s[j] - max)) for j < n as bf16 into p, zeros from n to n_end (a multiple of
// 16); returns the sum of the values.
float exp_row(const float* s, int64_t n, int64_t n_end, float scale, uint16_t* p) {
  __m512 vmx = _mm512_set1_ps(-3.0e38f);
  int64_t j0 = 0;
  for (; j0 + 16 <= n; j0 += 16) vmx = _mm512_max_ps(vmx, _mm512_loadu_ps(s + j0));
  if (j0 < n) vmx = _mm512_mask_max_ps(vmx, lanes_below(j0, n), vmx, _mm512_loadu_ps(s + j0));
  const float k2 = scale * 1.44269504f;  // to base 2
  const __m512 k = _mm512_set1_ps(k2), mk = _mm512_set1_ps(_mm512_reduce_max_ps(vmx) * k2);
  __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
  for (j0 = 0; j0 + 32 <= n; j0 += 32) {  // two independent chains
    const __m512 e0 = exp2_nonpositive(_mm512_fmsub_ps(_mm512_loadu_ps(s + j0), k, mk));
    const __m512 e1 = exp2_nonpositive(_mm512_fmsub_ps(_mm512_loadu_ps(s + j0 + 16), k, mk));
    sum0 = _mm512_add_ps(sum0, e0);
    sum1 = _mm512_add_ps(sum1, e1);
    store_bf16(p + j0, e0);
    store_bf16(p + j0 + 16, e1);
  }
  for (; j0 < n; j0 += 16) {
    const __m512 t = _mm512_fmsub_ps(_mm512_loadu_ps(s + j0), k, mk);
    const __m512 e = _mm512_maskz_mov_ps(lanes_below(j0, n), exp2_nonpositive(t));
    sum0 = _mm512_add_ps(sum0, e);
    store_bf16(p + j0, e);
  }
  for (; j0 < n_end; j0 += 16)  // past the causal end: zeros
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j0), _mm256_setzero_si256());
  return _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1));
}

// dst[d] = bf16(src[d] * f) for d < D (a multiple of 16)
inline void scale_to_bf16(const float* src, float f, int64_t D, uint16_t* dst) {
  const __m512 vf = _mm512_set1_ps(f);
  for (int64_t d = 0; d < D; d += 16) store_bf16(dst + d, _mm512_mul_ps(_mm512_loadu_ps(src + d), vf));
}

#else  // portable scalar fallback

float exp_row(const float* s, int64_t n, int64_t n_end, float scale, uint16_t* p) {
  float mx = s[0];
  for (int64_t j = 1; j < n; ++j) mx = std::max(mx, s[j]);
  float sum = 0.f;
  for (int64_t j = 0; j < n_end; ++j) {
    const float e = j < n ? std::exp((s[j] - mx) * scale) : 0.f;
    sum += e;
    p[j] = bf16_bits(e);
  }
  return sum;
}

inline void scale_to_bf16(const float* src, float f, int64_t D, uint16_t* dst) {
  for (int64_t d = 0; d < D; ++d) dst[d] = bf16_bits(src[d] * f);
}

#endif

inline float bf16_value(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Qwen3's per-head RMS norm and RoPE, applied here to raw q and k rows as they are read (the
// scorer then skips its own pass over them): the norms' weights q_w, k_w [D] (float32 copies)
// and bf16 cos, sin [tokens, D] rows (the second half repeats the first).
struct NormRope {
  const float* q_w;
  const float* k_w;
  const uint16_t* cos;
  const uint16_t* sin;
  int64_t cos_row, sin_row;
  float eps;
};

#if defined(__AVX512BF16__)
// norm_rope_heads for a head_dim known when compiled: each head's row stays in
// registers between its sum of squares and its rotation, cos and sin are read once for all
// the heads, and the norm's factor is applied after the rotation (which is linear).
template <int D>
void norm_rope_heads_fixed(const NormRope& nr, const float* w, int64_t row,
                           const uint16_t* src, int64_t heads, uint16_t* dst,
                           int64_t dst_stride) {
  static_assert(D % 64 == 0, "two 16-float vectors per half, stored 32 bf16 at a time");
  constexpr int V = D / 16, HV = V / 2;
  const uint16_t* c = nr.cos + row * nr.cos_row;
  const uint16_t* sn = nr.sin + row * nr.sin_row;
  __m512 cv[HV], sv[HV];
  for (int i = 0; i < HV; ++i) {
    cv[i] = load_bf16(c + 16 * i);
    sv[i] = load_bf16(sn + 16 * i);
  }
  for (int64_t h = 0; h < heads; ++h) {
    const uint16_t* x = src + h * D;
    uint16_t* o = dst + h * dst_stride;
    __m512 xv[V];
    __m512 sq0 = _mm512_setzero_ps(), sq1 = _mm512_setzero_ps();
    for (int i = 0; i < V; i += 2) {
      xv[i] = load_bf16(x + 16 * i);
      xv[i + 1] = load_bf16(x + 16 * i + 16);
      sq0 = _mm512_fmadd_ps(xv[i], xv[i], sq0);
      sq1 = _mm512_fmadd_ps(xv[i + 1], xv[i + 1], sq1);
    }
    const __m512 r = _mm512_set1_ps(1.f / std::sqrt(_mm512_reduce_add_ps(_mm512_add_ps(sq0, sq1)) *
                                                        (1.f / D) + nr.eps));
    __m512 lo[HV], hi[HV];
    for (int i = 0; i < HV; ++i) {
      const __m512 x1 = _mm512_mul_ps(xv[i], _mm512_loadu_ps(w + 16 * i));
      const __m512 x2 = _mm512_mul_ps(xv[HV + i], _mm512_loadu_ps(w + D / 2 + 16 * i));
      lo[i] = _mm512_mul_ps(_mm512_fmsub_ps(x1, cv[i], _mm512_mul_ps(x2, sv[i])), r);
      hi[i] = _mm512_mul_ps(_mm512_fmadd_ps(x2, cv[i], _mm512_mul_ps(x1, sv[i])), r);
    }
    for (int i = 0; i < HV; i += 2) {
      _mm512_storeu_si512(o + 16 * i, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(lo[i + 1], lo[i])));
      _mm512_storeu_si512(o + D / 2 + 16 * i,
                          reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi[i + 1], hi[i])));
    }
  }
}
#endif

// For `heads` heads of packed row `row` (src, heads contiguous): dst + h * dst_stride [0, D) =
// RoPE(w * x * rsqrt(mean(x^2) + eps)), computed in float32 and rounded to bf16 once.
void norm_rope_heads(const NormRope& nr, const float* w, int64_t row, const uint16_t* src,
                     int64_t heads, int64_t D, uint16_t* dst, int64_t dst_stride) {
#if defined(__AVX512BF16__)
  switch (D) {  // vectorized for the usual head sizes (Qwen3's is 128)
    case 64: return norm_rope_heads_fixed<64>(nr, w, row, src, heads, dst, dst_stride);
    case 128: return norm_rope_heads_fixed<128>(nr, w, row, src, heads, dst, dst_stride);
    case 256: return norm_rope_heads_fixed<256>(nr, w, row, src, heads, dst, dst_stride);
    default: break;
  }
#endif
  const uint16_t* c = nr.cos + row * nr.cos_row;
  const uint16_t* sn = nr.sin + row * nr.sin_row;
  const int64_t half = D / 2;
  const float inv_d = 1.f / static_cast<float>(D);
  for (int64_t h = 0; h < heads; ++h) {
    const uint16_t* x = src + h * D;
    uint16_t* o = dst + h * dst_stride;
    float sq = 0.f;
    for (int64_t d = 0; d < D; ++d) sq += bf16_value(x[d]) * bf16_value(x[d]);
    const float r = 1.f / std::sqrt(sq * inv_d + nr.eps);
    for (int64_t d = 0; d < half; ++d) {
      const float x1 = bf16_value(x[d]) * r * w[d];
      const float x2 = bf16_value(x[half + d]) * r * w[half + d];
      const float cv = bf16_value(c[d]), sv = bf16_value(sn[d]);
      o[d] = bf16_bits(x1 * cv - x2 * sv);
      o[half + d] = bf16_bits(x2 * cv + x1 * sv);
    }
  }
}

#if defined(__AVX512BW__)

// Transposes 16 rows of 16 32-bit values in place: r[c] becomes column c.
inline void transpose16x16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // r[4i + c], 128-bit lane L: rows 4i..4i+3 of column 4L + c
    r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512i a = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x88);
    const __m512i b = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xdd);
    const __m512i e = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x88);
    const __m512i f = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xdd);
    t[c] = _mm512_shuffle_i32x4(a, e, 0x88);
    t[c + 8] = _mm512_shuffle_i32x4(a, e, 0xdd);
    t[c + 4] = _mm512_shuffle_i32x4(b, f, 0x88);
    t[c + 12] = _mm512_shuffle_i32x4(b, f, 0xdd);
  }
  for (int c = 0; c < 16; ++c) r[c] = t[c];
}

// K^T and V of one (document, kv head) in the VNNI layout, 16 keys at a time: rows(j) gives
// key j's K and V rows (null past the last key: zeros). D is a multiple of 32.
template <class Rows>
void pack_keys_values(uint32_t* kt, uint16_t* vt, int64_t D, int64_t n_pad, const Rows& rows) {
  const __m512i zero = _mm512_setzero_si512();
  __m512i idx_lo, idx_hi;  // interleave two rows of 32 bf16: a0 b0 a1 b1 ...
  {
    alignas(64) uint16_t lo[32], hi[32];
    for (int i = 0; i < 16; ++i) {
      lo[2 * i] = i; lo[2 * i + 1] = 32 + i;
      hi[2 * i] = 16 + i; hi[2 * i + 1] = 48 + i;
    }
    idx_lo = _mm512_load_si512(lo);
    idx_hi = _mm512_load_si512(hi);
  }
  for (int64_t j0 = 0; j0 < n_pad; j0 += 16) {
    const uint16_t* krow[16];
    const uint16_t* vrow[16];
    for (int t = 0; t < 16; ++t) std::tie(krow[t], vrow[t]) = rows(j0 + t);
    for (int64_t d2 = 0; d2 < D / 2; d2 += 16) {
      __m512i r[16];
      for (int t = 0; t < 16; ++t)
        r[t] = krow[t] ? _mm512_loadu_si512(krow[t] + 2 * d2) : zero;
      transpose16x16(r);
      for (int c = 0; c < 16; ++c) _mm512_storeu_si512(kt + (d2 + c) * n_pad + j0, r[c]);
    }
    for (int t = 0; t < 16; t += 2) {
      uint16_t* dst = vt + (j0 + t) * D;
      for (int64_t d = 0; d < D; d += 32) {
        const __m512i a = vrow[t] ? _mm512_loadu_si512(vrow[t] + d) : zero;
        const __m512i b = vrow[t + 1] ? _mm512_loadu_si512(vrow[t + 1] + d) : zero;
        _mm512_storeu_si512(dst + 2 * d, _mm512_permutex2var_epi16(a, idx_lo, b));
        _mm512_storeu_si512(dst + 2 * d + 32, _mm512_permutex2var_epi16(a, idx_hi, b));
      }
    }
  }
}

#endif

}  // namespace

bool supported() { return at::native::cpublas::could_pack(at::kBFloat16); }

// q [T, H, D], k and v [T, KV, D] (each token's heads contiguous), pk and pv [KV, P, D] (any
// strides; P may be 0), out [T, H, D]: writes the rows of the bucket's documents. With q_norm
// and k_norm [D] and cos, sin [T, D] (all four or none), the bucket's q and k rows are raw
// projections, RMS-normed and rotated here as they are read; the prefix's are ready.
void prefix_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& pk, const at::Tensor& pv, at::Tensor& out,
                             int64_t start, int64_t count, int64_t length, int64_t q_block,
                             const std::optional<at::Tensor>& q_norm,
                             const std::optional<at::Tensor>& k_norm,
                             const std::optional<at::Tensor>& cos,
                             const std::optional<at::Tensor>& sin, double eps) {
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
  TORCH_CHECK(D % 16 == 0 && D <= 1024, "head_dim must be a multiple of 16, at most 1024");
  TORCH_CHECK(k.size(2) == D && v.size(2) == D && pk.size(2) == D && pv.size(2) == D &&
              v.size(1) == KV && out.size(1) == H && out.size(2) == D,
              "q, k, v, the prefix and out must share head_dim and head counts");
  const int64_t rows_needed = start + count * length;
  TORCH_CHECK(start >= 0 && length > 0 && count > 0 && rows_needed <= q.size(0) &&
              rows_needed <= k.size(0) && rows_needed <= v.size(0) &&
              rows_needed <= out.size(0),
              "the bucket runs past the packed rows");
  TORCH_CHECK(q_block > 0, "q_block must be positive");
  const bool normed = q_norm.has_value();
  TORCH_CHECK(k_norm.has_value() == normed && cos.has_value() == normed &&
              sin.has_value() == normed, "pass q_norm, k_norm, cos and sin together, or none");
  NormRope nr{};
  at::Tensor q_w, k_w;  // the norms' weights as float32
  if (normed) {
    for (const at::Tensor* w : {&*q_norm, &*k_norm})
      TORCH_CHECK(w->scalar_type() == at::kBFloat16 && w->dim() == 1 && w->size(0) == D &&
                  w->stride(0) == 1, "q_norm and k_norm must be contiguous bf16 [head_dim]");
    for (const at::Tensor* t : {&*cos, &*sin})
      TORCH_CHECK(t->scalar_type() == at::kBFloat16 && t->dim() == 2 && t->size(1) == D &&
                  t->stride(1) == 1 && t->size(0) >= rows_needed,
                  "cos and sin must be bf16 [tokens, head_dim] with contiguous rows");
    q_w = q_norm->to(at::kFloat);
    k_w = k_norm->to(at::kFloat);
    nr = NormRope{q_w.data_ptr<float>(), k_w.data_ptr<float>(),
                  reinterpret_cast<const uint16_t*>(cos->data_ptr<bf16>()),
                  reinterpret_cast<const uint16_t*>(sin->data_ptr<bf16>()),
                  cos->stride(0), sin->stride(0), static_cast<float>(eps)};
  }
  const int64_t group = H / KV, n_keys = P + length, n_pad = round_up(n_keys, KEY_BLOCK);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const int64_t q_row = q.stride(0), k_row = k.stride(0), v_row = v.stride(0);
  const int64_t o_row = out.stride(0);
  const int64_t pk_h = pk.stride(0), pk_r = pk.stride(1), pv_h = pv.stride(0), pv_r = pv.stride(1);
  const auto* qd = reinterpret_cast<const uint16_t*>(q.data_ptr<bf16>());
  const auto* kd = reinterpret_cast<const uint16_t*>(k.data_ptr<bf16>());
  const auto* vd = reinterpret_cast<const uint16_t*>(v.data_ptr<bf16>());
  const auto* pkd = reinterpret_cast<const uint16_t*>(pk.data_ptr<bf16>());
  const auto* pvd = reinterpret_cast<const uint16_t*>(pv.data_ptr<bf16>());
  auto* od = reinterpret_cast<uint16_t*>(out.data_ptr<bf16>());
  // Per (document, kv head): K^T [D, n_pad] and V [n_pad, D] in the VNNI-2 layout oneDNN's
  // bf16 micro-kernels read B in: B [K, N] stored as [K/2][N][2] (pairs of rows interleaved).
  at::Tensor packed = at::empty({count * KV, 2, D * n_pad}, q.options());
  auto* pd = reinterpret_cast<uint16_t*>(packed.data_ptr<bf16>());

  at::parallel_for(0, count * KV, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint16_t> k_normed(normed ? length * D : 0);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t c = i / KV, g = i % KV;
      const uint16_t* kdoc = kd + (start + c * length) * k_row + g * D;
      const uint16_t* vdoc = vd + (start + c * length) * v_row + g * D;
      int64_t kdoc_row = k_row;
      if (normed) {  // the document's keys normed and rotated, then packed from there
        for (int64_t j = 0; j < length; ++j) {
          if (j + 8 < length) {  // the keys and values ahead
            const char* ahead = reinterpret_cast<const char*>(kdoc + (j + 8) * k_row);
            for (int64_t b = 0; b < D * 2; b += 64) _mm_prefetch(ahead + b, _MM_HINT_T0);
            const char* vahead = reinterpret_cast<const char*>(vdoc + (j + 8) * v_row);
            for (int64_t b = 0; b < D * 2; b += 64) _mm_prefetch(vahead + b, _MM_HINT_T1);
          }
          norm_rope_heads(nr, nr.k_w, start + c * length + j, kdoc + j * k_row, 1, D,
                          k_normed.data() + j * D, D);
        }
        kdoc = k_normed.data();
        kdoc_row = D;
      }
      auto row_of = [&](int64_t j, const uint16_t* doc, int64_t doc_row, const uint16_t* prefix,
                        int64_t h_stride, int64_t r_stride) -> const uint16_t* {
        return j < P ? prefix + g * h_stride + j * r_stride
               : j < n_keys ? doc + (j - P) * doc_row : nullptr;
      };
      // K^T: element [d / 2][j][d % 2] is K[j][d], so 32-bit pairs of K transposed
      auto* kt = reinterpret_cast<uint32_t*>(pd + (i * 2) * D * n_pad);
      uint16_t* vt = pd + (i * 2 + 1) * D * n_pad;
#if defined(__AVX512BW__)
      if (D % 32 == 0) {
        pack_keys_values(kt, vt, D, n_pad, [&](int64_t j) {
          return std::make_pair(row_of(j, kdoc, kdoc_row, pkd, pk_h, pk_r),
                                row_of(j, vdoc, v_row, pvd, pv_h, pv_r));
        });
        continue;
      }
#endif
      for (int64_t j = 0; j < n_pad; ++j) {
        const auto* row =
            reinterpret_cast<const uint32_t*>(row_of(j, kdoc, kdoc_row, pkd, pk_h, pk_r));
        if (row) {
          for (int64_t d2 = 0; d2 < D / 2; ++d2) kt[d2 * n_pad + j] = row[d2];
        } else {
          for (int64_t d2 = 0; d2 < D / 2; ++d2) kt[d2 * n_pad + j] = 0u;
        }
      }
      // V: element [j / 2][d][j % 2] is V[j][d]
      static const uint16_t zeros[1024] = {};
      for (int64_t j = 0; j < n_pad; j += 2) {
        const uint16_t* r0 = row_of(j, vdoc, v_row, pvd, pv_h, pv_r);
        const uint16_t* r1 = row_of(j + 1, vdoc, v_row, pvd, pv_h, pv_r);
        r0 = r0 ? r0 : zeros;
        r1 = r1 ? r1 : zeros;
        uint16_t* dst = vt + j * D;
        for (int64_t d = 0; d < D; ++d) {
          dst[2 * d] = r0[d];
          dst[2 * d + 1] = r1[d];
        }
      }
    }
  });

  // Each work item: q_block rows of one document for all heads of one kv head's group,
  // stacked into one matrix, so that two micro-kernel calls (scores, then values) cover them.
  const int64_t n_blocks = (length + q_block - 1) / q_block;
  at::parallel_for(0, count * KV * n_blocks, 1, [&](int64_t begin, int64_t end) {
    const int64_t rows = group * q_block;
    std::vector<uint16_t> a(rows * D), p(rows * n_pad);
    std::vector<float> s(rows * n_pad), o(rows * D), inv(rows);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t qb = i % n_blocks, cg = i / n_blocks, c = cg / KV, g = cg % KV;
      const int64_t i0 = qb * q_block, m = std::min(q_block, length - i0), mm = group * m;
      const int64_t n_cut = std::min(n_pad, round_up(P + i0 + m, KEY_BLOCK));
      if (i + 1 < end && (i + 1) % n_blocks != 0) {  // the next block's query rows
        const int64_t j0 = i0 + q_block, m2 = std::min(q_block, length - j0);
        for (int64_t r = 0; r < m2; ++r) {
          const char* row = reinterpret_cast<const char*>(
              qd + (start + c * length + j0 + r) * q_row + g * group * D);
          for (int64_t b = 0; b < group * D * 2; b += 64) _mm_prefetch(row + b, _MM_HINT_T1);
        }
      }
      const uint16_t* kt = pd + (cg * 2) * D * n_pad;
      const uint16_t* vt = pd + (cg * 2 + 1) * D * n_pad;
      for (int64_t r = 0; r < m; ++r) {  // the group's heads of each row: a[(hh * m + r)]
        const int64_t row = start + c * length + i0 + r;
        const uint16_t* src = qd + row * q_row + g * group * D;
        if (normed) {
          norm_rope_heads(nr, nr.q_w, row, src, group, D, a.data() + r * D, m * D);
        } else {
          for (int64_t hh = 0; hh < group; ++hh)
            std::memcpy(a.data() + (hh * m + r) * D, src + hh * D, D * 2);
        }
      }
      at::native::cpublas::brgemm(mm, n_cut, D, D, n_pad, n_cut, false,
                                  reinterpret_cast<const bf16*>(a.data()),
                                  reinterpret_cast<const bf16*>(kt), s.data(), true);
      for (int64_t hr = 0; hr < mm; ++hr)
        inv[hr] = 1.0f / exp_row(s.data() + hr * n_cut, P + i0 + hr % m + 1, n_cut, scale,
                                 p.data() + hr * n_cut);
      at::native::cpublas::brgemm(mm, D, n_cut, n_cut, D, D, false,
                                  reinterpret_cast<const bf16*>(p.data()),
                                  reinterpret_cast<const bf16*>(vt), o.data(), true);
      for (int64_t hr = 0; hr < mm; ++hr) {
        const int64_t hh = hr / m, r = hr % m;
        uint16_t* orow = od + (start + c * length + i0 + r) * o_row + (g * group + hh) * D;
        scale_to_bf16(o.data() + hr * D, inv[hr], D, orow);
      }
    }
    at::native::cpublas::brgemm_release(true);
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("supported", &supported, "whether oneDNN can pack bfloat16 for its micro-kernels");
  m.def("prefix_causal_attention", &prefix_causal_attention,
        "documents' attention over a shared prefix and, causally, themselves (bf16)",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("pk"), py::arg("pv"), py::arg("out"),
        py::arg("start"), py::arg("count"), py::arg("length"), py::arg("q_block"),
        py::arg("q_norm") = py::none(), py::arg("k_norm") = py::none(),
        py::arg("cos") = py::none(), py::arg("sin") = py::none(), py::arg("eps") = 1e-6);
}
