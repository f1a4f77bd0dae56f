// Image quality of a generated clip against a reference clip (the same
// prompt and seed at dense attention): PSNR and SSIM. Plain C++, no torch.
//
// Frames are rgb: [frames, height, width, 3] uint8, rows packed.
//
//   PSNR = 10 log10(255^2 / MSE) over every channel of a frame; identical
//   frames have MSE 0 and PSNR +inf.
//   SSIM (Wang, Bovik, Sheikh, Simoncelli 2004) on luma Y = 0.299 R +
//   0.587 G + 0.114 B (BT.601, as MATLAB's rgb2gray in the paper's code),
//   with an 11x11 Gaussian window (sigma 1.5, normalised), C1 = (0.01 L)^2,
//   C2 = (0.03 L)^2, L = 255, population (1/N) variances, averaged over the
//   windows that lie wholly inside the frame. This is skimage's
//   structural_similarity(gaussian_weights=True, sigma=1.5,
//   use_sample_covariance=False, data_range=255) on the same luma.
#pragma once

#include <cstdint>
#include <vector>

#include "common/status.h"

namespace rainserve::quality {

// The smallest width and height SSIM accepts (its window's side).
inline constexpr int kSsimWindow = 11;

// PSNR in dB of `n` bytes of `test` against `ref`; +inf when they are equal.
double Psnr(const uint8_t* ref, const uint8_t* test, size_t n);

// Luma of one RGB frame: [height, width] floats.
std::vector<float> Luma(const uint8_t* rgb, int width, int height);

// SSIM of two luma planes of width x height (both >= kSsimWindow).
double SsimLuma(const float* ref, const float* test, int width, int height);

// Per-clip figures: the mean over frames.
struct ClipQuality {
  // Mean PSNR over the frames that differ; +inf when every frame is equal.
  double psnr_db = 0;
  double ssim = 0;               // mean SSIM over every frame
  int identical_frames = 0;      // frames equal to the reference's
};

// Compares two clips of the same size. INVALID_ARGUMENT when a size is not
// positive or a side is below kSsimWindow (naming "width" or "height").
StatusOr<ClipQuality> CompareClips(const uint8_t* ref, const uint8_t* test, int width, int height,
                                   int frames);

}  // namespace rainserve::quality
