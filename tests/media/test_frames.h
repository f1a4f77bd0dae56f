// Test inputs for media/ and decoders for its outputs (libpng, FFmpeg).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace rainserve::media::testing {

// rgb: [frames, height, width, 3] uint8, smooth gradients that move from
// frame to frame (so every frame differs and lossy codecs stay close).
std::vector<uint8_t> SmoothFrames(int width, int height, int frames);

// rgb: [height, width, 3] uint8, every byte pseudo-random (worst case for PNG).
std::vector<uint8_t> NoiseFrame(int width, int height, uint32_t seed);

struct DecodedPng {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;  // [height, width, 3]
};
StatusOr<DecodedPng> DecodePng(const std::string& png);

struct DecodedVideo {
  std::string codec_name;     // decoder's name, e.g. "h264"
  std::string pix_fmt;        // e.g. "yuv420p"
  int width = 0;
  int height = 0;
  double frame_rate = 0;      // the stream's average frame rate
  double duration_s = 0;      // the stream's duration
  std::vector<std::vector<uint8_t>> rgb_frames;  // each [height, width, 3]
};
// Demuxes and decodes an MP4 held in memory; frames converted back to RGB
// with the BT.709 limited-range matrix the encoder tags its streams with.
StatusOr<DecodedVideo> DecodeMp4(const std::string& mp4);

// The four-letter types of the file's top-level MP4 boxes, in order.
std::vector<std::string> TopLevelBoxes(const std::string& mp4);

// Mean |a - b| over the width x height top-left pixels of two RGB images
// whose rows hold a_width and b_width pixels.
double MeanAbsError(const uint8_t* a, int a_width, const uint8_t* b, int b_width, int width,
                    int height);

// Success iff `status` is INVALID_ARGUMENT and its message names `argument`.
::testing::AssertionResult IsInvalidArgumentNaming(const Status& status,
                                                   const std::string& argument);

}  // namespace rainserve::media::testing
