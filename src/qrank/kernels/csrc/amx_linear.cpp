// Bias-free bf16 linear layers on AMX tiles, with the work that follows them fused in.
//
// out = x @ W^T with float32 accumulation. W is packed once, at load time, into blocks of 32
// output columns in the VNNI layout the tiles read ([N / 32][K / 2][32][2]). Each call first
// copies x whole into tile order. A thread owns a slice of the output columns and walks it a
// group of weight blocks at a time (about PANEL_BYTES, kept in L2: each weight is read from
// memory once, and the next group is prefetched into L2 meanwhile). For each group, the rows
// of x pass in runs of about X_BYTES (read from L3, where activations this size stay); each
// block multiplies a run 256 deep at a time, so that slice of the block stays in L1 while
// 32-row chunks of x stream past it into 2 x 2 tiles of accumulators. When a group is done
// for a run of rows, an epilogue turns its float32 results into the output while they are in
// cache:
//   - plain: rounded to bf16;
//   - silu_mul: blocks alternate gate and up columns; out = silu(gate) * up, so the fused
//     gate-up projection never writes its [tokens, 2 x intermediate] result.
// The epilogues run in float32 and round to bf16 once. The gate-up projection can also take
// the residual add and RMS norm before it into its copy of x (add_norm_linear_silu_mul): the
// copy reads the residual stream and the attention's output, writes their sum, and puts the
// normed rows straight into tile order, so the normed activations are never written. (A QKV
// epilogue with the q/k norms and RoPE was tried and removed: the plain product at QKV's width
// loses more to oneDNN than the epilogue saves; README.)
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "vec_math.h"

#if defined(__AVX512F__) && defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define QRANK_AMX 1
#endif

namespace {

constexpr int64_t BLOCK_N = 32;  // output columns per weight block (two 16-column tiles)
constexpr int64_t STEP_K = 256;  // reduction depth per pass over a chunk of rows
constexpr int64_t MAX_ROWS = 256;
constexpr int64_t X_BYTES = 262144;  // rows of x per pass: about this many bytes of them
constexpr int64_t PANEL_BYTES = 1048576;  // weight bytes per group of blocks (kept in L2)

bool request_amx() {  // Linux asks each process to request the AMX tile state once
  static const bool ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */,
                                 18 /* XFEATURE_XTILEDATA */) == 0;
  return ok;
}

bool cpu_has_amx_bf16() {
  unsigned a = 7, b, c = 0, d;
  __asm__("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
  return ((d >> 22) & 1) && ((d >> 24) & 1);  // AMX-BF16, AMX-TILE
}

// What an epilogue sees: float32 results of `units` output units for `rows` rows. Unit u's
// row r starts at acc + (u * blocks_per_unit) * unit_stride + r * 32 (its second block, for
// silu_mul, unit_stride floats after that).
struct Results {
  const float* acc;
  int64_t unit_stride;
  int64_t blocks_per_unit;
  const float* row(int64_t u, int64_t r, int64_t block = 0) const {
    return acc + (u * blocks_per_unit + block) * unit_stride + r * BLOCK_N;
  }
};

#if defined(QRANK_AMX)

using qrank::exp2_nonpositive;
using qrank::load_bf16;

inline __m512 round_to_bf16(__m512 x) {  // x rounded to bf16 (nearest even), as float32
  const __m256i b = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(x));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
}

struct TileConfig {
  uint8_t palette_id = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
} __attribute__((packed));

void configure_tiles() {  // tiles 0-3: accumulators; 4-5: x; 6-7: weight; all 16 x 64 bytes
  TileConfig c;
  for (int i = 0; i < 8; ++i) {
    c.rows[i] = 16;
    c.colsb[i] = 64;
  }
  _tile_loadconfig(&c);
}

inline void store_bf16x32(uint16_t* dst, __m512 lo, __m512 hi) {  // round to nearest even
  _mm512_storeu_si512(dst, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
}

// Rows [r0, r0 + rows) of x (rows <= 32) into xt as one 32-row chunk of tiles,
// [2][K / 32][16][32]; zero rows after the last.
void pack_chunk(const uint16_t* x, int64_t ldx, int64_t r0, int64_t rows, int64_t K,
                uint16_t* xt) {
  const int64_t kt = K / 32;
  for (int64_t r = 0; r < 32; ++r) {
    uint16_t* dst = xt + ((r / 16) * kt * 16 + r % 16) * 32;
    const uint16_t* src = x + (r0 + r) * ldx;
    for (int64_t k = 0; k < kt; ++k)
      _mm512_storeu_si512(dst + k * 512,
                          r < rows ? _mm512_loadu_si512(src + k * 32) : _mm512_setzero_si512());
  }
}

// acc [rows_pad][32] = packed rows @ one weight block ([K / 2][32][2]); meanwhile the bytes
// [fetch, fetch_end) are prefetched into L2, spread over the passes.
void block_product(const uint16_t* xt, int64_t rows_pad, const uint16_t* w, int64_t K,
                   float* acc, const char* fetch, const char* fetch_end) {
  const int64_t kt = K / 32, chunks = rows_pad / 32;
  const int64_t passes = (K + STEP_K - 1) / STEP_K * chunks;
  const int64_t per_pass = ((fetch_end - fetch) / 64 + passes - 1) / passes * 64;
  for (int64_t k0 = 0; k0 < K; k0 += STEP_K) {
    const int64_t k1 = std::min(k0 + STEP_K, K);
    for (int64_t c = 0; c < chunks; ++c) {
      for (const char* end = std::min(fetch + per_pass, fetch_end); fetch < end; fetch += 64)
        _mm_prefetch(fetch, _MM_HINT_T1);
      float* cc = acc + c * 32 * BLOCK_N;
      if (k0 == 0) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      } else {
        _tile_loadd(0, cc, 128);
        _tile_loadd(1, cc + 16, 128);
        _tile_loadd(2, cc + 16 * BLOCK_N, 128);
        _tile_loadd(3, cc + 16 * BLOCK_N + 16, 128);
      }
      const uint16_t* x0 = xt + 2 * c * kt * 512;
      const uint16_t* x1 = x0 + kt * 512;
      for (int64_t k = k0; k < k1; k += 32) {
        _tile_loadd(4, x0 + k * 16, 64);
        _tile_loadd(5, x1 + k * 16, 64);
        _tile_loadd(6, w + k * BLOCK_N, 128);
        _tile_loadd(7, w + k * BLOCK_N + 32, 128);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      _tile_stored(0, cc, 128);
      _tile_stored(1, cc + 16, 128);
      _tile_stored(2, cc + 16 * BLOCK_N, 128);
      _tile_stored(3, cc + 16 * BLOCK_N + 16, 128);
    }
  }
}

// Runs x [M, K] @ the packed weight, `blocks_per_unit` weight blocks per 32 output columns,
// calling epilogue(results, row0, rows, unit0, units) for each finished group of units and
// rows (the file's header tells the order). pack(row0, rows, chunk) writes rows [row0, row0 +
// rows) of the left operand into a 32-row chunk of tiles (by default x's rows as they are).
template <class Epilogue, class Pack>
void run(const at::Tensor& x, const at::Tensor& wp, int64_t blocks_per_unit,
         const Epilogue& epilogue, const Pack& pack) {
  const int64_t M = x.size(0), K = x.size(1), blocks = wp.size(0);
  if (M == 0) return;
  const int64_t units = blocks / blocks_per_unit;
  const int64_t rows_per_pass = std::clamp<int64_t>(X_BYTES / (2 * K) / 32 * 32, 32, MAX_ROWS);
  const int64_t group = std::max<int64_t>(1, PANEL_BYTES / (K * BLOCK_N * 2 * blocks_per_unit));
  const int64_t threads = at::get_num_threads();
  // threads split the columns; with more threads than column slices of 4 units, the rows too
  const int64_t col_parts = std::clamp<int64_t>(units / 4, 1, threads);
  const int64_t row_parts = std::clamp<int64_t>(threads / col_parts, 1, (M + 31) / 32);
  const auto* wd = reinterpret_cast<const uint16_t*>(wp.data_ptr());
  const int64_t block_elems = K * BLOCK_N;
  const int64_t unit_stride = rows_per_pass * BLOCK_N, m_pad = qrank::round_up(M, 32);
  const at::Tensor x_tiles = at::empty({m_pad * K}, x.options());
  auto* xt = reinterpret_cast<uint16_t*>(x_tiles.data_ptr());
  at::parallel_for(0, m_pad / 32, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c)
      pack(c * 32, std::min<int64_t>(32, M - c * 32), xt + c * 32 * K);
  });
  at::parallel_for(0, col_parts * row_parts, 1, [&](int64_t begin, int64_t end) {
    configure_tiles();
    std::vector<float> acc(group * blocks_per_unit * unit_stride);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t cp = item % col_parts, rp = item / col_parts;
      const int64_t u0 = units * cp / col_parts;
      const int64_t u1 = units * (cp + 1) / col_parts;
      const int64_t chunks = m_pad / 32;
      const int64_t m0 = chunks * rp / row_parts * 32;
      const int64_t m1 = std::min(M, chunks * (rp + 1) / row_parts * 32);
      if (m0 >= m1 || u0 >= u1) continue;
      const int64_t passes = (m1 - m0 + rows_per_pass - 1) / rows_per_pass;
      for (int64_t ug = u0; ug < u1; ug += group) {
        const int64_t ue = std::min(ug + group, u1);
        const int64_t b0 = ug * blocks_per_unit, b1 = ue * blocks_per_unit;
        // the next group's blocks (contiguous) are fetched into L2 a slice per block product
        const int64_t next_blocks = std::min(u1 * blocks_per_unit, b1 + (b1 - b0)) - b1;
        const char* fetch = reinterpret_cast<const char*>(wd + b1 * block_elems);
        const int64_t calls = passes * (b1 - b0);
        const int64_t slice = (next_blocks * block_elems * 2 / 64 + calls - 1) / calls * 64;
        const char* fetch_end = fetch + next_blocks * block_elems * 2;
        for (int64_t mb = m0; mb < m1; mb += rows_per_pass) {
          const int64_t rows = std::min(rows_per_pass, m1 - mb);
          for (int64_t b = b0; b < b1; ++b) {
            const char* from = std::min(fetch, fetch_end);
            fetch = std::min(fetch + slice, fetch_end);
            block_product(xt + mb * K, qrank::round_up(rows, 32), wd + b * block_elems, K,
                          acc.data() + (b - b0) * unit_stride, from, fetch);
          }
          epilogue(Results{acc.data(), unit_stride, blocks_per_unit}, mb, rows, ug, ue - ug);
        }
      }
    }
    _tile_release();
  });
}

// Writes the 32 bf16 outputs of each (row, unit) of a finished group; value(u, r) gives them
// as two halves of 16 floats.
template <class Value>
void write_units(uint16_t* out, int64_t ldo, int64_t m0, int64_t rows, int64_t u0, int64_t n,
                 const Value& value) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t u = 0; u < n; ++u) {
      const auto [lo, hi] = value(u, r);
      store_bf16x32(out + (m0 + r) * ldo + (u0 + u) * BLOCK_N, lo, hi);
    }
}

inline __m512 silu(__m512 g) {  // g * sigmoid(g), with exp of -|g| only
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 e = exp2_nonpositive(
      _mm512_mul_ps(_mm512_abs_ps(g), _mm512_set1_ps(-1.44269504f)));  // exp(-|g|)
  const __m512 d = _mm512_add_ps(one, e);  // in [1, 2]: a reciprocal estimate and one Newton
  const __m512 r = _mm512_rcp14_ps(d);      // step give float32's precision without a divide
  const __m512 s = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.f)));  // sigmoid(|g|)
  const __mmask16 negative = _mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_LT_OQ);
  return _mm512_mul_ps(g, _mm512_mask_mul_ps(s, negative, e, s));  // sigmoid(g<0) = e * s
}

#endif  // QRANK_AMX

bool supported_here();

void check_operands(const at::Tensor& x, const at::Tensor& wp, int64_t blocks_per_unit) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && wp.scalar_type() == at::kBFloat16,
              "the AMX linear kernel takes bfloat16 tensors");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "x must be [tokens, in] with contiguous rows");
  TORCH_CHECK(wp.dim() == 4 && wp.is_contiguous() && wp.size(2) == BLOCK_N && wp.size(3) == 2,
              "the weight must be packed as [out / 32, in / 2, 32, 2]");
  TORCH_CHECK(x.size(1) % 32 == 0 && wp.size(1) * 2 == x.size(1),
              "in features must match the packed weight's and be a multiple of 32");
  TORCH_CHECK(wp.size(0) % blocks_per_unit == 0, "the weight's blocks do not pair up");
  static const bool usable = supported_here();
  TORCH_CHECK(usable, "this CPU or build cannot run the AMX linear kernel");
}

bool supported_here() {
#if defined(QRANK_AMX)
  return cpu_has_amx_bf16() && request_amx();
#else
  return false;
#endif
}

}  // namespace

bool supported() { return supported_here(); }

#if defined(QRANK_AMX)

namespace {

// x's rows as they are, into tile order
auto rows_of(const at::Tensor& x) {
  const auto* xd = reinterpret_cast<const uint16_t*>(x.data_ptr());
  const int64_t ldx = x.stride(0), K = x.size(1);
  return [xd, ldx, K](int64_t r0, int64_t rows, uint16_t* chunk) {
    pack_chunk(xd, ldx, r0, rows, K, chunk);
  };
}

// out [M, units x 32] from a unit's results, value(res, u, r) giving row r's two halves.
template <class Value, class Pack>
at::Tensor unit_wise_linear(const at::Tensor& x, const at::Tensor& wp, int64_t blocks_per_unit,
                            const Value& value, const Pack& pack) {
  check_operands(x, wp, blocks_per_unit);
  at::Tensor out = at::empty({x.size(0), wp.size(0) / blocks_per_unit * BLOCK_N}, x.options());
  auto* od = reinterpret_cast<uint16_t*>(out.data_ptr());
  const int64_t ldo = out.size(1);
  run(x, wp, blocks_per_unit,
      [&](const Results& res, int64_t m0, int64_t rows, int64_t u0, int64_t n) {
        write_units(od, ldo, m0, rows, u0, n,
                    [&](int64_t u, int64_t r) { return value(res, u, r); });
      },
      pack);
  return out;
}

std::pair<__m512, __m512> silu_mul_value(const Results& res, int64_t u, int64_t r) {
  const float* g = res.row(u, r);
  const float* up = res.row(u, r, 1);
  return std::make_pair(_mm512_mul_ps(silu(_mm512_loadu_ps(g)), _mm512_loadu_ps(up)),
                        _mm512_mul_ps(silu(_mm512_loadu_ps(g + 16)), _mm512_loadu_ps(up + 16)));
}

}  // namespace

// x [M, K] @ W^T -> [M, N] bf16; wp is W packed by pack_weight.
at::Tensor linear(const at::Tensor& x, const at::Tensor& wp) {
  return unit_wise_linear(
      x, wp, 1,
      [](const Results& res, int64_t u, int64_t r) {
        const float* a = res.row(u, r);
        return std::make_pair(_mm512_loadu_ps(a), _mm512_loadu_ps(a + 16));
      },
      rows_of(x));
}

// x [M, K] @ [gate; up]^T -> silu(gate) * up [M, N / 2]; wp packed by pack_gate_up.
at::Tensor linear_silu_mul(const at::Tensor& x, const at::Tensor& wp) {
  return unit_wise_linear(x, wp, 2, silu_mul_value, rows_of(x));
}

// The residual add and RMS norm before the gate-up projection, fused into its packing:
// returns (silu(h @ gate^T) * (h @ up^T), x + delta) where h = norm(x + delta) * norm_w.
// The sum is rounded to bf16, then normed in float32, rounded, scaled by the weight and
// rounded again, as Qwen3 rounds them; h itself is never written.
std::tuple<at::Tensor, at::Tensor> add_norm_linear_silu_mul(const at::Tensor& x,
                                                             const at::Tensor& delta,
                                                             const at::Tensor& norm_w,
                                                             double eps, const at::Tensor& wp) {
  check_operands(x, wp, 2);
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(delta.scalar_type() == at::kBFloat16 && delta.dim() == 2 && delta.size(0) == M &&
              delta.size(1) == K && delta.stride(1) == 1,
              "delta must be bf16 [tokens, in] like x, with contiguous rows");
  TORCH_CHECK(norm_w.scalar_type() == at::kBFloat16 && norm_w.dim() == 1 &&
              norm_w.size(0) == K && norm_w.stride(0) == 1,
              "norm_w must be a contiguous bf16 [in]");
  at::Tensor summed = at::empty({M, K}, x.options());
  const at::Tensor wf = norm_w.to(at::kFloat);
  const auto* xd = reinterpret_cast<const uint16_t*>(x.data_ptr());
  const auto* dd = reinterpret_cast<const uint16_t*>(delta.data_ptr());
  auto* sd = reinterpret_cast<uint16_t*>(summed.data_ptr());
  const float* w = wf.data_ptr<float>();
  const int64_t ldx = x.stride(0), ldd = delta.stride(0), kt = K / 32;
  const float inv_k = 1.f / static_cast<float>(K), feps = static_cast<float>(eps);
  auto pack = [&](int64_t r0, int64_t rows, uint16_t* chunk) {
    for (int64_t r = 0; r < 32; ++r) {
      uint16_t* dst = chunk + ((r / 16) * kt * 16 + r % 16) * 32;
      if (r >= rows) {
        for (int64_t k = 0; k < kt; ++k) _mm512_storeu_si512(dst + k * 512, _mm512_setzero_si512());
        continue;
      }
      const uint16_t* xr = xd + (r0 + r) * ldx;
      const uint16_t* dr = dd + (r0 + r) * ldd;
      uint16_t* sr = sd + (r0 + r) * K;
      __m512 sq0 = _mm512_setzero_ps(), sq1 = _mm512_setzero_ps();
      for (int64_t k = 0; k < K; k += 32) {  // the rounded sum, and its squares
        const __m512 a = _mm512_add_ps(load_bf16(xr + k), load_bf16(dr + k));
        const __m512 b = _mm512_add_ps(load_bf16(xr + k + 16), load_bf16(dr + k + 16));
        const __m512i ab = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a));
        _mm512_storeu_si512(sr + k, ab);
        const __m512 ar = load_bf16(sr + k), br = load_bf16(sr + k + 16);
        sq0 = _mm512_fmadd_ps(ar, ar, sq0);
        sq1 = _mm512_fmadd_ps(br, br, sq1);
      }
      const __m512 scale = _mm512_set1_ps(
          1.f / std::sqrt(_mm512_reduce_add_ps(_mm512_add_ps(sq0, sq1)) * inv_k + feps));
      for (int64_t k = 0; k < K; k += 32) {
        const __m512 a = round_to_bf16(_mm512_mul_ps(load_bf16(sr + k), scale));
        const __m512 b = round_to_bf16(_mm512_mul_ps(load_bf16(sr + k + 16), scale));
        store_bf16x32(dst + (k / 32) * 512, _mm512_mul_ps(a, _mm512_loadu_ps(w + k)),
                      _mm512_mul_ps(b, _mm512_loadu_ps(w + k + 16)));
      }
    }
  };
  at::Tensor out = unit_wise_linear(x, wp, 2, silu_mul_value, pack);
  return {out, summed};
}

#else  // without AMX code the operands' check raises

at::Tensor linear(const at::Tensor& x, const at::Tensor& wp) {
  check_operands(x, wp, 1);
  return {};
}

at::Tensor linear_silu_mul(const at::Tensor& x, const at::Tensor& wp) {
  check_operands(x, wp, 2);
  return {};
}

std::tuple<at::Tensor, at::Tensor> add_norm_linear_silu_mul(const at::Tensor& x,
                                                             const at::Tensor& delta,
                                                             const at::Tensor& norm_w,
                                                             double eps, const at::Tensor& wp) {
  check_operands(x, wp, 2);
  return {};
}

#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("supported", &supported, "whether this CPU and build can run the AMX kernels");
  m.def("linear", &linear, "x @ W^T on AMX tiles (bf16)");
  m.def("linear_silu_mul", &linear_silu_mul, "silu(x @ gate^T) * (x @ up^T) on AMX tiles");
  m.def("add_norm_linear_silu_mul", &add_norm_linear_silu_mul,
        "the residual add and RMS norm, then silu(h @ gate^T) * (h @ up^T) on AMX tiles");
}
