#include "server/raw_calls.h"

#include <google/protobuf/stubs/logging.h>
#include <grpcpp/impl/codegen/proto_buffer_reader.h>
#include <grpcpp/impl/codegen/proto_buffer_writer.h>
#include <grpcpp/impl/codegen/proto_utils.h>

#include <string>

#include "common/logging.h"

namespace rainserve {
namespace {

// Lines per second for each kind of client-caused log line.
constexpr int kClientLinesPerSecond = 5;

LogRateLimiter& MalformedRequestLimiter() {
  static LogRateLimiter limiter(kClientLinesPerSecond);
  return limiter;
}

void ProtobufLogHandler(google::protobuf::LogLevel level, const char* filename, int line,
                        const std::string& message) {
  static LogRateLimiter limiter(kClientLinesPerSecond);
  uint64_t suppressed = 0;
  if (level == google::protobuf::LOGLEVEL_FATAL) {
    RAINSERVE_LOG(ERROR) << "protobuf: " << message;
    return;
  }
  if (!limiter.Allow(&suppressed)) return;
  RAINSERVE_LOG(WARNING) << "protobuf: " << message << SuppressedNote(suppressed);
}

}  // namespace

grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* ctx, const grpc::Status& s) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(s);
  return reactor;
}

grpc::Status ParseRequest(const grpc::CallbackServerContext& ctx, const grpc::ByteBuffer& bytes,
                          google::protobuf::Message* out) {
  grpc::ByteBuffer copy(bytes);  // parsing consumes the buffer; this shares its slices
  const grpc::Status parsed =
      grpc::GenericDeserialize<grpc::ProtoBufferReader, google::protobuf::Message>(&copy, out);
  if (parsed.ok()) return parsed;
  const std::string type = out->GetDescriptor()->full_name();
  uint64_t suppressed = 0;
  if (MalformedRequestLimiter().Allow(&suppressed)) {
    RAINSERVE_LOG(WARNING) << "refused a malformed " << type << " from " << ctx.peer()
                           << SuppressedNote(suppressed);
  }
  return {grpc::StatusCode::INVALID_ARGUMENT,
          "request: not a valid " + type +
              " (malformed protobuf bytes, or invalid UTF-8 in a string field)"};
}

grpc::Status SerializeMessage(const google::protobuf::Message& message, grpc::ByteBuffer* out) {
  bool own_buffer = false;
  return grpc::GenericSerialize<grpc::ProtoBufferWriter, google::protobuf::Message>(message, out,
                                                                                   &own_buffer);
}

void RouteProtobufLogs() { google::protobuf::SetLogHandler(&ProtobufLogHandler); }

}  // namespace rainserve
