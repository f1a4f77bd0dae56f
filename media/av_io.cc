#include "media/av_io.h"

extern "C" {
#include <libavutil/error.h>
#include <libavutil/mem.h>
}

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace rainserve::media::internal {

namespace {

constexpr int kAvioBufferBytes = 64 * 1024;

// The AVIOContext's opaque: where in which file it reads or writes next.
struct MemoryCursor {
  MemoryFile* file;
  int64_t pos = 0;
};

int ReadMemory(void* opaque, uint8_t* buf, int size) {
  auto* cursor = static_cast<MemoryCursor*>(opaque);
  const std::string& bytes = cursor->file->bytes;
  const int64_t available = static_cast<int64_t>(bytes.size()) - cursor->pos;
  if (available <= 0) return AVERROR_EOF;
  const int n = static_cast<int>(std::min<int64_t>(size, available));
  std::memcpy(buf, bytes.data() + cursor->pos, static_cast<size_t>(n));
  cursor->pos += n;
  return n;
}

// FFmpeg 7 made the write callback's buffer const; this works with either.
int WriteMemory(void* opaque, const uint8_t* buf, int size) {
  auto* cursor = static_cast<MemoryCursor*>(opaque);
  std::string& bytes = cursor->file->bytes;
  const size_t pos = static_cast<size_t>(cursor->pos);
  const size_t n = static_cast<size_t>(size);
  if (bytes.size() < pos + n) bytes.resize(pos + n);  // a seek past the end fills with zeros
  std::memcpy(bytes.data() + pos, buf, n);
  cursor->pos += size;
  return size;
}

int64_t SeekMemory(void* opaque, int64_t offset, int whence) {
  auto* cursor = static_cast<MemoryCursor*>(opaque);
  const int64_t size = static_cast<int64_t>(cursor->file->bytes.size());
  int64_t target;
  switch (whence & ~AVSEEK_FORCE) {
    case AVSEEK_SIZE:
      return size;
    case SEEK_SET:
      target = offset;
      break;
    case SEEK_CUR:
      target = cursor->pos + offset;
      break;
    case SEEK_END:
      target = size + offset;
      break;
    default:
      return AVERROR(EINVAL);
  }
  if (target < 0) return AVERROR(EINVAL);
  cursor->pos = target;
  return target;
}

}  // namespace

Status AvError(StatusCode code, const std::string& what, int av_error) {
  char text[AV_ERROR_MAX_STRING_SIZE] = {};
  av_strerror(av_error, text, sizeof(text));
  return Status(code, what + ": " + text);
}

void MemoryAvioDeleter::operator()(AVIOContext* p) const {
  delete static_cast<MemoryCursor*>(p->opaque);
  av_freep(&p->buffer);  // FFmpeg may have replaced the buffer we allocated
  avio_context_free(&p);
}

MemoryAvioPtr NewMemoryAvio(MemoryFile* file, bool writable) {
  auto* buffer = static_cast<unsigned char*>(av_malloc(kAvioBufferBytes));
  if (buffer == nullptr) return nullptr;
  auto* cursor = new MemoryCursor{file};
  // The generic lambda converts to whichever write-callback type this
  // FFmpeg declares (uint8_t* before 7.0, const uint8_t* since).
  auto write = [](void* opaque, auto* buf, int size) { return WriteMemory(opaque, buf, size); };
  AVIOContext* avio = avio_alloc_context(buffer, kAvioBufferBytes, writable ? 1 : 0, cursor,
                                         ReadMemory, write, SeekMemory);
  if (avio == nullptr) {
    av_free(buffer);
    delete cursor;
    return nullptr;
  }
  return MemoryAvioPtr(avio);
}

}  // namespace rainserve::media::internal
