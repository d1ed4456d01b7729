// A weight matrix as the decoding kernels read it (decoding.cpp, quantized_products.cpp): float32 or bfloat16 rows,
// or the weight-only quantised formats of heartmula.nn.quantized.
//
// int8: one signed byte per weight, weight = scale * q.
// int4: two weights per byte, weight = scale * q + offset with q in 0..15; in each block of 64 columns, byte t holds
// column t in its low nibble and column t + 32 in its high nibble, so that one shift and one mask give 32
// consecutive columns.
// Both have one float16 scale (and int4 one float16 offset) per group of `group` columns of a row; a group is a
// multiple of 64 columns.
#pragma once

#include <torch/extension.h>

#include <cstdint>

enum class WeightFormat { kFloat32, kBFloat16, kInt8, kInt4 };

struct WeightMatrix {
  WeightFormat format = WeightFormat::kFloat32;
  const uint8_t* data = nullptr;
  const at::Half* scales = nullptr;   // [n, k / group]
  const at::Half* offsets = nullptr;  // [n, k / group], int4 only
  int64_t n = 0, k = 0, group = 0;

  bool quantized() const { return format == WeightFormat::kInt8 || format == WeightFormat::kInt4; }
  int64_t groups() const { return quantized() ? k / group : 0; }
  int64_t row_bytes() const {
    switch (format) {
      case WeightFormat::kFloat32: return 4 * k;
      case WeightFormat::kBFloat16: return 2 * k;
      case WeightFormat::kInt8: return k;
      default: return k / 2;
    }
  }
  // Rows first..n-1 as a matrix of their own.
  WeightMatrix rows_from(int64_t first) const {
    WeightMatrix sub = *this;
    sub.data += first * row_bytes();
    if (scales) sub.scales += first * groups();
    if (offsets) sub.offsets += first * groups();
    sub.n = n - first;
    return sub;
  }
};

// The matrix stored in (data [n, k] float32 / bfloat16 / int8, or [n, k / 2] uint8 for int4; scales; offsets), the
// scales and offsets empty for float weights; `what` names it in errors.
WeightMatrix weight_matrix(const torch::Tensor& data, const torch::Tensor& scales, const torch::Tensor& offsets,
                           const char* what);

// out[rows, n] = x[rows, k] @ dequantised(m).T for an int8 or int4 matrix; x float32.
void quantized_product(const float* x, int64_t rows, const WeightMatrix& m, float* out);

// Whether int4 products on AVX-512 VNNI round the input rows to bytes (the default) or to 16-bit integers (the AVX2
// products' way, slower; kept to compare the two in one process: bench/quant_products.py --int4-kernels).
void use_int4_byte_products(bool on);

// Row `row` of the matrix as float32 values [k].
void dequantize_row(const WeightMatrix& m, int64_t row, float* out);
