// MP4 through FFmpeg: RGB -> swscale -> yuv420p -> H.264 encoder -> mp4 muxer
// -> an AVIOContext over a std::string. The muxer's faststart pass (moving the
// index in front of the media data) reopens its output for reading; the
// io_open/io_close2 callbacks below hand it a reader over the same string.
#include "media/mp4_encoder.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "media/av_io.h"
#include "media/frames.h"

namespace rainserve::media {

namespace {

using internal::AvError;
using internal::CodecContextPtr;
using internal::FramePtr;
using internal::MemoryAvioDeleter;
using internal::MemoryAvioPtr;
using internal::MemoryFile;
using internal::NewMemoryAvio;
using internal::OutputFormatPtr;
using internal::PacketPtr;
using internal::SwsContextPtr;

// x264's presets, fastest first.
constexpr const char* kPresets[] = {"ultrafast", "superfast", "veryfast", "faster", "fast",
                                    "medium",    "slow",      "slower",   "veryslow", "placebo"};

Status ValidateOptions(const Mp4Options& options) {
  if (options.crf < 0 || options.crf > 51) {
    return InvalidArgumentError("crf must be in [0, 51], got " + std::to_string(options.crf));
  }
  for (const char* preset : kPresets) {
    if (options.preset == preset) return OkStatus();
  }
  return InvalidArgumentError("preset must be an x264 preset (ultrafast ... veryslow), got '" +
                              options.preset + "'");
}

// Opens an H.264 encoder for width x height yuv420p at `fps`: libx264 with
// the caller's crf and preset when present, else FFmpeg's default H.264
// encoder with its own defaults.
StatusOr<CodecContextPtr> OpenH264Encoder(int width, int height, int fps,
                                          const Mp4Options& options, bool global_header) {
  const AVCodec* codec = avcodec_find_encoder_by_name("libx264");
  const bool is_x264 = codec != nullptr;
  if (!is_x264) codec = avcodec_find_encoder(AV_CODEC_ID_H264);
  if (codec == nullptr) {
    return FailedPreconditionError("this FFmpeg build has no H.264 encoder (libx264 or other)");
  }
  CodecContextPtr encoder(avcodec_alloc_context3(codec));
  if (encoder == nullptr) return ResourceExhaustedError("out of memory for the H.264 encoder");
  encoder->width = width;
  encoder->height = height;
  encoder->pix_fmt = AV_PIX_FMT_YUV420P;
  encoder->time_base = AVRational{1, fps};  // pts counts frames
  encoder->framerate = AVRational{fps, 1};
  encoder->sample_aspect_ratio = AVRational{1, 1};
  encoder->color_range = AVCOL_RANGE_MPEG;
  encoder->colorspace = AVCOL_SPC_BT709;
  encoder->color_primaries = AVCOL_PRI_BT709;
  encoder->color_trc = AVCOL_TRC_BT709;
  // One thread: x264's multi-threaded output depends on thread timing.
  encoder->thread_count = 1;
  encoder->flags |= AV_CODEC_FLAG_BITEXACT;
  if (global_header) encoder->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;

  AVDictionary* codec_options = nullptr;
  if (is_x264) {
    av_dict_set(&codec_options, "preset", options.preset.c_str(), 0);
    av_dict_set_int(&codec_options, "crf", options.crf, 0);
    // log=0: x264 logs errors only (not its per-video statistics).
    // mbtree=0: x264's macroblock-tree rate control (on in every preset but
    // ultrafast/superfast) reads heap memory that x264 never initialises when
    // B-frames are used, so the B-frames' bits depend on what earlier
    // allocations left in freed memory: the same input encoded twice in one
    // process gives different streams (checked with MALLOC_PERTURB_ and a
    // sweep of sizes, lengths and presets; libx264 0.164). No B-frames,
    // rc-lookahead 0 or constant QP also hid it in a small case, but turning
    // off mbtree changes the least: crf, the preset's B-frames, motion search
    // and frame-type lookahead all stay.
    av_dict_set(&codec_options, "x264-params", "log=0:mbtree=0", 0);
  }
  const int ret = avcodec_open2(encoder.get(), codec, &codec_options);
  av_dict_free(&codec_options);
  if (ret < 0) {
    return AvError(StatusCode::kFailedPrecondition,
                   std::string("opening the H.264 encoder ") + codec->name, ret);
  }
  return encoder;
}

// faststart's reader: a read-only view of the MemoryFile in s->opaque.
int OpenMemoryForRead(AVFormatContext* s, AVIOContext** pb, const char* /*url*/, int flags,
                      AVDictionary** /*options*/) {
  if (flags != AVIO_FLAG_READ) return AVERROR(EPERM);
  MemoryAvioPtr reader = NewMemoryAvio(static_cast<MemoryFile*>(s->opaque), /*writable=*/false);
  if (reader == nullptr) return AVERROR(ENOMEM);
  *pb = reader.release();
  return 0;
}

int CloseMemory(AVFormatContext* /*s*/, AVIOContext* pb) {
  MemoryAvioDeleter()(pb);
  return 0;
}

// Copies frame src [height, width, 3] into dst [height + pad_y, width + pad_x, 3],
// repeating the last column and row.
void PadFrame(const uint8_t* src, int width, int height, int dst_width, int dst_height,
              uint8_t* dst) {
  const size_t src_row = static_cast<size_t>(width) * 3;
  const size_t dst_row = static_cast<size_t>(dst_width) * 3;
  for (int y = 0; y < dst_height; ++y) {
    const uint8_t* in = src + static_cast<size_t>(std::min(y, height - 1)) * src_row;
    uint8_t* out = dst + static_cast<size_t>(y) * dst_row;
    std::memcpy(out, in, src_row);
    for (size_t x = src_row; x < dst_row; x += 3) std::memcpy(out + x, in + src_row - 3, 3);
  }
}

// Hands every packet the encoder has ready to the muxer.
Status WriteReadyPackets(AVCodecContext* encoder, AVFormatContext* muxer, AVStream* stream,
                         AVPacket* packet) {
  while (true) {
    int ret = avcodec_receive_packet(encoder, packet);
    if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF) return OkStatus();
    if (ret < 0) return AvError(StatusCode::kInternal, "encoding H.264", ret);
    if (packet->duration <= 0) packet->duration = 1;  // one frame, in encoder time base
    av_packet_rescale_ts(packet, encoder->time_base, stream->time_base);
    packet->stream_index = stream->index;
    ret = av_interleaved_write_frame(muxer, packet);  // takes (and clears) the packet
    if (ret < 0) return AvError(StatusCode::kInternal, "writing an MP4 packet", ret);
  }
}

}  // namespace

int Mp4Dimension(int size) { return size + (size & 1); }

StatusOr<std::string> EncodeMp4(const uint8_t* rgb, int width, int height, int frames, int fps,
                                const Mp4Options& options) {
  RAINSERVE_RETURN_IF_ERROR(ValidateFrames(rgb, width, height, frames));
  RAINSERVE_RETURN_IF_ERROR(ValidateFps(fps));
  RAINSERVE_RETURN_IF_ERROR(ValidateOptions(options));
  const int video_width = Mp4Dimension(width);
  const int video_height = Mp4Dimension(height);

  // Declared before everything that writes into it, so it is freed last.
  MemoryFile file;
  MemoryAvioPtr writer = NewMemoryAvio(&file, /*writable=*/true);
  if (writer == nullptr) return ResourceExhaustedError("out of memory for the MP4 writer");

  AVFormatContext* muxer_raw = nullptr;
  int ret = avformat_alloc_output_context2(&muxer_raw, nullptr, "mp4", nullptr);
  if (ret < 0) return AvError(StatusCode::kInternal, "creating the MP4 muxer", ret);
  OutputFormatPtr muxer(muxer_raw);
  muxer->pb = writer.get();
  muxer->flags |= AVFMT_FLAG_CUSTOM_IO | AVFMT_FLAG_BITEXACT;  // no version strings
  muxer->opaque = &file;
  muxer->io_open = OpenMemoryForRead;
  muxer->io_close2 = CloseMemory;

  RAINSERVE_ASSIGN_OR_RETURN(
      CodecContextPtr encoder,
      OpenH264Encoder(video_width, video_height, fps, options,
                      (muxer->oformat->flags & AVFMT_GLOBALHEADER) != 0));

  AVStream* stream = avformat_new_stream(muxer.get(), nullptr);
  if (stream == nullptr) return ResourceExhaustedError("out of memory for the MP4 stream");
  stream->time_base = encoder->time_base;
  stream->avg_frame_rate = encoder->framerate;
  ret = avcodec_parameters_from_context(stream->codecpar, encoder.get());
  if (ret < 0) return AvError(StatusCode::kInternal, "copying the H.264 parameters", ret);

  AVDictionary* muxer_options = nullptr;
  av_dict_set(&muxer_options, "movflags", "+faststart", 0);
  ret = avformat_write_header(muxer.get(), &muxer_options);
  av_dict_free(&muxer_options);
  if (ret < 0) return AvError(StatusCode::kInternal, "writing the MP4 header", ret);

  // yuv: [video_height, video_width] luma + two half-size chroma planes.
  FramePtr yuv(av_frame_alloc());
  PacketPtr packet(av_packet_alloc());
  if (yuv == nullptr || packet == nullptr) {
    return ResourceExhaustedError("out of memory for an H.264 frame");
  }
  yuv->format = AV_PIX_FMT_YUV420P;
  yuv->width = video_width;
  yuv->height = video_height;
  ret = av_frame_get_buffer(yuv.get(), 0);
  if (ret < 0) return AvError(StatusCode::kInternal, "allocating a yuv420p frame", ret);

  // Same size in and out: only the colour conversion and chroma subsampling.
  // SWS_BITEXACT keeps the result independent of the CPU's SIMD support.
  SwsContextPtr to_yuv(sws_getContext(video_width, video_height, AV_PIX_FMT_RGB24, video_width,
                                      video_height, AV_PIX_FMT_YUV420P,
                                      SWS_BICUBIC | SWS_ACCURATE_RND | SWS_BITEXACT, nullptr,
                                      nullptr, nullptr));
  if (to_yuv == nullptr) return InternalError("creating the RGB to yuv420p converter failed");
  // Full-range RGB in, BT.709 limited-range YUV out (matching the stream's tags).
  const int* bt709 = sws_getCoefficients(SWS_CS_ITU709);
  sws_setColorspaceDetails(to_yuv.get(), bt709, /*srcRange=*/1, bt709, /*dstRange=*/0,
                           /*brightness=*/0, /*contrast=*/1 << 16, /*saturation=*/1 << 16);

  const bool pad = video_width != width || video_height != height;
  std::vector<uint8_t> padded(pad ? FrameBytes(video_width, video_height) : 0);
  const int rgb_stride[1] = {video_width * 3};
  for (int i = 0; i < frames; ++i) {
    const uint8_t* frame_rgb = rgb + static_cast<size_t>(i) * FrameBytes(width, height);
    if (pad) {
      PadFrame(frame_rgb, width, height, video_width, video_height, padded.data());
      frame_rgb = padded.data();
    }
    ret = av_frame_make_writable(yuv.get());  // the encoder may still hold the last one
    if (ret < 0) return AvError(StatusCode::kInternal, "reusing the yuv420p frame", ret);
    const uint8_t* const rgb_planes[1] = {frame_rgb};
    sws_scale(to_yuv.get(), rgb_planes, rgb_stride, 0, video_height, yuv->data, yuv->linesize);
    yuv->pts = i;
    ret = avcodec_send_frame(encoder.get(), yuv.get());
    if (ret < 0) return AvError(StatusCode::kInternal, "encoding H.264", ret);
    RAINSERVE_RETURN_IF_ERROR(WriteReadyPackets(encoder.get(), muxer.get(), stream, packet.get()));
  }
  ret = avcodec_send_frame(encoder.get(), nullptr);  // flush delayed (B-)frames
  if (ret < 0) return AvError(StatusCode::kInternal, "flushing the H.264 encoder", ret);
  RAINSERVE_RETURN_IF_ERROR(WriteReadyPackets(encoder.get(), muxer.get(), stream, packet.get()));

  ret = av_write_trailer(muxer.get());
  if (ret < 0) return AvError(StatusCode::kInternal, "writing the MP4 index", ret);
  return std::move(file.bytes);
}

}  // namespace rainserve::media
