// Small helpers shared by qrank's CPU kernels: rounding to bf16 and a vectorized exp.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace qrank {

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

inline uint16_t bf16_bits(float f) {  // round to nearest even; inputs are finite
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

#if defined(__AVX512F__)

// 2^t for t <= 0: a degree-3 polynomial on the fraction (relative error ~8e-5, far below
// bf16's rounding of the results), scaled by 2^round(t) with vscalefps (0 far below -126).
inline __m512 exp2_nonpositive(__m512 t) {
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);  // in [-0.5, 0.5]
  __m512 p = _mm512_set1_ps(0.055088767f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24260466f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.69327628f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.9999289f));
  return _mm512_scalef_ps(p, n);
}

inline __m512 load_bf16(const uint16_t* src) {  // 16 bf16 values as float32
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

inline void store_bf16(uint16_t* dst, __m512 x) {  // round to nearest even
#if defined(__AVX512BF16__)
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst),
                      reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(x)));
#else
  __m512i u = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  u = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), odd));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst),
                      _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16)));
#endif
}

#endif

}  // namespace qrank
