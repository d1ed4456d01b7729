// Few-row products with int8 and int4 weights (weight_matrix.h) for decoding on x86 CPUs.
//
// At 4 bits two cores must turn some 40 billion weights per second into products to keep up with the memory, more
// than float arithmetic on the dequantised weights does on two cores. So the input rows are rounded once per product
// to integers, and the weights meet them in integer multiply-adds; the scales apply once per group in float32.
//
// - int4 on AVX-512 VNNI: each 64-column block of an input row is rounded to signed bytes with its own scale (at most
//   1/254 of the block's largest value away), and `vpdpbusd` multiplies the unsigned nibbles by them, 64 weights per
//   instruction, unwidened: one mask and one shift turn 64 bytes of weights into two registers of nibbles. The offsets
//   meet the rounded rows' group sums, so the product is exactly that of the dequantised weights with the rounded rows.
//   Each pass over the rounded rows reads four weight rows.
// - int8 weights, and int4 on AVX2: each group of an input row is rounded to 16-bit integers with its own scale (at
//   most 2^-16 of the group's largest value away, 256 times finer than bfloat16); `vpdpwssd` (AVX-512 VNNI, 32 weights
//   per instruction) where the CPU has it, else AVX2's `vpmaddwd`.
//
// Each block's integer sum is exact.
#include "weight_matrix.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

constexpr int64_t kBlock = 64;            // columns per packed block
constexpr int64_t kPrefetchBytes = 8192;  // how far ahead of its reads a product asks for its weights
constexpr int kMaxRows = 4;               // input rows that share one pass over the weights

// Input rows rounded to 16-bit integers, one scale per group of the weights' columns; `sums`: each group's float
// sum (for int4's offsets).
struct RoundedRows {
  std::vector<int16_t> values;  // [rows, k]
  std::vector<float> scales;    // [rows, groups]
  std::vector<float> sums;      // [rows, groups]
  int64_t k, groups;
};

RoundedRows round_rows(const float* x, int64_t rows, int64_t k, int64_t group) {
  const int64_t groups = k / group;
  RoundedRows out{std::vector<int16_t>(rows * k), std::vector<float>(rows * groups), std::vector<float>(rows * groups),
                  k, groups};
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      const float* xg = x + r * k + g * group;
      float largest = 0.0f, sum = 0.0f;
      for (int64_t i = 0; i < group; ++i) {
        largest = std::max(largest, std::fabs(xg[i]));
        sum += xg[i];
      }
      const float scale = largest / 32767.0f;
      const float inverse = largest > 0.0f ? 1.0f / scale : 0.0f;
      for (int64_t i = 0; i < group; ++i)
        out.values[r * k + g * group + i] = static_cast<int16_t>(std::lrintf(xg[i] * inverse));
      out.scales[r * groups + g] = scale;
      out.sums[r * groups + g] = sum;
    }
  }
  return out;
}

// Input rows rounded to signed bytes for int4 weights on AVX-512 VNNI, one scale per 64-column block, laid out as
// the weights' nibbles fall out of 64 bytes (two blocks, 128 columns): each 128-column chunk of a row holds columns
// 0..31 of its first block, 0..31 of its second, then 32..63 of the first and 32..63 of the second (a missing second
// block: zeros). `scales`: per chunk, 16 lanes (8 with the first block's scale, 8 with the second's), as the
// products' int32 lanes fall; `sums`: each weight group's sum of the rounded values (for the offsets: the product
// is then exactly the one of the dequantised weights with the rounded row, whose error scales with the weights, not
// with the weights minus their offsets).
struct ByteRows {
  std::vector<int8_t> values;  // [rows, chunks * 128]
  std::vector<float> scales;   // [rows, chunks * 16]
  std::vector<float> sums;     // [rows, groups]
  int64_t chunks, groups;
};

// One 64-column block `xb` rounded to bytes (to nearest, ties to even) into its places in `chunk`; returns its scale
// and adds the rounded values' sum times the scale to `sum`.
__attribute__((target("avx512f,avx512bw,avx512dq"))) inline float round_block_to_bytes(const float* xb, int8_t* chunk,
                                                                                     int64_t half, float& sum) {
  __m512 values[4];
  __m512 largest = _mm512_setzero_ps();
  for (int i = 0; i < 4; ++i) {
    values[i] = _mm512_loadu_ps(xb + 16 * i);
    largest = _mm512_max_ps(largest, _mm512_abs_ps(values[i]));
  }
  const float top = _mm512_reduce_max_ps(largest);
  const float scale = top / 127.0f;
  const __m512 inverse = _mm512_set1_ps(top > 0.0f ? 1.0f / scale : 0.0f);
  __m512i total = _mm512_setzero_si512();
  for (int i = 0; i < 4; ++i) {  // columns 16i..16i+15: 0..31 into the chunk's first half, 32..63 into its second
    const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(values[i], inverse));
    total = _mm512_add_epi32(total, q);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(chunk + (i < 2 ? 0 : 64) + 32 * half + 16 * (i % 2)),
                     _mm512_cvtepi32_epi8(q));
  }
  sum += scale * static_cast<float>(_mm512_reduce_add_epi32(total));
  return scale;
}

ByteRows round_rows_to_bytes(const float* x, int64_t rows, int64_t k, int64_t group) {
  const int64_t blocks = k / kBlock, chunks = (blocks + 1) / 2, groups = k / group;
  ByteRows out{std::vector<int8_t>(rows * chunks * 128), std::vector<float>(rows * chunks * 16),
               std::vector<float>(rows * groups), chunks, groups};
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t half = b % 2;
      const float scale = round_block_to_bytes(x + r * k + b * kBlock, out.values.data() + (r * chunks + b / 2) * 128,
                                               half, out.sums[r * groups + b * kBlock / group]);
      std::fill_n(out.scales.data() + (r * chunks + b / 2) * 16 + 8 * half, 8, scale);
    }
  }
  return out;
}

inline float half_to_float(at::Half h) { return _cvtsh_ss(h.x); }

// The int8 or int4 weights of one 64-column block as 16-bit integers, in column order: `low` columns 0..31, `high`
// 32..63 (AVX-512), or four quarters of 16 (AVX2).
template <WeightFormat F>
__attribute__((target("avx512f,avx512bw"))) inline void widen64(const uint8_t* w, __m512i& low, __m512i& high) {
  if (F == WeightFormat::kInt4) {
    const __m512i wide = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
    low = _mm512_and_si512(wide, _mm512_set1_epi16(15));
    high = _mm512_srli_epi16(wide, 4);
  } else {
    low = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
    high = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32)));
  }
}

template <WeightFormat F>
inline void widen64(const uint8_t* w, __m256i quarters[4]) {
  if (F == WeightFormat::kInt4) {
    const __m256i first = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
    const __m256i second = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 16)));
    const __m256i nibble = _mm256_set1_epi16(15);
    quarters[0] = _mm256_and_si256(first, nibble);
    quarters[1] = _mm256_and_si256(second, nibble);
    quarters[2] = _mm256_srli_epi16(first, 4);
    quarters[3] = _mm256_srli_epi16(second, 4);
  } else {
    for (int q = 0; q < 4; ++q)
      quarters[q] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 16 * q)));
  }
}

// The float32 sum of an AVX2 vector / of the block-scaled integer sums.
inline float sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// Row `o` of m times R rounded input rows (from `first`): out[r] = sum over groups of weight scale x input scale x
// the group's integer dot product (exact in int32: at most 128 / 32 multiply-adds of two products per lane).
template <int R, WeightFormat F>
__attribute__((target("avx512f,avx512bw,avx512vnni,avx512dq,f16c,fma"))) void dot_rows_avx512(
    const WeightMatrix& m, int64_t o, const RoundedRows& x, int64_t first, float* out) {
  const int64_t k = m.k, per_group = m.group / kBlock, groups = m.groups();
  const uint8_t* w = m.data + o * m.row_bytes();
  const int64_t block_bytes = F == WeightFormat::kInt4 ? 32 : 64;
  const int16_t* xr[R];
  const float* xs[R];
  __m512 total[R];
  for (int r = 0; r < R; ++r) {
    xr[r] = x.values.data() + (first + r) * k;
    xs[r] = x.scales.data() + (first + r) * groups;
    total[r] = _mm512_setzero_ps();
  }
  for (int64_t g = 0; g < groups; ++g) {
    __m512i acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_si512();
    for (int64_t b = g * per_group; b < (g + 1) * per_group; ++b) {
      const uint8_t* wb = w + b * block_bytes;
      if (block_bytes == 64 || b % 2 == 0)  // once per cache line
        _mm_prefetch(reinterpret_cast<const char*>(wb) + kPrefetchBytes, _MM_HINT_T0);
      __m512i low, high;
      widen64<F>(wb, low, high);
      for (int r = 0; r < R; ++r) {
        acc[r] = _mm512_dpwssd_epi32(acc[r], low, _mm512_loadu_si512(xr[r] + b * kBlock));
        acc[r] = _mm512_dpwssd_epi32(acc[r], high, _mm512_loadu_si512(xr[r] + b * kBlock + 32));
      }
    }
    const float weight_scale = half_to_float(m.scales[o * groups + g]);
    for (int r = 0; r < R; ++r)
      total[r] = _mm512_fmadd_ps(_mm512_set1_ps(weight_scale * xs[r][g]), _mm512_cvtepi32_ps(acc[r]), total[r]);
  }
  for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_ps(total[r]);
}

// The nibbles of one 128-column chunk of int4 weights (64 bytes, two blocks) as bytes: `low` the low nibbles
// (columns 0..31 of each block), `high` the high ones (32..63).
struct ChunkNibbles {
  __m512i low, high;
};

__attribute__((target("avx512f,avx512bw"))) inline ChunkNibbles nibbles_of(__m512i bytes) {
  const __m512i nibble = _mm512_set1_epi8(15);
  return {_mm512_and_si512(bytes, nibble), _mm512_and_si512(_mm512_srli_epi16(bytes, 4), nibble)};
}

// Chunk c of O weight rows times R byte-rounded rows: each (weight row, input row)'s int32 lanes (`vpdpbusd`:
// unsigned nibbles times signed bytes, four products per lane, at most 2 x 4 x 15 x 127 in a lane) scaled by the
// input's per-block scales and the weights' per-lane scales, added to total[j][r].
template <int R, int O>
__attribute__((target("avx512f,avx512bw,avx512vnni,avx512dq,fma"))) inline void chunk_times_bytes(
    const ChunkNibbles w[O], const __m512 weight_scales[O], const int8_t* const xv[R], const float* const xs[R],
    int64_t c, __m512 total[O][R]) {
  for (int r = 0; r < R; ++r) {
    const __m512i low = _mm512_loadu_si512(xv[r] + c * 128), high = _mm512_loadu_si512(xv[r] + c * 128 + 64);
    const __m512 input_scales = _mm512_loadu_ps(xs[r] + c * 16);
    for (int j = 0; j < O; ++j) {
      const __m512i acc = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w[j].low, low), w[j].high,
                                              high);
      total[j][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(input_scales, weight_scales[j]),
                                    total[j][r]);
    }
  }
}

// Float16 values [first, first + 16) of `values` (those below `count`; zeros past it) as float32 lanes.
__attribute__((target("avx512f,avx512bw,avx512vl,f16c"))) inline __m512 sixteen_halves(const at::Half* values,
                                                                                     int64_t first, int64_t count) {
  const __mmask16 mask = count - first >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (count - first)) - 1);
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, values + first));
}

// The offsets of weight rows o..o+O-1 times the R rows' group sums, into total[j][r]'s lanes.
template <int R, int O>
__attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma"))) inline void add_offsets(
    const WeightMatrix& m, int64_t o, const ByteRows& x, int64_t first, __m512 total[O][R]) {
  const int64_t groups = m.groups();
  for (int64_t g = 0; g < groups; g += 16) {
    const __mmask16 mask = groups - g >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (groups - g)) - 1);
    for (int r = 0; r < R; ++r) {
      const __m512 sums = _mm512_maskz_loadu_ps(mask, x.sums.data() + (first + r) * groups + g);
      for (int j = 0; j < O; ++j)
        total[j][r] = _mm512_fmadd_ps(sixteen_halves(m.offsets + (o + j) * groups, g, groups), sums, total[j][r]);
    }
  }
}

// Weight rows o..o+O-1 of int4 weights times R byte-rounded rows (from `first`) into out[j * R + r]: the groups'
// integer products scaled, plus the offsets times the rows' group sums, in the same 16 float lanes, summed at the end.
template <int R, int O>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,f16c,fma"))) void dot_rows_int4_bytes(
    const WeightMatrix& m, int64_t o, const ByteRows& x, int64_t first, float* out) {
  const int64_t groups = m.groups(), blocks = m.k / kBlock;
  const uint8_t* w[O];
  const at::Half* weight_scales[O];
  for (int j = 0; j < O; ++j) {
    w[j] = m.data + (o + j) * m.row_bytes();
    weight_scales[j] = m.scales + (o + j) * groups;
  }
  const int8_t* xv[R];
  const float* xs[R];
  __m512 total[O][R];
  for (int r = 0; r < R; ++r) {
    xv[r] = x.values.data() + (first + r) * x.chunks * 128;
    xs[r] = x.scales.data() + (first + r) * x.chunks * 16;
    for (int j = 0; j < O; ++j) total[j][r] = _mm512_setzero_ps();
  }
  add_offsets<R, O>(m, o, x, first, total);
  ChunkNibbles nibbles[O];
  __m512 scale[O];
  if (m.group % 128 == 0) {  // whole chunks per group: one weight scale for all lanes
    const int64_t per_group = m.group / 128;
    for (int64_t first_group = 0; first_group < groups; first_group += 16) {
      alignas(64) float scales[O][16];
      for (int j = 0; j < O; ++j) _mm512_store_ps(scales[j], sixteen_halves(weight_scales[j], first_group, groups));
      for (int64_t g = first_group; g < std::min(first_group + 16, groups); ++g) {
        for (int j = 0; j < O; ++j) scale[j] = _mm512_set1_ps(scales[j][g - first_group]);
        for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
          for (int j = 0; j < O; ++j) {
            _mm_prefetch(reinterpret_cast<const char*>(w[j] + c * 64) + kPrefetchBytes, _MM_HINT_T0);
            nibbles[j] = nibbles_of(_mm512_loadu_si512(w[j] + c * 64));
          }
          chunk_times_bytes<R, O>(nibbles, scale, xv, xs, c, total);
        }
      }
    }
  } else {  // a chunk's two blocks may lie in two groups: lanes 0-7 hold the first block, 8-15 the second (if any)
    for (int64_t c = 0; c < x.chunks; ++c) {
      const bool pair = 2 * c + 1 < blocks;
      for (int j = 0; j < O; ++j) {
        _mm_prefetch(reinterpret_cast<const char*>(w[j] + c * 64) + kPrefetchBytes, _MM_HINT_T0);
        const uint8_t* bytes = w[j] + c * 64;
        nibbles[j] = nibbles_of(pair ? _mm512_loadu_si512(bytes) : _mm512_maskz_loadu_epi8(0xFFFFFFFFull, bytes));
        const float first_scale = half_to_float(weight_scales[j][2 * c * kBlock / m.group]);
        const float second_scale = pair ? half_to_float(weight_scales[j][(2 * c + 1) * kBlock / m.group]) : 0.0f;
        scale[j] = _mm512_insertf32x8(_mm512_set1_ps(first_scale), _mm256_set1_ps(second_scale), 1);
      }
      chunk_times_bytes<R, O>(nibbles, scale, xv, xs, c, total);
    }
  }
  for (int j = 0; j < O; ++j)
    for (int r = 0; r < R; ++r) out[j * R + r] = _mm512_reduce_add_ps(total[j][r]);
}

template <int R, WeightFormat F>
void dot_rows_avx2(const WeightMatrix& m, int64_t o, const RoundedRows& x, int64_t first, float* out) {
  const int64_t k = m.k, per_group = m.group / kBlock, groups = m.groups();
  const uint8_t* w = m.data + o * m.row_bytes();
  const int64_t block_bytes = F == WeightFormat::kInt4 ? 32 : 64;
  const int16_t* xr[R];
  const float* xs[R];
  __m256 total[R];
  for (int r = 0; r < R; ++r) {
    xr[r] = x.values.data() + (first + r) * k;
    xs[r] = x.scales.data() + (first + r) * groups;
    total[r] = _mm256_setzero_ps();
  }
  for (int64_t g = 0; g < groups; ++g) {
    __m256i acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_si256();
    for (int64_t b = g * per_group; b < (g + 1) * per_group; ++b) {
      const uint8_t* wb = w + b * block_bytes;
      if (block_bytes == 64 || b % 2 == 0)  // once per cache line
        _mm_prefetch(reinterpret_cast<const char*>(wb) + kPrefetchBytes, _MM_HINT_T0);
      __m256i quarters[4];
      widen64<F>(wb, quarters);
      for (int r = 0; r < R; ++r)
        for (int q = 0; q < 4; ++q) {
          const auto* xq = reinterpret_cast<const __m256i*>(xr[r] + b * kBlock + 16 * q);
          acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(quarters[q], _mm256_loadu_si256(xq)));
        }
    }
    const float weight_scale = half_to_float(m.scales[o * groups + g]);
    for (int r = 0; r < R; ++r)
      total[r] = _mm256_fmadd_ps(_mm256_set1_ps(weight_scale * xs[r][g]), _mm256_cvtepi32_ps(acc[r]), total[r]);
  }
  for (int r = 0; r < R; ++r) out[r] = sum8(total[r]);
}

// sum over g of offsets[g] (float16) x sums[g]: int4's offsets times the input's group sums.
float offset_dot(const at::Half* offsets, const float* sums, int64_t groups) {
  __m256 acc = _mm256_setzero_ps();
  int64_t g = 0;
  for (; g + 8 <= groups; g += 8) {
    const __m256 values = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(offsets + g)));
    acc = _mm256_fmadd_ps(values, _mm256_loadu_ps(sums + g), acc);
  }
  float total = sum8(acc);
  for (; g < groups; ++g) total += half_to_float(offsets[g]) * sums[g];
  return total;
}

// Whether to take the AVX-512 VNNI products: where the CPU has them, unless HEARTMULA_NATIVE_AVX512=0 (the AVX2
// products on the same machine, for tests).
bool has_avx512_vnni() {
  static const bool supported = [] {
    const char* setting = std::getenv("HEARTMULA_NATIVE_AVX512");
    const bool allowed = setting == nullptr || std::string(setting) != "0";
    return allowed && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni") &&
           __builtin_cpu_supports("avx512dq");
  }();
  return supported;
}

template <int R, WeightFormat F>
void dot_rows(const WeightMatrix& m, int64_t o, const RoundedRows& x, int64_t first, float* out) {
  if (has_avx512_vnni())
    dot_rows_avx512<R, F>(m, o, x, first, out);
  else
    dot_rows_avx2<R, F>(m, o, x, first, out);
  if (F == WeightFormat::kInt4) {
    const int64_t groups = m.groups();
    for (int r = 0; r < R; ++r) out[r] += offset_dot(m.offsets + o * groups, x.sums.data() + (first + r) * groups,
                                                      groups);
  }
}

// Rows first..first+count-1 (count <= kMaxRows) of the output for weight row o.
template <WeightFormat F>
void dot_some_rows(const WeightMatrix& m, int64_t o, const RoundedRows& x, int64_t first, int64_t count,
                   float* sums) {
  switch (count) {
    case 1: dot_rows<1, F>(m, o, x, first, sums); break;
    case 2: dot_rows<2, F>(m, o, x, first, sums); break;
    case 3: dot_rows<3, F>(m, o, x, first, sums); break;
    default: dot_rows<4, F>(m, o, x, first, sums);
  }
}

std::atomic<bool> int4_by_bytes{true};  // see use_int4_byte_products

// Weight rows o..o+O-1 times input rows first..first+count-1 (count <= kMaxRows) into out[j * count + r].
template <int O>
void int4_rows_by_bytes(const WeightMatrix& m, int64_t o, const ByteRows& x, int64_t first, int64_t count,
                        float* out) {
  switch (count) {
    case 1: return dot_rows_int4_bytes<1, O>(m, o, x, first, out);
    case 2: return dot_rows_int4_bytes<2, O>(m, o, x, first, out);
    case 3: return dot_rows_int4_bytes<3, O>(m, o, x, first, out);
    default: return dot_rows_int4_bytes<4, O>(m, o, x, first, out);
  }
}

// out[rows, n] = x @ m.T for int4 weights on AVX-512 VNNI: four weight rows per pass over the rounded input rows
// (then two, then one at the end of a thread's range).
void int4_product_by_bytes(const float* x, int64_t rows, const WeightMatrix& m, float* out) {
  const ByteRows rounded = round_rows_to_bytes(x, rows, m.k, m.group);
  at::parallel_for(0, m.n, 16, [&](int64_t begin, int64_t end) {
    float sums[4 * kMaxRows];
    for (int64_t o = begin; o < end;) {
      const int together = o + 4 <= end ? 4 : o + 2 <= end ? 2 : 1;
      for (int64_t first = 0; first < rows; first += kMaxRows) {
        const int64_t count = std::min<int64_t>(kMaxRows, rows - first);
        if (together == 4)
          int4_rows_by_bytes<4>(m, o, rounded, first, count, sums);
        else if (together == 2)
          int4_rows_by_bytes<2>(m, o, rounded, first, count, sums);
        else
          int4_rows_by_bytes<1>(m, o, rounded, first, count, sums);
        for (int j = 0; j < together; ++j)
          for (int64_t r = 0; r < count; ++r) out[(first + r) * m.n + o + j] = sums[j * count + r];
      }
      o += together;
    }
  });
}

template <WeightFormat F>
void product_of(const float* x, int64_t rows, const WeightMatrix& m, float* out) {
  if (F == WeightFormat::kInt4 && int4_by_bytes && has_avx512_vnni())
    return int4_product_by_bytes(x, rows, m, out);
  const RoundedRows rounded = round_rows(x, rows, m.k, m.group);
  at::parallel_for(0, m.n, 16, [&](int64_t begin, int64_t end) {
    float sums[kMaxRows];
    for (int64_t o = begin; o < end; ++o) {
      for (int64_t first = 0; first < rows; first += kMaxRows) {
        const int64_t count = std::min<int64_t>(kMaxRows, rows - first);
        dot_some_rows<F>(m, o, rounded, first, count, sums);
        for (int64_t r = 0; r < count; ++r) out[(first + r) * m.n + o] = sums[r];
      }
    }
  });
}

}  // namespace

void use_int4_byte_products(bool on) { int4_by_bytes = on; }

void quantized_product(const float* x, int64_t rows, const WeightMatrix& m, float* out) {
  if (m.format == WeightFormat::kInt4)
    product_of<WeightFormat::kInt4>(x, rows, m, out);
  else
    product_of<WeightFormat::kInt8>(x, rows, m, out);
}

void dequantize_row(const WeightMatrix& m, int64_t row, float* out) {
  const uint8_t* w = m.data + row * m.row_bytes();
  if (m.format == WeightFormat::kFloat32) {
    std::copy_n(reinterpret_cast<const float*>(w), m.k, out);
    return;
  }
  if (m.format == WeightFormat::kBFloat16) {
    const auto* values = reinterpret_cast<const c10::BFloat16*>(w);
    for (int64_t i = 0; i < m.k; ++i) out[i] = static_cast<float>(values[i]);
    return;
  }
  const int64_t groups = m.groups();
  for (int64_t i = 0; i < m.k; ++i) {
    const int64_t g = i / m.group;
    const float scale = static_cast<float>(m.scales[row * groups + g]);
    if (m.format == WeightFormat::kInt8) {
      out[i] = scale * static_cast<float>(static_cast<int8_t>(w[i]));
    } else {
      const int64_t block = i / kBlock, t = i % kBlock;
      const uint8_t byte = w[block * 32 + t % 32];
      const int q = t < 32 ? (byte & 15) : (byte >> 4);
      out[i] = scale * static_cast<float>(q) + static_cast<float>(m.offsets[row * groups + g]);
    }
  }
}

WeightMatrix weight_matrix(const torch::Tensor& data, const torch::Tensor& scales, const torch::Tensor& offsets,
                           const char* what) {
  TORCH_CHECK(data.device().is_cpu() && data.dim() == 2 && data.is_contiguous(), what,
              " must be a contiguous 2-d CPU tensor");
  WeightMatrix m;
  m.data = static_cast<const uint8_t*>(data.data_ptr());
  m.n = data.size(0);
  const auto type = data.scalar_type();
  if (type == torch::kFloat32 || type == torch::kBFloat16) {
    TORCH_CHECK(scales.numel() == 0 && offsets.numel() == 0, what, ": float weights take no scales");
    m.format = type == torch::kFloat32 ? WeightFormat::kFloat32 : WeightFormat::kBFloat16;
    m.k = data.size(1);
    return m;
  }
  TORCH_CHECK(type == torch::kInt8 || type == torch::kUInt8, what, " must be float32, bfloat16, int8 or uint8 (int4)");
  m.format = type == torch::kInt8 ? WeightFormat::kInt8 : WeightFormat::kInt4;
  m.k = type == torch::kInt8 ? data.size(1) : 2 * data.size(1);
  const bool int4 = m.format == WeightFormat::kInt4;
  TORCH_CHECK(scales.device().is_cpu() && scales.scalar_type() == torch::kFloat16 && scales.dim() == 2 &&
                  scales.is_contiguous() && scales.size(0) == m.n && scales.size(1) > 0 && m.k % scales.size(1) == 0,
              what, ": scales must be a contiguous float16 [rows, groups] CPU tensor");
  m.group = m.k / scales.size(1);
  TORCH_CHECK(m.group % kBlock == 0, what, ": a group must be a multiple of 64 columns");
  m.scales = scales.data_ptr<at::Half>();
  if (int4) {
    TORCH_CHECK(offsets.device().is_cpu() && offsets.scalar_type() == torch::kFloat16 && offsets.is_contiguous() &&
                    offsets.sizes() == scales.sizes(), what, ": int4 offsets must be float16, shaped as the scales");
    m.offsets = offsets.data_ptr<at::Half>();
  } else {
    TORCH_CHECK(offsets.numel() == 0, what, ": int8 weights take no offsets");
  }
  return m;
}
