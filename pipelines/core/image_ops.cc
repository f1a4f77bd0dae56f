// Pillow-exact and ATen-exact resampling and transformers' centre crops
// (image_ops.h).
//
// The resampling follows libImaging's Resample.c step by step, because the
// reference's bytes depend on every rounding in it: the filter weights are
// computed in double with the same expressions, normalised to sum 1, turned
// into integers with 22 fractional bits (rounded half away from zero), and
// each output value is (2^21 + sum(pixel * weight)) >> 22 clipped to [0, 255].
// ATen's uint8 antialiased kernels (UpSampleKernel.cpp and its AVX2 twin,
// which compute the same integers) are Pillow's algorithm with two changes:
// the bicubic filter's outer piece is written ((a x - 5a) x + 8a) x - 4a, and
// the weights are int16 with P fractional bits, P the largest value (at most
// 22) for which the axis's largest weight still rounds below 2^15 at P + 1
// bits; each output is (2^(P-1) + sum) >> P, clipped.
// This file is compiled without floating-point contraction (CMakeLists.txt)
// so that no fused multiply-add changes a weight.
#include "pipelines/core/image_ops.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace rainserve {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow's PRECISION_BITS
constexpr double kPi = 3.14159265358979323846;  // M_PI

// The filters, as Pillow evaluates them (same expressions, same order).
double BoxFilter(double x) { return x > -0.5 && x <= 0.5 ? 1.0 : 0.0; }

double BilinearFilter(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

double HammingFilter(double x) {
  if (x < 0.0) x = -x;
  if (x == 0.0) return 1.0;
  if (x >= 1.0) return 0.0;
  x = x * kPi;
  // Pillow's window constants are float literals.
  return std::sin(x) / x * (0.54f + 0.46f * std::cos(x));
}

double BicubicFilter(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// ATen's HelperInterpCubic::aa_filter (a = -0.5, as Pillow, but another
// expression for 1 <= |x| < 2).
double AtenBicubicFilter(double x) {
  constexpr double a = -0.5;
  x = std::abs(x);
  if (x < 1.0) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2.0) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
  return 0.0;
}

double Sinc(double x) {
  if (x == 0.0) return 1.0;
  x = x * kPi;
  return std::sin(x) / x;
}

double LanczosFilter(double x) {
  return -3.0 <= x && x < 3.0 ? Sinc(x) * Sinc(x / 3) : 0.0;
}

struct Filter {
  double (*weight)(double);
  double support;
};

Filter FilterFor(ResampleFilter f) {
  switch (f) {
    case ResampleFilter::kBox: return {BoxFilter, 0.5};
    case ResampleFilter::kBilinear: return {BilinearFilter, 1.0};
    case ResampleFilter::kHamming: return {HammingFilter, 1.0};
    case ResampleFilter::kBicubic: return {BicubicFilter, 2.0};
    case ResampleFilter::kLanczos: return {LanczosFilter, 3.0};
  }
  return {BicubicFilter, 2.0};
}

// How the normalised weights become integers: Pillow's fixed 22 fractional
// bits, or ATen's int16 weights with a per-axis precision.
enum class FixedPoint { kPillow, kAten };

// One axis's resampling weights: output i reads inputs [first[i], first[i] +
// count[i]) with weights[i * ksize + j], in fixed point with `precision`
// fractional bits.
struct AxisWeights {
  int64_t ksize = 0;
  int precision = kPrecisionBits;
  std::vector<int64_t> first, count;
  std::vector<int32_t> weights;
};

// ATen's _compute_index_ranges_int16_weights: the most fractional bits
// (at most 22) that keep `max_weight` below 2^15 one bit further up.
int AtenPrecision(double max_weight) {
  int precision = 0;
  for (; precision < 22; ++precision) {
    const int next = static_cast<int>(0.5 + max_weight * (1 << (precision + 1)));
    if (next >= (1 << 15)) break;
  }
  return precision;
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc (ATen's
// _compute_indices_min_size_weights_aa computes the same doubles) for the
// whole input range [0, in_size) mapped onto out_size outputs.
AxisWeights ComputeAxisWeights(int64_t in_size, int64_t out_size, const Filter& filter,
                               FixedPoint fixed) {
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  const double filter_scale = std::max(scale, 1.0);  // widen the filter when reducing
  const double support = filter.support * filter_scale;
  AxisWeights w;
  w.ksize = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  w.first.resize(out_size);
  w.count.resize(out_size);
  std::vector<double> k(out_size * w.ksize, 0.0);
  double max_weight = 0.0;
  for (int64_t xx = 0; xx < out_size; ++xx) {
    const double center = (static_cast<double>(xx) + 0.5) * scale;
    const double ss = 1.0 / filter_scale;
    // Truncation toward zero, as C's (int) cast.
    const int64_t xmin = std::max<int64_t>(static_cast<int64_t>(center - support + 0.5), 0);
    const int64_t xmax = std::min<int64_t>(static_cast<int64_t>(center + support + 0.5), in_size);
    const int64_t n = std::clamp<int64_t>(xmax - xmin, 0, w.ksize);
    double* kx = &k[xx * w.ksize];
    double sum = 0.0;
    for (int64_t x = 0; x < n; ++x) {
      kx[x] = filter.weight((static_cast<double>(x + xmin) - center + 0.5) * ss);
      sum += kx[x];
    }
    for (int64_t x = 0; x < n && sum != 0.0; ++x) {
      kx[x] /= sum;
      max_weight = std::max(max_weight, kx[x]);
    }
    w.first[xx] = xmin;
    w.count[xx] = n;
  }
  w.precision = fixed == FixedPoint::kPillow ? kPrecisionBits : AtenPrecision(max_weight);
  w.weights.resize(k.size());
  for (size_t i = 0; i < k.size(); ++i) {
    const double v = k[i] * (1 << w.precision);
    w.weights[i] = static_cast<int32_t>(v < 0 ? -0.5 + v : 0.5 + v);
  }
  return w;
}

uint8_t Clip8(int64_t accumulator, int precision) {
  return static_cast<uint8_t>(std::clamp<int64_t>(accumulator >> precision, 0, 255));
}

// Resamples along x: rows [row_first, row_first + rows) of `in` (in_width
// wide) into `out` (out_width wide, `rows` rows). rgb: [rows][width][3].
void ResampleRows(const uint8_t* in, int64_t in_width, int64_t row_first, int64_t rows,
                  const AxisWeights& w, int64_t out_width, uint8_t* out) {
  for (int64_t y = 0; y < rows; ++y) {
    const uint8_t* row = in + (row_first + y) * in_width * 3;
    for (int64_t xx = 0; xx < out_width; ++xx) {
      const int32_t* k = &w.weights[xx * w.ksize];
      const int64_t half = int64_t{1} << (w.precision - 1);
      int64_t acc[3] = {half, half, half};
      for (int64_t x = 0; x < w.count[xx]; ++x) {
        const uint8_t* px = row + (w.first[xx] + x) * 3;
        for (int c = 0; c < 3; ++c) acc[c] += int64_t{px[c]} * k[x];
      }
      for (int c = 0; c < 3; ++c) out[(y * out_width + xx) * 3 + c] = Clip8(acc[c], w.precision);
    }
  }
}

// Resamples along y: output row yy reads rows [first - row_offset, ...) of
// `in` (`width` wide). out: [out_height][width][3].
void ResampleColumns(const uint8_t* in, int64_t width, int64_t row_offset, const AxisWeights& w,
                     int64_t out_height, uint8_t* out) {
  for (int64_t yy = 0; yy < out_height; ++yy) {
    const int32_t* k = &w.weights[yy * w.ksize];
    const int64_t first = w.first[yy] - row_offset;
    for (int64_t x = 0; x < width * 3; ++x) {
      int64_t acc = int64_t{1} << (w.precision - 1);
      for (int64_t y = 0; y < w.count[yy]; ++y) acc += int64_t{in[(first + y) * width * 3 + x]} * k[y];
      out[yy * width * 3 + x] = Clip8(acc, w.precision);
    }
  }
}

// The input's sides are bounded like the output's: the horizontal pass keeps
// out_width x (input rows) pixels, as Pillow's does.
Status CheckImage(const InputImage& image) {
  if (image.width < 1 || image.height < 1 || image.width > kMaxImageSide ||
      image.height > kMaxImageSide ||
      static_cast<int64_t>(image.rgb.size()) != image.width * image.height * 3) {
    return InvalidArgumentError("image: expected width x height x 3 bytes with width and height in [1, " +
                                std::to_string(kMaxImageSide) + "], got " + std::to_string(image.width) +
                                "x" + std::to_string(image.height) + " with " +
                                std::to_string(image.rgb.size()) + " bytes");
  }
  return OkStatus();
}

Status CheckTargetSize(int64_t width, int64_t height) {
  for (const auto& [name, value] : {std::pair<const char*, int64_t>{"width", width}, {"height", height}}) {
    if (value < 1 || value > kMaxImageSide) {
      return InvalidArgumentError(std::string(name) + " must be in [1, " + std::to_string(kMaxImageSide) +
                                  "], got " + std::to_string(value));
    }
  }
  return OkStatus();
}

}  // namespace

StatusOr<ResampleFilter> ResampleFilterFromPillow(int64_t value, const char* field) {
  switch (value) {
    case 1: return ResampleFilter::kLanczos;
    case 2: return ResampleFilter::kBilinear;
    case 3: return ResampleFilter::kBicubic;
    case 4: return ResampleFilter::kBox;
    case 5: return ResampleFilter::kHamming;
    case 0:
      return UnimplementedError(std::string(field) + ": NEAREST (0) resampling is not supported; "
                                "use 1 (LANCZOS), 2 (BILINEAR), 3 (BICUBIC), 4 (BOX) or 5 (HAMMING)");
    default:
      return InvalidArgumentError(std::string(field) + ": expected a Pillow resampling filter in [1, 5], got " +
                                  std::to_string(value));
  }
}

const char* ResampleFilterName(ResampleFilter filter) {
  switch (filter) {
    case ResampleFilter::kLanczos: return "lanczos";
    case ResampleFilter::kBilinear: return "bilinear";
    case ResampleFilter::kBicubic: return "bicubic";
    case ResampleFilter::kBox: return "box";
    case ResampleFilter::kHamming: return "hamming";
  }
  return "unknown";
}

namespace {

// Both resamplers: the vertical weights first, for the rows the horizontal
// pass has to produce (Pillow's order; ATen resamples every row, which gives
// the same bytes); each pass runs only when its size changes.
StatusOr<InputImage> Resample(const InputImage& image, int64_t width, int64_t height,
                              const Filter& f, FixedPoint fixed) {
  RAINSERVE_RETURN_IF_ERROR(CheckImage(image));
  RAINSERVE_RETURN_IF_ERROR(CheckTargetSize(width, height));
  const AxisWeights vertical = ComputeAxisWeights(image.height, height, f, fixed);
  const int64_t row_first = vertical.first.front();
  const int64_t row_last = vertical.first.back() + vertical.count.back();
  const bool horizontal_pass = width != image.width;
  const bool vertical_pass = height != image.height;

  InputImage current = image;  // the rows of the image the vertical pass reads
  int64_t row_offset = 0;       // the source row of current's first row
  if (horizontal_pass) {
    const AxisWeights horizontal = ComputeAxisWeights(image.width, width, f, fixed);
    InputImage rows;
    rows.width = width;
    rows.height = row_last - row_first;
    rows.rgb.resize(rows.width * rows.height * 3);
    ResampleRows(image.rgb.data(), image.width, row_first, rows.height, horizontal, width,
                 rows.rgb.data());
    current = std::move(rows);
    row_offset = row_first;
  }
  if (!vertical_pass) return current;
  InputImage out;
  out.width = current.width;
  out.height = height;
  out.rgb.resize(out.width * out.height * 3);
  ResampleColumns(current.rgb.data(), current.width, row_offset, vertical, height, out.rgb.data());
  return out;
}

}  // namespace

StatusOr<InputImage> ResizeImage(const InputImage& image, int64_t width, int64_t height,
                                 ResampleFilter filter) {
  return Resample(image, width, height, FilterFor(filter), FixedPoint::kPillow);
}

StatusOr<InputImage> ResizeImageAten(const InputImage& image, int64_t width, int64_t height,
                                     AtenInterpolation mode) {
  const Filter f = mode == AtenInterpolation::kBicubic ? Filter{AtenBicubicFilter, 2.0}
                                                       : Filter{BilinearFilter, 1.0};
  return Resample(image, width, height, f, FixedPoint::kAten);
}

StatusOr<InputImage> CenterCrop(const InputImage& image, int64_t width, int64_t height,
                                PadOffset pad) {
  RAINSERVE_RETURN_IF_ERROR(CheckImage(image));
  RAINSERVE_RETURN_IF_ERROR(CheckTargetSize(width, height));
  // Per axis: where the crop reads from (src) and writes to (dst), and how
  // many pixels it copies. Python's // floors; the difference is >= 0 here.
  struct Span {
    int64_t src, dst, n;
  };
  const int64_t round_up = pad == PadOffset::kCeil ? 1 : 0;
  auto span = [round_up](int64_t size, int64_t crop) {
    if (crop <= size) return Span{(size - crop) / 2, 0, crop};
    return Span{0, (crop - size + round_up) / 2, size};
  };
  const Span sx = span(image.width, width), sy = span(image.height, height);
  InputImage out;
  out.width = width;
  out.height = height;
  out.rgb.assign(width * height * 3, 0);
  for (int64_t y = 0; y < sy.n; ++y) {
    const uint8_t* src = &image.rgb[((sy.src + y) * image.width + sx.src) * 3];
    std::copy(src, src + sx.n * 3, &out.rgb[((sy.dst + y) * width + sx.dst) * 3]);
  }
  return out;
}

}  // namespace rainserve
