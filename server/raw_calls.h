// Serving rainserve.v1 methods registered as raw (ByteBuffer) callback
// methods, so that RainServe rather than gRPC parses the requests.
//
// gRPC's generated callback handlers parse a request before any RainServe
// code runs and answer a message they cannot parse (malformed bytes, invalid
// UTF-8 in a proto3 string field) with UNIMPLEMENTED and no message, to
// authenticated and unauthenticated callers alike. Served raw, a call is
// authenticated first, then parsed here: bytes that are not a valid message
// get INVALID_ARGUMENT naming the message type. Log lines that clients can
// cause this way are rate-limited.
#pragma once

#include <google/protobuf/message.h>
#include <grpcpp/grpcpp.h>

namespace rainserve {

grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* ctx, const grpc::Status& s);

// Parses `bytes` into `out`. INVALID_ARGUMENT naming the message type when
// they are not a valid message; a rate-limited warning names the peer.
grpc::Status ParseRequest(const grpc::CallbackServerContext& ctx, const grpc::ByteBuffer& bytes,
                          google::protobuf::Message* out);

// Serializes `message` into `out`.
grpc::Status SerializeMessage(const google::protobuf::Message& message, grpc::ByteBuffer* out);

// Sends protobuf's own log lines (such as "String field ... contains invalid
// UTF-8 data") through RainServe's log as rate-limited warnings: clients
// cause them. Process-wide; called by the server at start-up (and by tests).
void RouteProtobufLogs();

// One unary call that arrived as bytes: `auth` (the handler's check of the
// caller), then parsing, then `handle(request, &response)` returning a
// grpc::Status; the response is serialized into `out` when it is OK.
template <typename Request, typename Response, typename Handle>
grpc::ServerUnaryReactor* ServeUnary(grpc::CallbackServerContext* ctx, const grpc::Status& auth,
                                     const grpc::ByteBuffer* in, grpc::ByteBuffer* out,
                                     Handle handle) {
  Request request;
  Response response;
  grpc::Status s = auth;
  if (s.ok()) s = ParseRequest(*ctx, *in, &request);
  if (s.ok()) s = handle(request, &response);
  if (s.ok()) s = SerializeMessage(response, out);
  return FinishUnary(ctx, s);
}

}  // namespace rainserve
