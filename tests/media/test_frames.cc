#include "tests/media/test_frames.h"

#include <png.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "media/av_io.h"

extern "C" {
#include <libavutil/pixdesc.h>
}

namespace rainserve::media::testing {

using internal::AvError;
using internal::CodecContextPtr;
using internal::FramePtr;
using internal::InputFormatPtr;
using internal::MemoryAvioPtr;
using internal::MemoryFile;
using internal::NewMemoryAvio;
using internal::PacketPtr;

std::vector<uint8_t> SmoothFrames(int width, int height, int frames) {
  std::vector<uint8_t> rgb(static_cast<size_t>(frames) * height * width * 3);
  size_t i = 0;
  for (int t = 0; t < frames; ++t) {
    for (int y = 0; y < height; ++y) {
      for (int x = 0; x < width; ++x) {
        rgb[i++] = static_cast<uint8_t>(64 + 96 * x / width);
        rgb[i++] = static_cast<uint8_t>(64 + 96 * y / height);
        rgb[i++] = static_cast<uint8_t>(128 + 64 * std::sin(0.03 * (x + y) + 1.0 * t));
      }
    }
  }
  return rgb;
}

std::vector<uint8_t> NoiseFrame(int width, int height, uint32_t seed) {
  std::vector<uint8_t> rgb(static_cast<size_t>(height) * width * 3);
  uint32_t state = seed;
  for (uint8_t& byte : rgb) {
    state = state * 1664525u + 1013904223u;
    byte = static_cast<uint8_t>(state >> 24);
  }
  return rgb;
}

StatusOr<DecodedPng> DecodePng(const std::string& png) {
  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&image, png.data(), png.size())) {
    return InternalError(std::string("PNG header: ") + image.message);
  }
  image.format = PNG_FORMAT_RGB;
  DecodedPng decoded;
  decoded.width = static_cast<int>(image.width);
  decoded.height = static_cast<int>(image.height);
  decoded.rgb.resize(PNG_IMAGE_SIZE(image));
  if (!png_image_finish_read(&image, nullptr, decoded.rgb.data(), 0, nullptr)) {
    png_image_free(&image);
    return InternalError(std::string("PNG pixels: ") + image.message);
  }
  return decoded;
}

namespace {

// The reference inverse of the encoder's conversion: BT.709 limited-range
// yuv420p -> full-range RGB, each chroma sample shared by its 2x2 pixels.
// frame: Y [height, width], U and V [height / 2, width / 2] -> [height, width, 3]
std::vector<uint8_t> Yuv420pToRgb(const AVFrame& frame) {
  std::vector<uint8_t> rgb(static_cast<size_t>(frame.height) * frame.width * 3);
  auto to_byte = [](double v) {
    return static_cast<uint8_t>(std::lround(std::min(255.0, std::max(0.0, v))));
  };
  size_t i = 0;
  for (int y = 0; y < frame.height; ++y) {
    for (int x = 0; x < frame.width; ++x) {
      const double luma = (frame.data[0][y * frame.linesize[0] + x] - 16) / 219.0;
      const double cb = (frame.data[1][y / 2 * frame.linesize[1] + x / 2] - 128) / 224.0;
      const double cr = (frame.data[2][y / 2 * frame.linesize[2] + x / 2] - 128) / 224.0;
      const double r = luma + 1.5748 * cr;
      const double b = luma + 1.8556 * cb;
      const double g = (luma - 0.2126 * r - 0.0722 * b) / 0.7152;
      rgb[i++] = to_byte(255 * r);
      rgb[i++] = to_byte(255 * g);
      rgb[i++] = to_byte(255 * b);
    }
  }
  return rgb;
}

}  // namespace

StatusOr<DecodedVideo> DecodeMp4(const std::string& mp4) {
  MemoryFile file{mp4};
  MemoryAvioPtr reader = NewMemoryAvio(&file, /*writable=*/false);
  AVFormatContext* input_raw = avformat_alloc_context();
  if (reader == nullptr || input_raw == nullptr) return InternalError("out of memory");
  input_raw->pb = reader.get();
  // On failure avformat_open_input frees input_raw itself.
  int ret = avformat_open_input(&input_raw, nullptr, nullptr, nullptr);
  if (ret < 0) return AvError(StatusCode::kInternal, "opening the MP4", ret);
  InputFormatPtr input(input_raw);
  ret = avformat_find_stream_info(input.get(), nullptr);
  if (ret < 0) return AvError(StatusCode::kInternal, "reading stream info", ret);
  const int stream_index = av_find_best_stream(input.get(), AVMEDIA_TYPE_VIDEO, -1, -1, nullptr, 0);
  if (stream_index < 0) return AvError(StatusCode::kInternal, "finding the video", stream_index);
  const AVStream* stream = input->streams[stream_index];

  const AVCodec* codec = avcodec_find_decoder(stream->codecpar->codec_id);
  if (codec == nullptr) return InternalError("no decoder for the video stream");
  CodecContextPtr decoder(avcodec_alloc_context3(codec));
  ret = avcodec_parameters_to_context(decoder.get(), stream->codecpar);
  if (ret < 0) return AvError(StatusCode::kInternal, "decoder parameters", ret);
  decoder->thread_count = 1;
  ret = avcodec_open2(decoder.get(), codec, nullptr);
  if (ret < 0) return AvError(StatusCode::kInternal, "opening the decoder", ret);

  DecodedVideo video;
  video.codec_name = codec->name;
  const char* pix_fmt = av_get_pix_fmt_name(static_cast<AVPixelFormat>(stream->codecpar->format));
  video.pix_fmt = pix_fmt != nullptr ? pix_fmt : "";
  video.width = stream->codecpar->width;
  video.height = stream->codecpar->height;
  video.frame_rate = av_q2d(stream->avg_frame_rate);
  video.duration_s = static_cast<double>(stream->duration) * av_q2d(stream->time_base);

  FramePtr frame(av_frame_alloc());
  PacketPtr packet(av_packet_alloc());
  auto receive_frames = [&]() -> Status {
    while (true) {
      const int r = avcodec_receive_frame(decoder.get(), frame.get());
      if (r == AVERROR(EAGAIN) || r == AVERROR_EOF) return OkStatus();
      if (r < 0) return AvError(StatusCode::kInternal, "decoding", r);
      if (frame->format != AV_PIX_FMT_YUV420P) return InternalError("decoded frame is not yuv420p");
      video.rgb_frames.push_back(Yuv420pToRgb(*frame));
      av_frame_unref(frame.get());
    }
  };
  while ((ret = av_read_frame(input.get(), packet.get())) >= 0) {
    if (packet->stream_index == stream_index) ret = avcodec_send_packet(decoder.get(), packet.get());
    av_packet_unref(packet.get());
    if (ret < 0) return AvError(StatusCode::kInternal, "sending a packet", ret);
    RAINSERVE_RETURN_IF_ERROR(receive_frames());
  }
  if (ret != AVERROR_EOF) return AvError(StatusCode::kInternal, "reading a packet", ret);
  ret = avcodec_send_packet(decoder.get(), nullptr);
  if (ret < 0) return AvError(StatusCode::kInternal, "flushing the decoder", ret);
  RAINSERVE_RETURN_IF_ERROR(receive_frames());
  return video;
}

std::vector<std::string> TopLevelBoxes(const std::string& mp4) {
  std::vector<std::string> types;
  size_t pos = 0;
  while (pos + 8 <= mp4.size()) {
    const auto* p = reinterpret_cast<const unsigned char*>(mp4.data() + pos);
    uint64_t size = (uint64_t{p[0]} << 24) | (p[1] << 16) | (p[2] << 8) | p[3];
    if (size == 1 && pos + 16 <= mp4.size()) {  // 64-bit size follows the type
      size = 0;
      for (int i = 8; i < 16; ++i) size = (size << 8) | p[i];
    } else if (size == 0) {  // box runs to the end of the file
      size = mp4.size() - pos;
    }
    types.push_back(mp4.substr(pos + 4, 4));
    if (size < 8) break;
    pos += size;
  }
  return types;
}

double MeanAbsError(const uint8_t* a, int a_width, const uint8_t* b, int b_width, int width,
                    int height) {
  double sum = 0;
  for (int y = 0; y < height; ++y) {
    const uint8_t* row_a = a + static_cast<size_t>(y) * a_width * 3;
    const uint8_t* row_b = b + static_cast<size_t>(y) * b_width * 3;
    for (int i = 0; i < width * 3; ++i) sum += std::abs(row_a[i] - row_b[i]);
  }
  return sum / (static_cast<double>(width) * height * 3);
}

::testing::AssertionResult IsInvalidArgumentNaming(const Status& status,
                                                   const std::string& argument) {
  if (status.code() == StatusCode::kInvalidArgument &&
      status.message().find(argument) != std::string::npos) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << "expected INVALID_ARGUMENT naming '" << argument << "', got " << status.ToString();
}

}  // namespace rainserve::media::testing
