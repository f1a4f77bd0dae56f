#include "attention/reference.h"

#include <cmath>
#include <limits>

#include "attention/bf16.h"

namespace rainserve::attention {
namespace {

double At(const TensorView& x, int64_t b, int64_t n, int64_t h, int64_t d) {
  return LoadAsFloat(x.data, x.dtype, x.Offset(b, n, h) + d);
}

// Marks the keys query block `qb` may attend to (token level).
void AllowedKeys(const BlockTableView& blocks, const BlockMaskView& mask, int64_t b, int64_t h,
                 int64_t qb, std::vector<char>* allowed) {
  std::fill(allowed->begin(), allowed->end(), 0);
  const int64_t row = mask.Row(b, h, qb);
  for (int32_t c = 0; c < mask.counts[row]; ++c) {
    const int32_t kb = mask.indices[row * mask.k_blocks + c];
    for (int64_t j = blocks.starts[kb]; j < blocks.starts[kb + 1]; ++j) (*allowed)[j] = 1;
  }
}

std::vector<int64_t> BlockOfToken(const BlockTableView& blocks, int64_t tokens) {
  std::vector<int64_t> block_of(static_cast<size_t>(tokens));
  for (int64_t blk = 0; blk < blocks.num_blocks; ++blk) {
    for (int64_t n = blocks.starts[blk]; n < blocks.starts[blk + 1]; ++n) block_of[n] = blk;
  }
  return block_of;
}

float Round(float x, DType precision) {
  return precision == DType::kFloat32 ? x : HalfToFloat(FloatToHalf(x, precision), precision);
}

}  // namespace

void ReferenceAttention(const TensorView& q, const TensorView& k, const TensorView& v,
                        const BlockTableView& blocks, const BlockMaskView& mask, double scale,
                        std::vector<double>* out, std::vector<double>* lse) {
  const int64_t B = q.batch, N = q.tokens, H = q.heads, D = q.head_dim;
  out->assign(static_cast<size_t>(B * N * H * D), 0.0);
  if (lse) lse->assign(static_cast<size_t>(B * H * N), 0.0);

  const std::vector<int64_t> block_of = BlockOfToken(blocks, N);

  std::vector<double> scores(static_cast<size_t>(N));
  std::vector<char> allowed(static_cast<size_t>(N));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < N; ++i) {
        // Token-level mask of query i: keys whose block is kept for block(i).
        AllowedKeys(blocks, mask, b, h, block_of[i], &allowed);
        double max_score = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < N; ++j) {
          if (!allowed[j]) continue;
          double dot = 0.0;
          for (int64_t d = 0; d < D; ++d) dot += At(q, b, i, h, d) * At(k, b, j, h, d);
          scores[j] = dot * scale;
          max_score = std::max(max_score, scores[j]);
        }
        double denom = 0.0;
        for (int64_t j = 0; j < N; ++j) {
          if (allowed[j]) denom += std::exp(scores[j] - max_score);
        }
        double* o = out->data() + ((b * N + i) * H + h) * D;
        for (int64_t j = 0; j < N; ++j) {
          if (!allowed[j]) continue;
          const double p = std::exp(scores[j] - max_score) / denom;
          for (int64_t d = 0; d < D; ++d) o[d] += p * At(v, b, j, h, d);
        }
        if (lse) (*lse)[static_cast<size_t>((b * H + h) * N + i)] = max_score + std::log(denom);
      }
    }
  }
}

void NaiveAttention(const TensorView& q, const TensorView& k, const TensorView& v,
                    const BlockTableView& blocks, const BlockMaskView& mask, float scale,
                    DType precision, std::vector<float>* out, std::vector<float>* lse) {
  const int64_t B = q.batch, N = q.tokens, H = q.heads, D = q.head_dim;
  out->assign(static_cast<size_t>(B * N * H * D), 0.0f);
  if (lse) lse->assign(static_cast<size_t>(B * H * N), 0.0f);
  const std::vector<int64_t> block_of = BlockOfToken(blocks, N);
  std::vector<float> scores(static_cast<size_t>(N));
  std::vector<char> allowed(static_cast<size_t>(N));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < N; ++i) {
        AllowedKeys(blocks, mask, b, h, block_of[i], &allowed);
        float max_score = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < N; ++j) {
          if (!allowed[j]) continue;
          float dot = 0.0f;
          for (int64_t d = 0; d < D; ++d) {
            dot += static_cast<float>(At(q, b, i, h, d)) * static_cast<float>(At(k, b, j, h, d));
          }
          scores[j] = Round(dot * scale, precision);
          max_score = std::max(max_score, scores[j]);
        }
        float denom = 0.0f;
        for (int64_t j = 0; j < N; ++j) {
          if (allowed[j]) denom += std::exp(scores[j] - max_score);
        }
        std::vector<float> acc(static_cast<size_t>(D), 0.0f);
        for (int64_t j = 0; j < N; ++j) {
          if (!allowed[j]) continue;
          const float p = Round(std::exp(scores[j] - max_score) / denom, precision);
          for (int64_t d = 0; d < D; ++d) acc[d] += p * static_cast<float>(At(v, b, j, h, d));
        }
        float* o = out->data() + ((b * N + i) * H + h) * D;
        for (int64_t d = 0; d < D; ++d) o[d] = Round(acc[d], precision);
        if (lse) (*lse)[static_cast<size_t>((b * H + h) * N + i)] = max_score + std::log(denom);
      }
    }
  }
}

}  // namespace rainserve::attention
