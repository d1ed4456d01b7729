// Kernels for decoding on x86 CPUs with AVX2 + FMA, built once by heartmula.nn.native. Weights (and KV caches) are
// float32 or bfloat16 (W below); activations are float32 inside, whatever the weights.
//
// Decoding multiplies a few rows (2-3 per song with guidance) by every weight matrix, so its speed is the speed at
// which the weights stream from memory. torch's BLAS reads them at about half the memory bandwidth on some CPUs
// for such products; `few_rows_linear` streams each weight row once, in order, and multiplies it with every input
// row while it sits in L1.
//
// `transformer_step` runs a whole Llama-style transformer (heartmula.nn.transformer) over a few new tokens with
// its KV cache: the same products, plus the norms, RoPE, attention and SwiGLU between them, in one call. Without
// it a frame of a small LM (the `bench-36m` preset) runs some 2,700 small torch operations besides views, whose
// fixed costs add up to more than the products themselves.
//
// Any weight matrix of a transformer or of the local frame may instead hold int8 or int4 weights (weight_matrix.h,
// products in quantized_products.cpp); the norms and KV caches are then of type W.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "weight_matrix.h"

namespace {

float horizontal_sum(__m256 v) {
  __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
  sum = _mm_add_ss(sum, _mm_shuffle_ps(sum, sum, 1));
  return _mm_cvtss_f32(sum);
}

// How far ahead of its reads a product asks for its weights: with the hardware prefetcher alone the few-row
// products stay below the memory bandwidth on some CPUs; asking a few KB ahead brings them close to it
// (`bench/few_rows_linear.py` reports their GB/s beside the copy bandwidth).
constexpr int64_t kPrefetchBytes = 8192;

using BFloat16 = c10::BFloat16;

// 8 weights as floats: a bfloat16 is the top half of a float32.
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const BFloat16* p) {
  const __m128i halves = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(halves), 16));
}

template <typename W>
constexpr torch::ScalarType scalar_type() {
  return std::is_same<W, float>::value ? torch::kFloat32 : torch::kBFloat16;
}

// f(W{}) with W = float or BFloat16, the weight type `type` names (checked by the caller).
template <typename F>
void with_weight_type(torch::ScalarType type, F&& f) {
  if (type == torch::kFloat32)
    f(float{});
  else
    f(BFloat16{});
}

// Dot products of one weight row with `R` float input rows (R = 1 or 2), four independent accumulators per input
// row so that the FMA latency does not limit the stream. `Stream`: prefetch the weights ahead (a product's long
// stream).
template <int R, bool Stream = false, typename W>
void dot_rows(const W* w, const float* const* x, int64_t k, float* out) {
  __m256 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    if (Stream) {  // the same distance in bytes whatever the weight type; 32 weights span 1 or 2 cache lines
      const char* ahead = reinterpret_cast<const char*>(w + i) + kPrefetchBytes;
      _mm_prefetch(ahead, _MM_HINT_T0);
      if (sizeof(W) == 4) _mm_prefetch(ahead + 64, _MM_HINT_T0);
    }
    __m256 wv[4];
    for (int j = 0; j < 4; ++j) wv[j] = load8(w + i + 8 * j);
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < 4; ++j) acc[r][j] = _mm256_fmadd_ps(wv[j], _mm256_loadu_ps(x[r] + i + 8 * j), acc[r][j]);
  }
  for (; i + 8 <= k; i += 8) {
    __m256 wv = load8(w + i);
    for (int r = 0; r < R; ++r) acc[r][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x[r] + i), acc[r][0]);
  }
  for (int r = 0; r < R; ++r) {
    float sum = horizontal_sum(_mm256_add_ps(_mm256_add_ps(acc[r][0], acc[r][1]), _mm256_add_ps(acc[r][2], acc[r][3])));
    for (int64_t t = i; t < k; ++t) sum += static_cast<float>(w[t]) * x[r][t];
    out[r] = sum;
  }
}

// a (float) . b (float or bfloat16)
template <typename W>
float dot(const float* a, const W* b, int64_t n) {
  const float* rows[1] = {a};
  float sum;
  dot_rows<1>(b, rows, n, &sum);
  return sum;
}

// y += alpha * x
template <typename W>
void axpy(float alpha, const W* x, float* y, int64_t n) {
  const __m256 a = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, load8(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += alpha * static_cast<float>(x[i]);
}

// e^x for x <= 0 (a score minus the highest one), 8 at a time: 2^n e^r with x = n ln 2 + r, |r| <= ln 2 / 2, e^r by
// its Taylor series to r^7 (relative error below 1e-7); -inf gives 0. Attention takes one exp per head and filled
// slot, so their cost grows with the song; eight at a time in registers costs less than std::exp on each.
inline __m256 exp_non_positive(__m256 x) {
  const __m256 masked = _mm256_cmp_ps(x, _mm256_set1_ps(-INFINITY), _CMP_EQ_OQ);
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));  // 2^n stays a normal float
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x);  // ln 2 in two parts, for an exact n ln 2
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
  __m256 series = _mm256_set1_ps(1.0f / 5040);
  for (const float coefficient : {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f})
    series = _mm256_fmadd_ps(series, r, _mm256_set1_ps(coefficient));
  const __m256i power = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(masked, _mm256_mul_ps(series, _mm256_castsi256_ps(power)));
}

// w[t] = e^(w[t] - shift) for t < n (every w[t] <= shift, or -inf); returns their sum.
float exp_shifted_and_sum(float* w, int64_t n, float shift) {
  const __m256 shift8 = _mm256_set1_ps(shift);
  __m256 total8 = _mm256_setzero_ps();
  int64_t t = 0;
  for (; t + 8 <= n; t += 8) {
    const __m256 e = exp_non_positive(_mm256_sub_ps(_mm256_loadu_ps(w + t), shift8));
    _mm256_storeu_ps(w + t, e);
    total8 = _mm256_add_ps(total8, e);
  }
  float total = horizontal_sum(total8);
  for (; t < n; ++t) {
    w[t] = std::exp(w[t] - shift);
    total += w[t];
  }
  return total;
}

void check_cpu(const torch::Tensor& t, const char* name, torch::ScalarType type = torch::kFloat32) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == type && t.is_contiguous(), name, " must be a contiguous ",
              type == torch::kFloat32 ? "float32" : "bfloat16", " CPU tensor");
}

// out[rows, n] = x[rows, k] @ w[n, k].T (+ bias). Each thread streams its own contiguous block of weight rows.
template <typename W>
void product(const float* x, int64_t rows, int64_t k, const W* w, int64_t n, const float* bias, float* out) {
  at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const W* w_row = w + o * k;
      const float bias_value = bias ? bias[o] : 0.0f;
      int64_t r = 0;
      for (; r + 2 <= rows; r += 2) {
        const float* x_rows[2] = {x + r * k, x + (r + 1) * k};
        float sums[2];
        dot_rows<2, true>(w_row, x_rows, k, sums);
        out[r * n + o] = sums[0] + bias_value;
        out[(r + 1) * n + o] = sums[1] + bias_value;
      }
      if (r < rows) {
        const float* x_rows[1] = {x + r * k};
        float sum;
        dot_rows<1, true>(w_row, x_rows, k, &sum);
        out[r * n + o] = sum + bias_value;
      }
    }
  });
}

// out[rows, n] = x[rows, m.k] @ m.T (+ bias), whatever m's format.
void product(const float* x, int64_t rows, const WeightMatrix& m, const float* bias, float* out) {
  switch (m.format) {
    case WeightFormat::kFloat32:
      return product(x, rows, m.k, reinterpret_cast<const float*>(m.data), m.n, bias, out);
    case WeightFormat::kBFloat16:
      return product(x, rows, m.k, reinterpret_cast<const BFloat16*>(m.data), m.n, bias, out);
    default:
      quantized_product(x, rows, m, out);
      if (bias)
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t o = 0; o < m.n; ++o) out[r * m.n + o] += bias[o];
  }
}

// out = x * rsqrt(mean(x^2) + eps) * scale, row by row (F.rms_norm)
template <typename W>
void rms_norm(const float* x, int64_t rows, int64_t d, const W* scale, float eps, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * d;
    const float inverse = 1.0f / std::sqrt(dot(xr, xr, d) / d + eps);
    for (int64_t i = 0; i < d; ++i) out[r * d + i] = xr[i] * inverse * static_cast<float>(scale[i]);
  }
}

// Rotates adjacent pairs (even, odd) of each head by (cos, sin): the complex product of heartmula.nn.rope.
void rotate(float* x, int64_t heads, int64_t head_dim, const float* cos_sin) {
  for (int64_t h = 0; h < heads; ++h) {
    float* xh = x + h * head_dim;
    for (int64_t p = 0; p < head_dim / 2; ++p) {
      const float a = xh[2 * p], b = xh[2 * p + 1], c = cos_sin[2 * p], s = cos_sin[2 * p + 1];
      xh[2 * p] = a * c - b * s;
      xh[2 * p + 1] = a * s + b * c;
    }
  }
}

}  // namespace

// x [rows, k] @ weight[n, k].T (+ bias [n]) -> [rows, n]: float32 throughout, or bfloat16 x, weight and bias (the
// result rounded to bfloat16 once, at the end).
torch::Tensor few_rows_linear(const torch::Tensor& x, const torch::Tensor& weight,
                              const c10::optional<torch::Tensor>& bias) {
  const auto type = weight.scalar_type();
  TORCH_CHECK(type == torch::kFloat32 || type == torch::kBFloat16, "weight must be float32 or bfloat16");
  check_cpu(x, "x", type);
  check_cpu(weight, "weight", type);
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1), "shapes do not match");
  const int64_t rows = x.size(0), k = x.size(1), n = weight.size(0);
  torch::Tensor bias32;
  if (bias.has_value()) {
    check_cpu(*bias, "bias", type);
    TORCH_CHECK(bias->numel() == n, "bias size does not match");
    bias32 = bias->to(torch::kFloat32);
  }
  const auto x32 = x.to(torch::kFloat32);
  auto out = torch::empty({rows, n}, x32.options());
  const float* bias_data = bias.has_value() ? bias32.data_ptr<float>() : nullptr;
  with_weight_type(type, [&](auto tag) {
    using W = decltype(tag);
    product(x32.data_ptr<float>(), rows, k, weight.data_ptr<W>(), n, bias_data, out.data_ptr<float>());
  });
  return out.to(type);
}

// Tensors per layer in a transformer's `layers` list, in this order: sa_norm scale, q|k|v (3: see `kMatrixSlots`),
// output (3), mlp_norm scale, gate|up (3), down (3), cache k, cache v.
constexpr int kTensorsPerLayer = 16;
// Where each of a layer's four weight matrices starts: (data, scales, offsets) as `weight_matrix` takes them.
constexpr int kMatrixSlots[4] = {1, 4, 8, 11};
constexpr int kSaNorm = 0, kMlpNorm = 7, kCacheK = 14, kCacheV = 15;

// A Llama-style transformer of heartmula.nn.transformer with its KV caches, read from a list of tensors
// (checked once): per layer sa_norm scale [d], q|k|v weight [(heads + 2 kv_heads) head_dim, d], output weight
// [d, heads head_dim], mlp_norm scale [d], gate|up weight [2 f, d], down weight [d, f], cache k and v
// [>= batch, kv_heads, capacity, head_dim]. The norms and caches are of type W (float or BFloat16); each weight is
// of type W too, or int8 / int4 (weight_matrix.h).
template <typename W>
struct Transformer {
  const std::vector<torch::Tensor>& layers;
  std::vector<WeightMatrix> matrices;  // 4 per layer: q|k|v, output, gate|up, down
  const W* final_scale;
  int64_t d, f, heads, kv_heads, head_dim;
  float eps;

  Transformer(const std::vector<torch::Tensor>& layers, const torch::Tensor& final_norm, int64_t d,
              int64_t head_dim, int64_t num_heads, int64_t num_kv_heads, double eps, int64_t batch, int64_t end)
      : layers(layers), d(d), f(0), heads(num_heads), kv_heads(num_kv_heads), head_dim(head_dim), eps(eps) {
    check_cpu(final_norm, "final_scale", scalar_type<W>());
    TORCH_CHECK(final_norm.numel() == d, "final_scale must have the model width");
    final_scale = final_norm.data_ptr<W>();
    TORCH_CHECK(!layers.empty() && layers.size() % kTensorsPerLayer == 0, "layers must hold 16 tensors per layer");
    TORCH_CHECK(num_heads > 0 && num_kv_heads > 0 && num_heads % num_kv_heads == 0, "bad head counts");
    for (size_t first = 0; first < layers.size(); first += kTensorsPerLayer) check_layer(first, batch, end);
  }

  void check_layer(size_t first, int64_t batch, int64_t end) {
    const int64_t layer = first / kTensorsPerLayer, q_size = heads * head_dim, kv_size = kv_heads * head_dim;
    for (const int slot : {kSaNorm, kMlpNorm}) {
      check_cpu(layers[first + slot], "a norm scale", scalar_type<W>());
      TORCH_CHECK(layers[first + slot].numel() == d, "layer ", layer, ": a norm scale must have the model width");
    }
    WeightMatrix m[4];
    for (int i = 0; i < 4; ++i) {
      const size_t at = first + kMatrixSlots[i];
      m[i] = weight_matrix(layers[at], layers[at + 1], layers[at + 2], "a layer weight");
      TORCH_CHECK(m[i].quantized() || layers[at].scalar_type() == scalar_type<W>(), "layer ", layer,
                  ": float weights must be of the norms' type");
      matrices.push_back(m[i]);
    }
    f = m[2].n / 2;
    const bool ok = m[0].n == q_size + 2 * kv_size && m[0].k == d && m[1].n == d && m[1].k == q_size &&
                    m[2].n % 2 == 0 && m[2].k == d && m[3].n == d && m[3].k == f;
    TORCH_CHECK(ok, "layer ", layer, ": a weight has the wrong shape");
    for (const int slot : {kCacheK, kCacheV}) {
      const auto& t = layers[first + slot];
      TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == scalar_type<W>() && t.dim() == 4 && t.size(0) >= batch &&
                      t.size(1) == kv_heads && t.size(2) >= end && t.size(3) == head_dim && t.stride(3) == 1,
                  "layer ", layer, ": a KV cache has the wrong shape or type");
    }
  }

  // `s` new tokens of `b` sequences that continue their caches at slot `start`: h [b * s, d] (embedded tokens, in
  // place: the residual stream) -> out [b * s, d] (final-normed). Token j of the block sees the cache up to slot
  // start + j and, where `mask` is given (row stride `mask_stride`, true = may attend), only its allowed slots.
  // rope: (cos, sin) pairs [head_dim / 2, 2] of token j of sequence i at rope + i * rope_batch_stride + j * head_dim.
  void run(float* h, int64_t b, int64_t s, int64_t start, const float* rope, int64_t rope_batch_stride,
           const bool* mask, int64_t mask_stride, float* out) const {
    const int64_t rows = b * s, q_size = heads * head_dim, kv_size = kv_heads * head_dim, end = start + s;
    const int64_t qkv_size = q_size + 2 * kv_size, groups = heads / kv_heads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    std::vector<float> normed(rows * d), qkv(rows * qkv_size), attended(rows * q_size), delta(rows * d),
        gate_up(rows * 2 * f), activated(rows * f);
    for (size_t first = 0; first < layers.size(); first += kTensorsPerLayer) {
      const WeightMatrix* weights = matrices.data() + 4 * (first / kTensorsPerLayer);
      const auto& cache_k = layers[first + kCacheK];
      const auto& cache_v = layers[first + kCacheV];
      W* k_cache = cache_k.data_ptr<W>();
      W* v_cache = cache_v.data_ptr<W>();
      const int64_t kb = cache_k.stride(0), kh = cache_k.stride(1), kt = cache_k.stride(2);
      const int64_t vb = cache_v.stride(0), vh = cache_v.stride(1), vt = cache_v.stride(2);

      // Attention block: norm, one q|k|v product, RoPE, new K/V into the cache.
      rms_norm(h, rows, d, layers[first + kSaNorm].data_ptr<W>(), eps, normed.data());
      product(normed.data(), rows, weights[0], nullptr, qkv.data());
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = r / s, j = r % s;
        float* q = qkv.data() + r * qkv_size;
        rotate(q, heads + kv_heads, head_dim, rope + i * rope_batch_stride + j * head_dim);  // q, k heads adjacent
        for (int64_t g = 0; g < kv_heads; ++g) {
          std::copy_n(q + q_size + g * head_dim, head_dim, k_cache + i * kb + g * kh + (start + j) * kt);
          std::copy_n(q + q_size + kv_size + g * head_dim, head_dim, v_cache + i * vb + g * vh + (start + j) * vt);
        }
      }
      // Each (sequence, KV head) reads its keys and values once for all the query heads of its group.
      at::parallel_for(0, b * kv_heads, 1, [&](int64_t begin, int64_t stop) {
        std::vector<float> weights(end);
        for (int64_t task = begin; task < stop; ++task) {
          const int64_t i = task / kv_heads, g = task % kv_heads;
          const W* keys = k_cache + i * kb + g * kh;
          const W* values = v_cache + i * vb + g * vh;
          const bool* allowed = mask ? mask + i * mask_stride : nullptr;
          for (int64_t j = 0; j < s; ++j) {
            const int64_t visible = start + j + 1;
            for (int64_t head = g * groups; head < (g + 1) * groups; ++head) {
              const float* q = qkv.data() + (i * s + j) * qkv_size + head * head_dim;
              float* w = weights.data();
              float best = -INFINITY;
              for (int64_t t = 0; t < visible; ++t) {
                w[t] = (allowed && !allowed[t]) ? -INFINITY : dot(q, keys + t * kt, head_dim) * scale;
                best = std::max(best, w[t]);
              }
              float* o = attended.data() + (i * s + j) * q_size + head * head_dim;
              std::fill_n(o, head_dim, 0.0f);
              if (best == -INFINITY) continue;  // nothing to attend to (as SDPA, whose rows are then zero)
              const float inverse = 1.0f / exp_shifted_and_sum(w, visible, best);
              for (int64_t t = 0; t < visible; ++t)
                if (w[t] != 0.0f) axpy(w[t] * inverse, values + t * vt, o, head_dim);
            }
          }
        }
      });
      product(attended.data(), rows, weights[1], nullptr, delta.data());
      for (int64_t i = 0; i < rows * d; ++i) h[i] += delta[i];

      // Feed-forward block: norm, one gate|up product, SwiGLU, down product.
      rms_norm(h, rows, d, layers[first + kMlpNorm].data_ptr<W>(), eps, normed.data());
      product(normed.data(), rows, weights[2], nullptr, gate_up.data());
      for (int64_t r = 0; r < rows; ++r) {
        const float* gate = gate_up.data() + r * 2 * f;
        const float* up = gate + f;
        for (int64_t c = 0; c < f; ++c) activated[r * f + c] = gate[c] / (1.0f + std::exp(-gate[c])) * up[c];
      }
      product(activated.data(), rows, weights[3], nullptr, delta.data());
      for (int64_t i = 0; i < rows * d; ++i) h[i] += delta[i];
    }
    rms_norm(h, rows, d, final_scale, eps, out);
  }
};

// The transformer over `s` new tokens of `b` sequences that continue their KV caches at slot `start`:
// x [b, s, d] (embedded tokens) -> final-normed hidden states [b, s, d]; the new K/V are written into the caches.
// rope [b or 1, s, head_dim / 2, 2]: (cos, sin) of each token's position. key_mask [b, >= start + s] (bool,
// true = may attend) marks the padding slots of left-padded rows. layers: see `Transformer`, its norms and caches of
// x's type (float32 or bfloat16: then the output is rounded to bfloat16 once, at the end).
torch::Tensor transformer_step(const torch::Tensor& x, const torch::Tensor& rope,
                               const c10::optional<torch::Tensor>& key_mask, int64_t start,
                               const std::vector<torch::Tensor>& layers, const torch::Tensor& final_scale,
                               int64_t num_heads, int64_t num_kv_heads, double eps) {
  const auto type = x.scalar_type();
  TORCH_CHECK(type == torch::kFloat32 || type == torch::kBFloat16, "x must be float32 or bfloat16");
  check_cpu(x, "x", type);
  check_cpu(rope, "rope");
  TORCH_CHECK(x.dim() == 3, "x must be [batch, tokens, dim]");
  const int64_t b = x.size(0), s = x.size(1), d = x.size(2);
  TORCH_CHECK(rope.dim() == 4 && (rope.size(0) == 1 || rope.size(0) == b) && rope.size(1) == s && rope.size(3) == 2,
              "rope must be [batch or 1, tokens, head_dim / 2, 2]");
  const int64_t head_dim = 2 * rope.size(2);
  const bool* mask = nullptr;
  int64_t mask_stride = 0;
  if (key_mask.has_value()) {
    TORCH_CHECK(key_mask->device().is_cpu() && key_mask->scalar_type() == torch::kBool && key_mask->dim() == 2 &&
                key_mask->size(0) == b && key_mask->size(1) >= start + s && key_mask->stride(1) == 1,
                "key_mask must be a bool [batch, >= start + tokens] CPU tensor with contiguous rows");
    mask = key_mask->data_ptr<bool>();
    mask_stride = key_mask->stride(0);
  }
  auto hidden = x.to(torch::kFloat32, /*non_blocking=*/false, /*copy=*/true);  // the residual stream, updated in place
  auto out = torch::empty_like(hidden);
  const int64_t rope_batch_stride = rope.size(0) == 1 ? 0 : s * head_dim;
  with_weight_type(type, [&](auto tag) {
    const Transformer<decltype(tag)> transformer(layers, final_scale, d, head_dim, num_heads, num_kv_heads, eps, b,
                                                 start + s);
    transformer.run(hidden.data_ptr<float>(), b, s, start, rope.data_ptr<float>(), rope_batch_stride, mask,
                    mask_stride, out.data_ptr<float>());
  });
  return out.to(type);
}

// A draw from the softmax of a row's k best logits at `temperature`: the argmax over those k of probability /
// noise, noise [k] being Exponential(1) draws paired with the k best in descending order
// (heartmula.nn.sampling.sample_among_top_k). `best`: scratch space.
int64_t draw_among_top_k(const float* row, int64_t vocab, const float* noise, int64_t k, double temperature,
                         std::vector<std::pair<float, int64_t>>& best) {
  const auto higher = [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  // The k best in one pass: a heap whose top is the worst kept.
  best.clear();
  for (int64_t i = 0; i < vocab; ++i) {
    if (static_cast<int64_t>(best.size()) < k) {
      best.emplace_back(row[i], i);
      std::push_heap(best.begin(), best.end(), higher);
    } else if (higher({row[i], i}, best.front())) {
      std::pop_heap(best.begin(), best.end(), higher);
      best.back() = {row[i], i};
      std::push_heap(best.begin(), best.end(), higher);
    }
  }
  std::sort_heap(best.begin(), best.end(), higher);  // best first
  const float top = best[0].first;
  float winner = -1.0f;
  int64_t chosen = best[0].second;
  for (int64_t j = 0; j < k; ++j) {
    const float score = std::exp(static_cast<float>((best[j].first - top) / temperature)) / noise[j];
    if (score > winner) {
      winner = score;
      chosen = best[j].second;
    }
  }
  return chosen;
}

// The first of a row's highest logits (torch.argmax).
int64_t argmax(const float* row, int64_t vocab) {
  return std::max_element(row, row + vocab) - row;
}

// Token ids [n] drawn among each row's k best logits with noise [n, k]: `draw_among_top_k` row by row, in place of
// the six torch operations of heartmula.nn.sampling.sample_among_top_k.
torch::Tensor sample_among_top_k(const torch::Tensor& logits, double temperature, const torch::Tensor& noise) {
  check_cpu(logits, "logits");
  check_cpu(noise, "noise");
  TORCH_CHECK(logits.dim() == 2 && noise.dim() == 2 && noise.size(0) == logits.size(0) && noise.size(1) >= 1 &&
                  noise.size(1) <= logits.size(1), "noise must be [rows, k] with 1 <= k <= vocabulary");
  TORCH_CHECK(temperature > 0, "temperature must be > 0");
  const int64_t n = logits.size(0), vocab = logits.size(1), k = noise.size(1);
  auto ids = torch::empty({n}, logits.options().dtype(torch::kInt64));
  std::vector<std::pair<float, int64_t>> best;
  for (int64_t r = 0; r < n; ++r)
    ids.data_ptr<int64_t>()[r] = draw_among_top_k(logits.data_ptr<float>() + r * vocab, vocab,
                                                  noise.data_ptr<float>() + r * k, k, temperature, best);
  return ids;
}

// The weights of the local frame besides the decoder's: projection [d, D], heads [(K - 1) V, d] (codebook c's head
// at rows (c - 1) V..), embeddings [K V, D] (codebook c, code x at row c V + x).
struct LocalFrameWeights {
  WeightMatrix projection, heads, embeddings;
};

// The loop of `local_frame` (below), its arguments checked.
template <typename W>
void run_local_frame(const torch::Tensor& hidden, const int64_t* first, const int64_t* song_of,
                     const torch::Tensor& guidance, const torch::Tensor& masks, const torch::Tensor& noise,
                     double temperature, const LocalFrameWeights& weights, const float* rope, int64_t head_dim,
                     const Transformer<W>& decoder, int64_t* out_codes) {
  const int64_t rows = hidden.size(0), width = hidden.size(1), d = weights.projection.n;
  const int64_t songs = guidance.size(0), steps = masks.size(0), vocab = masks.size(1), k = noise.size(2);
  std::vector<float> inputs(rows * 2 * width), projected(rows * 2 * d), states(rows * 2 * d), logits(rows * vocab),
      guided(vocab);
  std::vector<std::pair<float, int64_t>> best;
  const auto embed = [&](int64_t row, float* into) { dequantize_row(weights.embeddings, row, into); };
  // Step 0: two tokens per row, the backbone state and codebook 0's embedding.
  for (int64_t r = 0; r < rows; ++r) {
    std::copy_n(hidden.data_ptr<float>() + r * width, width, inputs.data() + 2 * r * width);
    embed(first[song_of[r]], inputs.data() + (2 * r + 1) * width);
  }
  int64_t tokens = 2, start = 0;
  for (int64_t step = 0; step < steps; ++step) {
    product(inputs.data(), rows * tokens, weights.projection, nullptr, projected.data());
    decoder.run(projected.data(), rows, tokens, start, rope + start * head_dim, 0, nullptr, 0, states.data());
    // The last token's state of each row -> this codebook's logits -> each song's guided draw.
    for (int64_t r = 0; r < rows; ++r)
      std::copy_n(states.data() + ((r + 1) * tokens - 1) * d, d, projected.data() + r * d);
    WeightMatrix head = weights.heads.rows_from(step * vocab);
    head.n = vocab;
    product(projected.data(), rows, head, nullptr, logits.data());
    for (int64_t i = 0; i < songs; ++i) {
      std::copy_n(masks.data_ptr<float>() + step * vocab, vocab, guided.data());
      for (int64_t r = 0; r < rows; ++r) {
        const float weight = guidance.data_ptr<float>()[i * rows + r];
        if (weight != 0.0f) axpy(weight, logits.data() + r * vocab, guided.data(), vocab);
      }
      out_codes[i * steps + step] =
          k == 0 ? argmax(guided.data(), vocab)
                 : draw_among_top_k(guided.data(), vocab, noise.data_ptr<float>() + (i * steps + step) * k, k,
                                    temperature, best);
    }
    start += tokens;
    tokens = 1;
    for (int64_t r = 0; r < rows; ++r)  // the code just drawn, embedded for its codebook, is the next input
      embed((step + 1) * vocab + out_codes[song_of[r] * steps + step], inputs.data() + r * width);
  }
}

// A matrix of the local frame from (data, scales, offsets): float weights must be of the hidden state's type.
WeightMatrix frame_matrix(const std::vector<torch::Tensor>& parts, torch::ScalarType type, const char* what) {
  TORCH_CHECK(parts.size() == 3, what, " must be (data, scales, offsets)");
  const WeightMatrix m = weight_matrix(parts[0], parts[1], parts[2], what);
  TORCH_CHECK(m.quantized() || parts[0].scalar_type() == type, what, ": float weights must be of hidden's type");
  return m;
}

// Codebooks 1..K-1 of one frame, the local decoder's whole loop in one call (heartmula.lm.generation's
// `_frame_from_hidden` in the default mode): the decoder starts afresh at [backbone state, codebook 0]; after
// each step, every song's guided logits of the next codebook (guidance [songs, rows] @ row logits + the
// codebook's invalid-code mask) are sampled and the code's embedding is the next step's input.
//
// hidden [rows, D]: the backbone's last hidden state of each row; first_codes [songs]: codebook 0; row_song [rows]:
// each row's song. masks [K - 1, V] (additive); noise [songs, K - 1, k] for sampling among the k best at
// `temperature`, or k = 0 for the most likely code (these three and guidance in float32). projection [d, D];
// heads [(K - 1) V, d]; embeddings [K V, D] (codebook c, code x at row c V + x), each as (data, scales, offsets)
// (weight_matrix.h); rope [K, head_dim / 2, 2] of positions 0..K-1; layers and final_scale: the decoder (see
// `Transformer`, its caches for >= rows sequences of >= K slots). hidden, the norms, the caches and any float
// weights are all float32 or all bfloat16. Returns codes [songs, K - 1].
torch::Tensor local_frame(const torch::Tensor& hidden, const torch::Tensor& first_codes, const torch::Tensor& row_song,
                          const torch::Tensor& guidance, const torch::Tensor& masks, const torch::Tensor& noise,
                          double temperature, const std::vector<torch::Tensor>& projection,
                          const std::vector<torch::Tensor>& heads, const std::vector<torch::Tensor>& embeddings,
                          const torch::Tensor& rope, const std::vector<torch::Tensor>& layers,
                          const torch::Tensor& final_scale, int64_t num_heads, int64_t num_kv_heads, double eps) {
  const auto type = hidden.scalar_type();
  TORCH_CHECK(type == torch::kFloat32 || type == torch::kBFloat16, "hidden must be float32 or bfloat16");
  check_cpu(hidden, "hidden", type);
  const LocalFrameWeights weights{frame_matrix(projection, type, "projection"), frame_matrix(heads, type, "heads"),
                                  frame_matrix(embeddings, type, "embeddings")};
  for (const auto* t : {&guidance, &masks, &noise, &rope})
    check_cpu(*t, "guidance, masks, noise and rope each");
  for (const auto* t : {&first_codes, &row_song})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == torch::kInt64 && t->dim() == 1 && t->is_contiguous(),
                "first_codes and row_song must be int64 vectors");
  TORCH_CHECK(hidden.dim() == 2 && weights.projection.k == hidden.size(1),
              "hidden [rows, D] and projection [d, D] do not match");
  const int64_t rows = hidden.size(0), width = hidden.size(1), d = weights.projection.n;
  TORCH_CHECK(masks.dim() == 2, "masks must be [K - 1, V]");
  const int64_t songs = first_codes.size(0), steps = masks.size(0), vocab = masks.size(1), k = noise.size(2);
  TORCH_CHECK(row_song.size(0) == rows && guidance.dim() == 2 && guidance.size(0) == songs &&
                  guidance.size(1) == rows, "guidance must be [songs, rows] and row_song [rows]");
  TORCH_CHECK(weights.heads.n == steps * vocab && weights.heads.k == d, "heads must be [(K - 1) V, d]");
  TORCH_CHECK(weights.embeddings.n == (steps + 1) * vocab && weights.embeddings.k == width,
              "embeddings must be [K V, D]");
  TORCH_CHECK(noise.dim() == 3 && noise.size(0) == songs && noise.size(1) == steps && k <= vocab,
              "noise must be [songs, K - 1, k]");
  TORCH_CHECK(k == 0 || temperature > 0, "temperature must be > 0 to sample");
  TORCH_CHECK(rope.dim() == 3 && rope.size(0) >= steps + 1 && rope.size(2) == 2, "rope must be [K, head_dim / 2, 2]");
  const int64_t head_dim = 2 * rope.size(1);
  const int64_t* song_of = row_song.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) TORCH_CHECK(song_of[r] >= 0 && song_of[r] < songs, "row_song out of range");
  const int64_t* first = first_codes.data_ptr<int64_t>();
  for (int64_t i = 0; i < songs; ++i) TORCH_CHECK(first[i] >= 0 && first[i] < vocab, "first_codes out of range");

  auto codes = torch::empty({songs, steps}, first_codes.options());
  const auto hidden32 = hidden.to(torch::kFloat32);
  with_weight_type(type, [&](auto tag) {
    const Transformer<decltype(tag)> decoder(layers, final_scale, d, head_dim, num_heads, num_kv_heads, eps, rows,
                                             steps + 1);
    run_local_frame(hidden32, first, song_of, guidance, masks, noise, temperature, weights, rope.data_ptr<float>(),
                    head_dim, decoder, codes.data_ptr<int64_t>());
  });
  return codes;
}

// x [rows, k] (float32) @ the int8 or int4 weight [n, k] (weight_matrix.h) -> float32 [rows, n].
torch::Tensor few_rows_quantized_linear(const torch::Tensor& x, const torch::Tensor& data, const torch::Tensor& scales,
                                        const torch::Tensor& offsets) {
  check_cpu(x, "x");
  const WeightMatrix m = weight_matrix(data, scales, offsets, "weight");
  TORCH_CHECK(m.quantized(), "weight must be int8 or int4 (uint8)");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == m.k, "shapes do not match");
  auto out = torch::empty({x.size(0), m.n}, x.options());
  quantized_product(x.data_ptr<float>(), x.size(0), m, out.data_ptr<float>());
  return out;
}

// Rows `rows` [m] (int64) of the weight [n, k] (weight_matrix.h), dequantised -> float32 [m, k].
torch::Tensor dequantized_rows(const torch::Tensor& data, const torch::Tensor& scales, const torch::Tensor& offsets,
                               const torch::Tensor& rows) {
  const WeightMatrix m = weight_matrix(data, scales, offsets, "weight");
  TORCH_CHECK(rows.device().is_cpu() && rows.scalar_type() == torch::kInt64 && rows.dim() == 1 && rows.is_contiguous(),
              "rows must be an int64 vector");
  auto out = torch::empty({rows.size(0), m.k}, torch::dtype(torch::kFloat32));
  for (int64_t i = 0; i < rows.size(0); ++i) {
    const int64_t row = rows.data_ptr<int64_t>()[i];
    TORCH_CHECK(row >= 0 && row < m.n, "row out of range");
    dequantize_row(m, row, out.data_ptr<float>() + i * m.k);
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("few_rows_linear", &few_rows_linear, "x @ weight.T (+ bias) for a few rows (float32 or bfloat16)");
  m.def("transformer_step", &transformer_step,
        "a Llama-style transformer over a few new tokens with its KV cache (see decoding.cpp)");
  m.def("sample_among_top_k", &sample_among_top_k, "a draw among each row's k best logits (see decoding.cpp)");
  m.def("local_frame", &local_frame, "codebooks 1..K-1 of a frame: the local decoder's loop (see decoding.cpp)");
  m.def("few_rows_quantized_linear", &few_rows_quantized_linear, "x @ weight.T for int8 / int4 weights");
  m.def("dequantized_rows", &dequantized_rows, "rows of an int8 / int4 weight as float32");
  m.def("use_int4_byte_products", &use_int4_byte_products,
        "int4 products on AVX-512 VNNI by byte-rounded inputs (True, the default) or 16-bit ones (to compare)");
}
