// Pillow-exact resampling and transformers' centre crop (image_ops.h).
//
// The resampling follows libImaging's Resample.c step by step, because the
// reference's bytes depend on every rounding in it: the filter weights are
// computed in double with the same expressions, normalised to sum 1, turned
// into integers with 22 fractional bits (rounded half away from zero), and
// each output value is (2^21 + sum(pixel * weight)) >> 22 clipped to [0, 255].
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

// One axis's resampling weights: output i reads inputs [first[i], first[i] +
// count[i]) with weights[i * ksize + j], in fixed point.
struct AxisWeights {
  int64_t ksize = 0;
  std::vector<int64_t> first, count;
  std::vector<int32_t> weights;
};

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for the whole input
// range [0, in_size) mapped onto out_size outputs.
AxisWeights ComputeAxisWeights(int64_t in_size, int64_t out_size, const Filter& filter) {
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  const double filter_scale = std::max(scale, 1.0);  // widen the filter when reducing
  const double support = filter.support * filter_scale;
  AxisWeights w;
  w.ksize = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  w.first.resize(out_size);
  w.count.resize(out_size);
  w.weights.assign(out_size * w.ksize, 0);
  std::vector<double> k(w.ksize);
  for (int64_t xx = 0; xx < out_size; ++xx) {
    const double center = (static_cast<double>(xx) + 0.5) * scale;
    const double ss = 1.0 / filter_scale;
    // Truncation toward zero, as C's (int) cast.
    const int64_t xmin = std::max<int64_t>(static_cast<int64_t>(center - support + 0.5), 0);
    const int64_t xmax = std::min<int64_t>(static_cast<int64_t>(center + support + 0.5), in_size);
    const int64_t n = xmax - xmin;
    double sum = 0.0;
    for (int64_t x = 0; x < n; ++x) {
      k[x] = filter.weight((static_cast<double>(x + xmin) - center + 0.5) * ss);
      sum += k[x];
    }
    for (int64_t x = 0; x < n; ++x) {
      if (sum != 0.0) k[x] /= sum;
      const double fixed = k[x] * (1 << kPrecisionBits);
      w.weights[xx * w.ksize + x] = static_cast<int32_t>(k[x] < 0 ? -0.5 + fixed : 0.5 + fixed);
    }
    w.first[xx] = xmin;
    w.count[xx] = n;
  }
  return w;
}

uint8_t Clip8(int64_t accumulator) {
  return static_cast<uint8_t>(std::clamp<int64_t>(accumulator >> kPrecisionBits, 0, 255));
}

// Resamples along x: rows [row_first, row_first + rows) of `in` (in_width
// wide) into `out` (out_width wide, `rows` rows). rgb: [rows][width][3].
void ResampleRows(const uint8_t* in, int64_t in_width, int64_t row_first, int64_t rows,
                  const AxisWeights& w, int64_t out_width, uint8_t* out) {
  for (int64_t y = 0; y < rows; ++y) {
    const uint8_t* row = in + (row_first + y) * in_width * 3;
    for (int64_t xx = 0; xx < out_width; ++xx) {
      const int32_t* k = &w.weights[xx * w.ksize];
      int64_t acc[3] = {1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1),
                        1 << (kPrecisionBits - 1)};
      for (int64_t x = 0; x < w.count[xx]; ++x) {
        const uint8_t* px = row + (w.first[xx] + x) * 3;
        for (int c = 0; c < 3; ++c) acc[c] += int64_t{px[c]} * k[x];
      }
      for (int c = 0; c < 3; ++c) out[(y * out_width + xx) * 3 + c] = Clip8(acc[c]);
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
      int64_t acc = 1 << (kPrecisionBits - 1);
      for (int64_t y = 0; y < w.count[yy]; ++y) acc += int64_t{in[(first + y) * width * 3 + x]} * k[y];
      out[yy * width * 3 + x] = Clip8(acc);
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

StatusOr<InputImage> ResizeImage(const InputImage& image, int64_t width, int64_t height,
                                 ResampleFilter filter) {
  RAINSERVE_RETURN_IF_ERROR(CheckImage(image));
  RAINSERVE_RETURN_IF_ERROR(CheckTargetSize(width, height));
  const Filter f = FilterFor(filter);
  // As Pillow: the vertical weights first, for the rows the horizontal pass
  // has to produce; each pass runs only when its size changes.
  const AxisWeights vertical = ComputeAxisWeights(image.height, height, f);
  const int64_t row_first = vertical.first.front();
  const int64_t row_last = vertical.first.back() + vertical.count.back();
  const bool horizontal_pass = width != image.width;
  const bool vertical_pass = height != image.height;

  InputImage current = image;  // the rows of the image the vertical pass reads
  int64_t row_offset = 0;       // the source row of current's first row
  if (horizontal_pass) {
    const AxisWeights horizontal = ComputeAxisWeights(image.width, width, f);
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

StatusOr<InputImage> CenterCrop(const InputImage& image, int64_t width, int64_t height) {
  RAINSERVE_RETURN_IF_ERROR(CheckImage(image));
  RAINSERVE_RETURN_IF_ERROR(CheckTargetSize(width, height));
  // Per axis: where the crop reads from (src) and writes to (dst), and how
  // many pixels it copies. Python's // floors; the difference is >= 0 here.
  struct Span {
    int64_t src, dst, n;
  };
  auto span = [](int64_t size, int64_t crop) {
    if (crop <= size) return Span{(size - crop) / 2, 0, crop};
    return Span{0, (crop - size + 1) / 2, size};
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
