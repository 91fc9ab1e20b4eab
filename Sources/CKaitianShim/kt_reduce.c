// Element-wise reduction kernels. See include/kt_reduce.h for the contract.
//
// Every loop here is written so clang vectorizes it at -O3. Loops carry
// `vectorize(assume_safety)` because dst may be exactly a or b: each iteration
// reads and writes only index i, so there is no loop-carried dependence, but
// without the pragma clang's runtime overlap check sees dst == a as a conflict
// and falls back to the scalar loop for the most common (in-place) call.
//
// Half types (float16, bfloat16) are widened to float, combined, and rounded
// back once. Their NaN results are canonicalized (0x7e00 / 0x7fc0) so that the
// F16C path and the portable path agree bit for bit whatever payloads the
// inputs carried.
#include "kt_reduce.h"

#include <immintrin.h>
#include <string.h>

#define KT_VECTOR_LOOP _Pragma("clang loop vectorize(assume_safety)")

/// Positive quiet NaN with no payload; what max/min return for any NaN input,
/// so that they are commutative bit for bit.
#define KT_NAN32 0x7fc00000u
#define KT_NAN64 0x7ff8000000000000ull

static inline uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static inline float f32_from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static inline uint64_t f64_bits(double d) {
  uint64_t u;
  memcpy(&u, &d, sizeof u);
  return u;
}

static inline double f64_from_bits(uint64_t u) {
  double d;
  memcpy(&d, &u, sizeof d);
  return d;
}

// Max and min written as selects so they vectorize. On a tie, AND of the bit
// patterns picks +0 from {-0, +0} (OR picks -0); equal nonzero values have
// identical bits, so the tie rule only matters for zeros.

static inline float f32_max(float a, float b) {
  uint32_t r = f32_bits(a > b ? a : b);
  r = a == b ? (f32_bits(a) & f32_bits(b)) : r;
  return f32_from_bits(a != a || b != b ? KT_NAN32 : r);
}

static inline float f32_min(float a, float b) {
  uint32_t r = f32_bits(a < b ? a : b);
  r = a == b ? (f32_bits(a) | f32_bits(b)) : r;
  return f32_from_bits(a != a || b != b ? KT_NAN32 : r);
}

static inline double f64_max(double a, double b) {
  uint64_t r = f64_bits(a > b ? a : b);
  r = a == b ? (f64_bits(a) & f64_bits(b)) : r;
  return f64_from_bits(a != a || b != b ? KT_NAN64 : r);
}

static inline double f64_min(double a, double b) {
  uint64_t r = f64_bits(a < b ? a : b);
  r = a == b ? (f64_bits(a) | f64_bits(b)) : r;
  return f64_from_bits(a != a || b != b ? KT_NAN64 : r);
}

static inline float f32_canonical_nan(float r) { return r != r ? f32_from_bits(KT_NAN32) : r; }

// ---------------------------------------------------------------------------
// Portable half conversions (after Fabian Giesen's branch-light versions).
// These define the reference semantics; the F16C path must match them.

static inline float half_to_float(uint16_t h) {
  uint32_t u = (uint32_t)(h & 0x7fff) << 13;
  uint32_t exponent = u & (0x7c00u << 13);
  u += (uint32_t)(127 - 15) << 23;
  if (exponent == (0x7c00u << 13)) {
    // Inf or NaN: move to the float Inf/NaN exponent; quiet a NaN as F16C does.
    u += (uint32_t)(128 - 16) << 23;
    if (h & 0x3ff) u |= 0x00400000u;
  } else if (exponent == 0) {
    // Zero or subnormal: renormalize through an exact float subtraction.
    u += 1u << 23;
    u = f32_bits(f32_from_bits(u) - f32_from_bits(113u << 23));
  }
  return f32_from_bits(u | (uint32_t)(h & 0x8000) << 16);
}

static inline uint16_t float_to_half(float f) {
  uint32_t u = f32_bits(f);
  uint32_t sign = (u >> 16) & 0x8000;
  u &= 0x7fffffff;
  uint32_t o;
  if (u >= 0x47800000u) {
    // |f| >= 65536 overflows to Inf; NaN keeps its top payload bits, quieted.
    o = u > 0x7f800000u ? (0x7e00u | ((u >> 13) & 0x3ff)) : 0x7c00u;
  } else if (u < 0x38800000u) {
    // Below the smallest normal half: adding 0.5 puts the half's subnormal
    // ulp at the float's last bit, so the FPU does the round-to-nearest-even.
    o = f32_bits(f32_from_bits(u) + 0.5f) - 0x3f000000u;
  } else {
    // Normal: rebias, then add just under half an ulp plus the odd bit
    // (ties to even). A carry out of the mantissa rounds up to Inf correctly.
    uint32_t odd = (u >> 13) & 1;
    u += ((uint32_t)(15 - 127) << 23) + 0xfff + odd;
    o = u >> 13;
  }
  return (uint16_t)(o | sign);
}

static inline float bfloat16_to_float(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

static inline uint16_t float_to_bfloat16(float f) {
  uint32_t u = f32_bits(f);
  uint32_t rounded = (u + 0x7fff + ((u >> 16) & 1)) >> 16;
  uint32_t quiet_nan = (u >> 16) | 0x40;
  return (uint16_t)((u & 0x7fffffff) > 0x7f800000u ? quiet_nan : rounded);
}

float kt_half_to_float(uint16_t h) { return half_to_float(h); }
uint16_t kt_float_to_half(float f) { return float_to_half(f); }
float kt_bfloat16_to_float(uint16_t h) { return bfloat16_to_float(h); }
uint16_t kt_float_to_bfloat16(float f) { return float_to_bfloat16(f); }

// ---------------------------------------------------------------------------
// Generic loops. `x` and `y` name the current elements in EXPR.

#define KT_LOOP(T, EXPR)           \
  KT_VECTOR_LOOP                   \
  for (size_t i = 0; i < n; i++) { \
    T x = a[i];                    \
    T y = b[i];                    \
    dst[i] = (EXPR);               \
  }

/// Integer reducer: sum and product in the unsigned type U so overflow wraps
/// instead of being undefined behaviour.
#define KT_INT_REDUCER(NAME, T, U)                                     \
  static void NAME(int op, T *dst, const T *a, const T *b, size_t n) { \
    switch (op) {                                                      \
    case KT_REDOP_SUM: KT_LOOP(T, (T)((U)x + (U)y)) break;             \
    case KT_REDOP_PROD: KT_LOOP(T, (T)((U)x * (U)y)) break;            \
    case KT_REDOP_MAX: KT_LOOP(T, x > y ? x : y) break;                \
    case KT_REDOP_MIN: KT_LOOP(T, x < y ? x : y) break;                \
    }                                                                  \
  }

KT_INT_REDUCER(reduce_i8, int8_t, uint8_t)
KT_INT_REDUCER(reduce_u8, uint8_t, uint8_t)
KT_INT_REDUCER(reduce_i32, int32_t, uint32_t)
KT_INT_REDUCER(reduce_i64, int64_t, uint64_t)

static void reduce_f32(int op, float *dst, const float *a, const float *b, size_t n) {
  switch (op) {
  case KT_REDOP_SUM: KT_LOOP(float, x + y) break;
  case KT_REDOP_PROD: KT_LOOP(float, x * y) break;
  case KT_REDOP_MAX: KT_LOOP(float, f32_max(x, y)) break;
  case KT_REDOP_MIN: KT_LOOP(float, f32_min(x, y)) break;
  }
}

static void reduce_f64(int op, double *dst, const double *a, const double *b, size_t n) {
  switch (op) {
  case KT_REDOP_SUM: KT_LOOP(double, x + y) break;
  case KT_REDOP_PROD: KT_LOOP(double, x * y) break;
  case KT_REDOP_MAX: KT_LOOP(double, f64_max(x, y)) break;
  case KT_REDOP_MIN: KT_LOOP(double, f64_min(x, y)) break;
  }
}

/// Half reducer: widen with TO_FLOAT, combine in float, canonicalize NaN, and
/// round once with FROM_FLOAT. ATTR lets the same source be compiled for a
/// wider instruction set.
#define KT_HALF_REDUCER(ATTR, NAME, TO_FLOAT, FROM_FLOAT)                                        \
  ATTR static void NAME(int op, uint16_t *dst, const uint16_t *a, const uint16_t *b, size_t n) { \
    switch (op) {                                                                                \
    case KT_REDOP_SUM:                                                                           \
      KT_LOOP(uint16_t, FROM_FLOAT(f32_canonical_nan(TO_FLOAT(x) + TO_FLOAT(y)))) break;         \
    case KT_REDOP_PROD:                                                                          \
      KT_LOOP(uint16_t, FROM_FLOAT(f32_canonical_nan(TO_FLOAT(x) * TO_FLOAT(y)))) break;         \
    case KT_REDOP_MAX: KT_LOOP(uint16_t, FROM_FLOAT(f32_max(TO_FLOAT(x), TO_FLOAT(y)))) break;   \
    case KT_REDOP_MIN: KT_LOOP(uint16_t, FROM_FLOAT(f32_min(TO_FLOAT(x), TO_FLOAT(y)))) break;   \
    }                                                                                            \
  }

KT_HALF_REDUCER(, reduce_f16_portable, half_to_float, float_to_half)
KT_HALF_REDUCER(, reduce_bf16_portable, bfloat16_to_float, float_to_bfloat16)

// bfloat16 is compute-bound with SSE2 (16-to-32-bit widening and the rounding
// selects); the same source compiled for AVX2 runs about 3x faster. Float32,
// float64 and integer loops are memory-bound and gain nothing from AVX2.
KT_HALF_REDUCER(__attribute__((target("avx2"))), reduce_bf16_avx2, bfloat16_to_float,
                float_to_bfloat16)

static void reduce_bf16(int op, uint16_t *dst, const uint16_t *a, const uint16_t *b, size_t n) {
  if (__builtin_cpu_supports("avx2"))
    reduce_bf16_avx2(op, dst, a, b, n);
  else
    reduce_bf16_portable(op, dst, a, b, n);
}

// ---------------------------------------------------------------------------
// float16 fast path: F16C converts 8 halves per instruction. Processes the
// largest multiple of 8 elements and returns how many it did; the portable
// loop finishes the tail with identical results.

#define KT_F16C_ATTR __attribute__((target("avx2,f16c")))
#define KT_F16C_ROUND (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

KT_F16C_ATTR static inline __m256 v_load_half(const uint16_t *p) {
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

KT_F16C_ATTR static inline void v_store_half(uint16_t *p, __m256 v) {
  _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(v, KT_F16C_ROUND));
}

KT_F16C_ATTR static inline __m256 v_canonical_nan(__m256 r) {
  __m256 nan = _mm256_castsi256_ps(_mm256_set1_epi32((int)KT_NAN32));
  return _mm256_blendv_ps(r, nan, _mm256_cmp_ps(r, r, _CMP_UNORD_Q));
}

/// Same rules as f32_max/f32_min: NaN wins, ties combine bit patterns.
KT_F16C_ATTR static inline __m256 v_max(__m256 x, __m256 y) {
  __m256 r = _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, y, _CMP_GT_OQ));
  r = _mm256_blendv_ps(r, _mm256_and_ps(x, y), _mm256_cmp_ps(x, y, _CMP_EQ_OQ));
  __m256 nan = _mm256_castsi256_ps(_mm256_set1_epi32((int)KT_NAN32));
  return _mm256_blendv_ps(r, nan, _mm256_cmp_ps(x, y, _CMP_UNORD_Q));
}

KT_F16C_ATTR static inline __m256 v_min(__m256 x, __m256 y) {
  __m256 r = _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, y, _CMP_LT_OQ));
  r = _mm256_blendv_ps(r, _mm256_or_ps(x, y), _mm256_cmp_ps(x, y, _CMP_EQ_OQ));
  __m256 nan = _mm256_castsi256_ps(_mm256_set1_epi32((int)KT_NAN32));
  return _mm256_blendv_ps(r, nan, _mm256_cmp_ps(x, y, _CMP_UNORD_Q));
}

#define KT_F16C_LOOP(EXPR)         \
  for (; i + 8 <= n; i += 8) {     \
    __m256 x = v_load_half(a + i); \
    __m256 y = v_load_half(b + i); \
    v_store_half(dst + i, (EXPR)); \
  }

KT_F16C_ATTR static size_t reduce_f16_f16c(int op, uint16_t *dst, const uint16_t *a,
                                           const uint16_t *b, size_t n) {
  size_t i = 0;
  switch (op) {
  case KT_REDOP_SUM: KT_F16C_LOOP(v_canonical_nan(_mm256_add_ps(x, y))) break;
  case KT_REDOP_PROD: KT_F16C_LOOP(v_canonical_nan(_mm256_mul_ps(x, y))) break;
  case KT_REDOP_MAX: KT_F16C_LOOP(v_max(x, y)) break;
  case KT_REDOP_MIN: KT_F16C_LOOP(v_min(x, y)) break;
  }
  return i;
}

KT_F16C_ATTR static size_t divide_f16_f16c(uint16_t *p, size_t n, float divisor) {
  __m256 d = _mm256_set1_ps(divisor);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) v_store_half(p + i, _mm256_div_ps(v_load_half(p + i), d));
  return i;
}

static int have_f16c(void) {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
}

static void reduce_f16(int op, uint16_t *dst, const uint16_t *a, const uint16_t *b, size_t n) {
  size_t done = have_f16c() ? reduce_f16_f16c(op, dst, a, b, n) : 0;
  reduce_f16_portable(op, dst + done, a + done, b + done, n - done);
}

// ---------------------------------------------------------------------------
// Public entry points.

size_t kt_dtype_size(int dtype) {
  switch (dtype) {
  case KT_DTYPE_INT8:
  case KT_DTYPE_UINT8: return 1;
  case KT_DTYPE_FLOAT16:
  case KT_DTYPE_BFLOAT16: return 2;
  case KT_DTYPE_INT32:
  case KT_DTYPE_FLOAT32: return 4;
  case KT_DTYPE_INT64:
  case KT_DTYPE_FLOAT64: return 8;
  default: return 0;
  }
}

void kt_reduce(int dtype, int op, void *dst, const void *a, const void *b, size_t count) {
  switch (dtype) {
  case KT_DTYPE_INT8: reduce_i8(op, dst, a, b, count); break;
  case KT_DTYPE_UINT8: reduce_u8(op, dst, a, b, count); break;
  case KT_DTYPE_INT32: reduce_i32(op, dst, a, b, count); break;
  case KT_DTYPE_INT64: reduce_i64(op, dst, a, b, count); break;
  case KT_DTYPE_FLOAT16: reduce_f16(op, dst, a, b, count); break;
  case KT_DTYPE_FLOAT32: reduce_f32(op, dst, a, b, count); break;
  case KT_DTYPE_FLOAT64: reduce_f64(op, dst, a, b, count); break;
  case KT_DTYPE_BFLOAT16: reduce_bf16(op, dst, a, b, count); break;
  }
}

/// Integer quotient in int64 so that every dtype shares C's truncation toward
/// zero and a divisor wider than the element type still divides correctly.
#define KT_INT_DIVIDE(T)                                                    \
  {                                                                         \
    T *p = data;                                                            \
    for (size_t i = 0; i < count; i++) p[i] = (T)((int64_t)p[i] / divisor); \
  }

void kt_divide(int dtype, void *data, size_t count, int64_t divisor) {
  if (divisor <= 0) return;
  switch (dtype) {
  case KT_DTYPE_INT8: KT_INT_DIVIDE(int8_t) break;
  case KT_DTYPE_UINT8: KT_INT_DIVIDE(uint8_t) break;
  case KT_DTYPE_INT32: KT_INT_DIVIDE(int32_t) break;
  case KT_DTYPE_INT64: KT_INT_DIVIDE(int64_t) break;
  case KT_DTYPE_FLOAT16: {
    uint16_t *p = data;
    float d = (float)divisor;
    size_t i = have_f16c() ? divide_f16_f16c(p, count, d) : 0;
    for (; i < count; i++) p[i] = float_to_half(half_to_float(p[i]) / d);
    break;
  }
  case KT_DTYPE_FLOAT32: {
    float *p = data;
    float d = (float)divisor;
    for (size_t i = 0; i < count; i++) p[i] /= d;
    break;
  }
  case KT_DTYPE_FLOAT64: {
    double *p = data;
    double d = (double)divisor;
    for (size_t i = 0; i < count; i++) p[i] /= d;
    break;
  }
  case KT_DTYPE_BFLOAT16: {
    uint16_t *p = data;
    float d = (float)divisor;
    for (size_t i = 0; i < count; i++) p[i] = float_to_bfloat16(bfloat16_to_float(p[i]) / d);
    break;
  }
  }
}
