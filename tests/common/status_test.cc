#include "common/status.h"

#include <gtest/gtest.h>

#include <memory>

namespace rainserve {
namespace {

Status FailIfNegative(int x) {
  if (x < 0) return InvalidArgumentError("x must be >= 0, got " + std::to_string(x));
  return OkStatus();
}

StatusOr<int> Half(int x) {
  if (x % 2 != 0) return InvalidArgumentError("odd");
  return x / 2;
}

Status Chain(int x, int* out) {
  RAINSERVE_RETURN_IF_ERROR(FailIfNegative(x));
  RAINSERVE_ASSIGN_OR_RETURN(*out, Half(x));
  return OkStatus();
}

TEST(StatusTest, OkHasNoMessageAndPrintsOk) {
  Status s(StatusCode::kOk, "ignored");
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.message(), "");
  EXPECT_EQ(s.ToString(), "OK");
}

TEST(StatusTest, ErrorToStringUsesGrpcCodeNames) {
  EXPECT_EQ(InvalidArgumentError("bad").ToString(), "INVALID_ARGUMENT: bad");
  EXPECT_EQ(ResourceExhaustedError("full").ToString(), "RESOURCE_EXHAUSTED: full");
  EXPECT_EQ(static_cast<int>(StatusCode::kUnauthenticated), 16);
}

TEST(StatusTest, WithPrefixKeepsCode) {
  const Status s = NotFoundError("missing").WithPrefix("model.safetensors");
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "model.safetensors: missing");
  EXPECT_TRUE(OkStatus().WithPrefix("x").ok());
}

TEST(StatusTest, MacrosPropagateFirstError) {
  int out = -1;
  EXPECT_EQ(Chain(-2, &out).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(out, -1);
  EXPECT_EQ(Chain(3, &out).message(), "odd");
  EXPECT_TRUE(Chain(8, &out).ok());
  EXPECT_EQ(out, 4);
}

TEST(StatusOrTest, HoldsMoveOnlyValues) {
  StatusOr<std::unique_ptr<int>> v(std::make_unique<int>(7));
  ASSERT_TRUE(v.ok());
  std::unique_ptr<int> p = std::move(v).value();
  EXPECT_EQ(*p, 7);
  StatusOr<std::unique_ptr<int>> e(InternalError("boom"));
  EXPECT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), StatusCode::kInternal);
}

}  // namespace
}  // namespace rainserve
