// Sends FFmpeg's own log lines (libx264's settings banner, the mp4 muxer's
// notes, decoder warnings) through RAINSERVE_LOG instead of straight to stderr.
//
// Levels: FFmpeg info -> debug, warning -> warning, error and worse -> error;
// FFmpeg's verbose and debug output is dropped. Without this call FFmpeg
// prints its info lines (a few per MP4) to stderr on its own.
#pragma once

namespace rainserve::media {

// Installs the forwarding callback (FFmpeg's log callback is process-wide).
// Called once from main() before serving; idempotent. The callback itself is
// thread-safe, so encoders on any thread log through it.
void ForwardFfmpegLogs();

}  // namespace rainserve::media
