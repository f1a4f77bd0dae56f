#include "tools/quality_metrics.h"

#include <array>
#include <cmath>
#include <limits>
#include <string>

namespace rainserve::quality {
namespace {

constexpr double kPeak = 255.0;
constexpr double kC1 = (0.01 * kPeak) * (0.01 * kPeak);
constexpr double kC2 = (0.03 * kPeak) * (0.03 * kPeak);

// The normalised 1-D Gaussian (sigma 1.5) whose outer product is the 11x11 window.
std::array<double, kSsimWindow> GaussianTaps() {
  std::array<double, kSsimWindow> taps{};
  double sum = 0;
  for (int i = 0; i < kSsimWindow; ++i) {
    const double x = i - kSsimWindow / 2;
    taps[i] = std::exp(-x * x / (2 * 1.5 * 1.5));
    sum += taps[i];
  }
  for (double& t : taps) t /= sum;
  return taps;
}

// Separable "valid" Gaussian filter of `plane` [height, width] ->
// [height - 10, width - 10].
std::vector<double> Filter(const std::vector<double>& plane, int width, int height) {
  static const std::array<double, kSsimWindow> taps = GaussianTaps();
  const int ow = width - kSsimWindow + 1, oh = height - kSsimWindow + 1;
  std::vector<double> rows(static_cast<size_t>(height) * ow);  // [height, ow]
  for (int y = 0; y < height; ++y) {
    const double* in = plane.data() + static_cast<size_t>(y) * width;
    for (int x = 0; x < ow; ++x) {
      double s = 0;
      for (int k = 0; k < kSsimWindow; ++k) s += taps[k] * in[x + k];
      rows[static_cast<size_t>(y) * ow + x] = s;
    }
  }
  std::vector<double> out(static_cast<size_t>(oh) * ow);  // [oh, ow]
  for (int y = 0; y < oh; ++y) {
    for (int x = 0; x < ow; ++x) {
      double s = 0;
      for (int k = 0; k < kSsimWindow; ++k) s += taps[k] * rows[static_cast<size_t>(y + k) * ow + x];
      out[static_cast<size_t>(y) * ow + x] = s;
    }
  }
  return out;
}

}  // namespace

double Psnr(const uint8_t* ref, const uint8_t* test, size_t n) {
  double sum = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(ref[i]) - static_cast<double>(test[i]);
    sum += d * d;
  }
  if (sum == 0) return std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(kPeak * kPeak / (sum / static_cast<double>(n)));
}

std::vector<float> Luma(const uint8_t* rgb, int width, int height) {
  const size_t n = static_cast<size_t>(width) * height;
  std::vector<float> y(n);
  for (size_t i = 0; i < n; ++i) {
    y[i] = static_cast<float>(0.299 * rgb[3 * i] + 0.587 * rgb[3 * i + 1] +
                              0.114 * rgb[3 * i + 2]);
  }
  return y;
}

double SsimLuma(const float* ref, const float* test, int width, int height) {
  const size_t n = static_cast<size_t>(width) * height;
  // The five planes whose local means SSIM needs: x, y, x^2, y^2, xy.
  std::vector<double> x(n), y(n), xx(n), yy(n), xy(n);
  for (size_t i = 0; i < n; ++i) {
    x[i] = ref[i];
    y[i] = test[i];
    xx[i] = x[i] * x[i];
    yy[i] = y[i] * y[i];
    xy[i] = x[i] * y[i];
  }
  const std::vector<double> mx = Filter(x, width, height), my = Filter(y, width, height),
                            mxx = Filter(xx, width, height), myy = Filter(yy, width, height),
                            mxy = Filter(xy, width, height);
  double sum = 0;
  for (size_t i = 0; i < mx.size(); ++i) {
    const double vx = mxx[i] - mx[i] * mx[i], vy = myy[i] - my[i] * my[i];
    const double cov = mxy[i] - mx[i] * my[i];
    sum += ((2 * mx[i] * my[i] + kC1) * (2 * cov + kC2)) /
           ((mx[i] * mx[i] + my[i] * my[i] + kC1) * (vx + vy + kC2));
  }
  return sum / static_cast<double>(mx.size());
}

StatusOr<ClipQuality> CompareClips(const uint8_t* ref, const uint8_t* test, int width, int height,
                                   int frames) {
  if (width < kSsimWindow || height < kSsimWindow) {
    const bool w = width < kSsimWindow;
    return InvalidArgumentError(std::string(w ? "width" : "height") + " must be at least " +
                                std::to_string(kSsimWindow) + " for SSIM, got " +
                                std::to_string(w ? width : height));
  }
  if (frames < 1) {
    return InvalidArgumentError("frames must be at least 1, got " + std::to_string(frames));
  }
  const size_t frame_bytes = static_cast<size_t>(width) * height * 3;
  ClipQuality q;
  double psnr_sum = 0, ssim_sum = 0;
  for (int f = 0; f < frames; ++f) {
    const uint8_t* a = ref + f * frame_bytes;
    const uint8_t* b = test + f * frame_bytes;
    const double psnr = Psnr(a, b, frame_bytes);
    if (std::isinf(psnr)) {
      ++q.identical_frames;
    } else {
      psnr_sum += psnr;
    }
    const std::vector<float> la = Luma(a, width, height), lb = Luma(b, width, height);
    ssim_sum += SsimLuma(la.data(), lb.data(), width, height);
  }
  const int differing = frames - q.identical_frames;
  q.psnr_db = differing == 0 ? std::numeric_limits<double>::infinity() : psnr_sum / differing;
  q.ssim = ssim_sum / frames;
  return q;
}

}  // namespace rainserve::quality
