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
void kt_reduce(int dtype, int op, void *dst, const void *a, const void *b, size_t count);

/// dst[i] = dst[i] / divisor. Floats divide in their own precision (half types
/// through float, rounded once); integers truncate toward zero.
void kt_divide(int dtype, void *dst, size_t count, int64_t divisor);

float kt_half_to_float(uint16_t h);
uint16_t kt_float_to_half(float f);
float kt_bfloat16_to_float(uint16_t h);
uint16_t kt_float_to_bfloat16(float f);

#ifdef __cplusplus
}
#endif
#endif
