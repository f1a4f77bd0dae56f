// RGB frames -> one H.264 MP4 file, built in memory (no temporary files).
//
//   Mp4Options options;           // crf 20, preset "medium"
//   auto mp4 = EncodeMp4(rgb, 832, 480, 81, 16, options);
//
// Video: H.264 (libx264 when FFmpeg has it, else FFmpeg's default H.264
// encoder), yuv420p, BT.709 limited range, constant frame rate `fps`, one
// encoder thread, so the same input gives the same bytes. The index (moov) is
// placed before the media data, so players can start before the download ends.
// Odd widths or heights are padded by one column/row, a copy of the last one
// (yuv420p needs even sizes); the video is then that even size.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace rainserve::media {

struct Mp4Options {
  // x264 constant rate factor in [0, 51]: lower is better quality and larger.
  int crf = 20;
  // x264 speed/size trade-off: "ultrafast" ... "medium" ... "veryslow".
  std::string preset = "medium";
};

// The size of the video EncodeMp4 writes for frames of width x height: both
// rounded up to even.
int Mp4Dimension(int size);

// rgb: [frames, height, width, 3] uint8. Returns the MP4 file's bytes, or
//   INVALID_ARGUMENT naming the bad argument (null rgb, sizes outside
//     [1, 16384], frames < 1, fps outside [1, 240], crf outside [0, 51]),
//   FAILED_PRECONDITION when FFmpeg has no usable H.264 encoder,
//   INTERNAL with FFmpeg's message for any other failure.
// Thread-safe; cost grows with width * height * frames.
StatusOr<std::string> EncodeMp4(const uint8_t* rgb, int width, int height, int frames, int fps,
                                const Mp4Options& options = {});

}  // namespace rainserve::media
