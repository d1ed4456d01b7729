// A float32 kernel for decoding on x86 CPUs with AVX2 + FMA, built once by heartmula.nn.native.
//
// Decoding multiplies a few rows (2-3 per song with guidance) by every weight matrix, so its speed is the speed at
// which the weights stream from memory. torch's BLAS reads them at about half the memory bandwidth on some CPUs
// for such products; `few_rows_linear` streams each weight row once, in order, and multiplies it with every input
// row while it sits in L1.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <immintrin.h>

namespace {

float horizontal_sum(__m256 v) {
  __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
  sum = _mm_add_ss(sum, _mm_shuffle_ps(sum, sum, 1));
  return _mm_cvtss_f32(sum);
}

// Dot products of one weight row with `R` input rows (R = 1 or 2), four independent accumulators per input row so
// that the FMA latency does not limit the stream.
template <int R>
void dot_rows(const float* w, const float* const* x, int64_t k, float* out) {
  __m256 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    __m256 wv[4];
    for (int j = 0; j < 4; ++j) wv[j] = _mm256_loadu_ps(w + i + 8 * j);
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < 4; ++j) acc[r][j] = _mm256_fmadd_ps(wv[j], _mm256_loadu_ps(x[r] + i + 8 * j), acc[r][j]);
  }
  for (; i + 8 <= k; i += 8) {
    __m256 wv = _mm256_loadu_ps(w + i);
    for (int r = 0; r < R; ++r) acc[r][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x[r] + i), acc[r][0]);
  }
  for (int r = 0; r < R; ++r) {
    float sum = horizontal_sum(_mm256_add_ps(_mm256_add_ps(acc[r][0], acc[r][1]), _mm256_add_ps(acc[r][2], acc[r][3])));
    for (int64_t t = i; t < k; ++t) sum += w[t] * x[r][t];
    out[r] = sum;
  }
}

void check_float_cpu(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous(), name,
              " must be a contiguous float32 CPU tensor");
}

}  // namespace

// x [rows, k] @ weight[n, k].T (+ bias [n]) -> [rows, n]
torch::Tensor few_rows_linear(const torch::Tensor& x, const torch::Tensor& weight,
                              const c10::optional<torch::Tensor>& bias) {
  check_float_cpu(x, "x");
  check_float_cpu(weight, "weight");
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1), "shapes do not match");
  const int64_t rows = x.size(0), k = x.size(1), n = weight.size(0);
  const float* bias_data = nullptr;
  if (bias.has_value()) {
    check_float_cpu(*bias, "bias");
    TORCH_CHECK(bias->numel() == n, "bias size does not match");
    bias_data = bias->data_ptr<float>();
  }
  auto out = torch::empty({rows, n}, x.options());
  const float* x_data = x.data_ptr<float>();
  const float* w_data = weight.data_ptr<float>();
  float* out_data = out.data_ptr<float>();
  // Each thread streams its own contiguous block of weight rows.
  at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const float* w = w_data + o * k;
      const float bias_value = bias_data ? bias_data[o] : 0.0f;
      int64_t r = 0;
      for (; r + 2 <= rows; r += 2) {
        const float* x_rows[2] = {x_data + r * k, x_data + (r + 1) * k};
        float sums[2];
        dot_rows<2>(w, x_rows, k, sums);
        out_data[r * n + o] = sums[0] + bias_value;
        out_data[(r + 1) * n + o] = sums[1] + bias_value;
      }
      if (r < rows) {
        const float* x_rows[1] = {x_data + r * k};
        float sum;
        dot_rows<1>(w, x_rows, k, &sum);
        out_data[r * n + o] = sum + bias_value;
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("few_rows_linear", &few_rows_linear, "x @ weight.T (+ bias) for a few float32 rows");
}
