// Element-wise reduction kernels for every dtype Kaitian moves.
//
// Why C: Swift has no portable Float16 arithmetic on x86 and no per-function
// target attributes, and these loops are the hot path of every reduction.
#ifndef KT_REDUCE_H
#define KT_REDUCE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Element types. The numbers are the ones in include/kaitian.h (ktDataType_t).
typedef enum {
  KT_DTYPE_INT8 = 0,
  KT_DTYPE_UINT8 = 1,
  KT_DTYPE_INT32 = 2,
  KT_DTYPE_INT64 = 3,
  KT_DTYPE_FLOAT16 = 4,
  KT_DTYPE_FLOAT32 = 5,
  KT_DTYPE_FLOAT64 = 6,
  KT_DTYPE_BFLOAT16 = 7,
} kt_dtype;

/// Reduction operators. Average is a sum followed by kt_divide.
typedef enum {
  KT_REDOP_SUM = 0,
  KT_REDOP_PROD = 1,
  KT_REDOP_MAX = 2,
  KT_REDOP_MIN = 3,
} kt_redop;

/// Size in bytes of one element; 0 for an unknown dtype.
size_t kt_dtype_size(int dtype);

/// dst[i] = a[i] op b[i] for i in [0, count). dst may be exactly a or b.
/// Integers wrap on overflow (two's complement). Half types are widened to
/// float, combined, and rounded to nearest-even once, so the result depends
/// only on the two inputs and their order. Max and min propagate NaN.
///
/// So that max and min are commutative bit for bit (ranks may combine in any
/// order): any NaN input gives the positive quiet NaN with an empty payload
/// (C's NAN), and a tie between -0 and +0 gives +0 for max and -0 for min.
/// Every NaN that a float16 or bfloat16 reduction produces is that NaN
/// (0x7e00, 0x7fc0), so the result never depends on payloads or on which code
/// path ran. An unknown dtype or op leaves dst untouched.
void kt_reduce(int dtype, int op, void *dst, const void *a, const void *b, size_t count);

/// dst[i] = dst[i] / divisor. Floats divide in their own precision (half types
/// through float, rounded once); integers truncate toward zero. A divisor <= 0
/// or an unknown dtype leaves the data untouched.
void kt_divide(int dtype, void *dst, size_t count, int64_t divisor);

/// Exact IEEE conversions, bit-identical to F16C (vcvtph2ps, vcvtps2ph with
/// round-to-nearest-even) on every input. Narrowing rounds to nearest-even,
/// overflows to Inf and keeps subnormals; a NaN keeps its sign and top payload
/// bits and comes out quiet, both ways.
float kt_half_to_float(uint16_t h);
uint16_t kt_float_to_half(float f);
/// bfloat16 widening is exact (a shift). Narrowing rounds to nearest-even; a
/// NaN keeps its sign and top payload bits and comes out quiet.
float kt_bfloat16_to_float(uint16_t h);
uint16_t kt_float_to_bfloat16(float f);

#ifdef __cplusplus
}
#endif
#endif
