// Internal to media/ and its tests: owning handles for FFmpeg objects,
// FFmpeg errors as Status, and an in-memory file that AVIOContexts read and
// write (with seeking, so the mp4 muxer can go back and fill in its index).
#pragma once

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavformat/avio.h>
#include <libavutil/dict.h>
#include <libavutil/frame.h>
#include <libswscale/swscale.h>
}

#include <cstdint>
#include <memory>
#include <string>

#include "common/status.h"

namespace rainserve::media::internal {

// Deleter for FFmpeg's `void xxx_free(T**)` functions.
template <typename T, void (*Free)(T**)>
struct FreeWithPointerToPointer {
  void operator()(T* p) const { Free(&p); }
};

using CodecContextPtr =
    std::unique_ptr<AVCodecContext, FreeWithPointerToPointer<AVCodecContext, avcodec_free_context>>;
using FramePtr = std::unique_ptr<AVFrame, FreeWithPointerToPointer<AVFrame, av_frame_free>>;
using PacketPtr = std::unique_ptr<AVPacket, FreeWithPointerToPointer<AVPacket, av_packet_free>>;

struct SwsContextDeleter {
  void operator()(SwsContext* p) const { sws_freeContext(p); }
};
using SwsContextPtr = std::unique_ptr<SwsContext, SwsContextDeleter>;

// A muxing context; its pb is a caller-owned custom AVIOContext (not closed here).
struct OutputFormatDeleter {
  void operator()(AVFormatContext* p) const { avformat_free_context(p); }
};
using OutputFormatPtr = std::unique_ptr<AVFormatContext, OutputFormatDeleter>;

// A demuxing context opened with avformat_open_input.
struct InputFormatDeleter {
  void operator()(AVFormatContext* p) const { avformat_close_input(&p); }
};
using InputFormatPtr = std::unique_ptr<AVFormatContext, InputFormatDeleter>;

struct DictionaryDeleter {
  void operator()(AVDictionary* p) const { av_dict_free(&p); }
};
using DictionaryPtr = std::unique_ptr<AVDictionary, DictionaryDeleter>;

// "<what>: <av_strerror text>" with the given code.
Status AvError(StatusCode code, const std::string& what, int av_error);

// Bytes of one file kept in memory. Several AVIOContexts (each with its own
// position) may read and write it, one at a time.
struct MemoryFile {
  std::string bytes;
};

// Frees the AVIOContext, its buffer and its cursor into the MemoryFile.
struct MemoryAvioDeleter {
  void operator()(AVIOContext* p) const;
};
using MemoryAvioPtr = std::unique_ptr<AVIOContext, MemoryAvioDeleter>;

// An AVIOContext over `file`, starting at offset 0, seekable. Writable ones
// overwrite or extend the bytes; read-only ones see the bytes as they are when
// read. Returns null when out of memory. `file` must outlive the context.
MemoryAvioPtr NewMemoryAvio(MemoryFile* file, bool writable);

}  // namespace rainserve::media::internal
