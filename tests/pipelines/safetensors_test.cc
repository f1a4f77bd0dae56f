// safetensors reading and writing: round trips, shards, dtype conversion, and
// every kind of broken file giving its own error that names file and tensor.
#include "pipelines/core/safetensors.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/test_files.h"

namespace rainserve {
namespace {

// A file with a hand-written JSON header and `data_bytes` zero bytes of data.
std::string FileWithHeader(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i, n >>= 8) out[static_cast<size_t>(i)] = static_cast<char>(n & 0xff);
  return out + header + std::string(data_bytes, '\0');
}

void ExpectOpenError(const std::string& bytes, const std::string& needle) {
  const std::string path = testing::MakeTempDir("rainserve-st") + "/bad.safetensors";
  testing::WriteFileBytes(path, bytes);
  auto f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok()) << "accepted: " << needle;
  EXPECT_EQ(f.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(f.status().message().find(path), std::string::npos) << f.status().message();
  EXPECT_NE(f.status().message().find(needle), std::string::npos) << f.status().message();
}

TEST(SafetensorsTest, RoundTripsEveryFloatDType) {
  const std::string dir = testing::MakeTempDir("rainserve-st");
  at::manual_seed(1);
  const at::Tensor a = at::randn({3, 5});
  const at::Tensor b = at::randn({7}).to(at::kHalf);
  const at::Tensor c = at::randn({2, 2, 3}).to(at::kBFloat16);
  const at::Tensor e = at::empty({0, 4});
  ASSERT_TRUE(WriteSafetensors(dir + "/m.safetensors", {{"a", a}, {"b.x", b}, {"c", c}, {"empty", e}},
                               {{"format", "pt"}})
                  .ok());
  auto f = SafetensorsFile::Open(dir + "/m.safetensors");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
  EXPECT_EQ((*f)->entries().size(), 4u);
  EXPECT_TRUE(at::equal(*(*f)->Get("a"), a));
  EXPECT_TRUE(at::equal(*(*f)->Get("b.x"), b));
  EXPECT_TRUE(at::equal(*(*f)->Get("c"), c));
  EXPECT_EQ((*f)->Get("empty")->sizes(), e.sizes());
  EXPECT_EQ((*f)->Get("nope").status().code(), StatusCode::kNotFound);
  // Views of the mapping, not copies: two reads share memory.
  EXPECT_EQ((*f)->Get("a")->data_ptr(), (*f)->Get("a")->data_ptr());
}

TEST(SafetensorsTest, TensorsOutliveTheFileObject) {
  const std::string dir = testing::MakeTempDir("rainserve-st");
  const at::Tensor a = at::arange(12, at::kFloat).view({3, 4});
  ASSERT_TRUE(WriteSafetensors(dir + "/m.safetensors", {{"a", a}}).ok());
  at::Tensor kept;
  {
    auto f = SafetensorsFile::Open(dir + "/m.safetensors");
    ASSERT_TRUE(f.ok());
    kept = *(*f)->Get("a");
  }
  EXPECT_TRUE(at::equal(kept, a));  // the mapping stays alive with the tensor
}

TEST(SafetensorsTest, ShardedCheckpointWithIndexAndConversionOnLoad) {
  const std::string dir = testing::MakeTempDir("rainserve-st");
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (int i = 0; i < 6; ++i) tensors.push_back({"w" + std::to_string(i), at::randn({16, 16}).to(at::kHalf)});
  ASSERT_TRUE(WriteCheckpoint(dir, "diffusion_pytorch_model", tensors, 1200).ok());
  std::ifstream index(dir + "/diffusion_pytorch_model.safetensors.index.json");
  ASSERT_TRUE(index.good());
  const auto j = nlohmann::json::parse(index);
  EXPECT_EQ(j["weight_map"]["w0"], "diffusion_pytorch_model-00001-of-00003.safetensors");
  auto ckpt = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  EXPECT_EQ(ckpt->Names().size(), 6u);
  auto w3 = ckpt->Get("w3", at::kFloat, at::kCPU);
  ASSERT_TRUE(w3.ok());
  EXPECT_EQ(w3->scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(*w3, tensors[3].second.to(at::kFloat)));
}

TEST(SafetensorsTest, BrokenFilesGiveSpecificErrors) {
  ExpectOpenError("abc", "truncated file");
  ExpectOpenError(FileWithHeader("{}", 0).substr(0, 8) + "{", "header larger than the file");
  ExpectOpenError(FileWithHeader("{\"a\": [1,", 0), "bad JSON header");
  ExpectOpenError(FileWithHeader(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 4),
                  "tensor 'a': data offsets out of range");
  ExpectOpenError(FileWithHeader(R"({"a": {"dtype": "F4", "shape": [2], "data_offsets": [0, 8]}})", 8),
                  "tensor 'a': unknown dtype 'F4'");
  ExpectOpenError(FileWithHeader(R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8),
                  "tensor 'a': 8 bytes do not match its shape and dtype");
  ExpectOpenError(FileWithHeader(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                                 R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", 12),
                  "tensors 'a' and 'b' overlap");
  ExpectOpenError(FileWithHeader(R"({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", 8),
                  "shape entries must be integers >= 0");
  ExpectOpenError(FileWithHeader(R"({"a": {"dtype": "F32", "shape": [2]}})", 8),
                  "tensor 'a': needs dtype, shape and data_offsets");
  ExpectOpenError(FileWithHeader(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", 8),
                  "begin > end");
  std::string huge = FileWithHeader("{}", 0);
  huge[7] = 0x7f;  // header length ~2^62
  ExpectOpenError(huge, "exceeds the");
}

// Found by tests/fuzz (fuzz_safetensors): an empty tensor whose other dims
// overflow int64 made Get() throw, and an empty tensor at an unaligned offset
// handed memcpy a null pointer (a report under the sanitizer builds).
TEST(SafetensorsTest, EmptyTensorsWithHugeDimsAreRejectedAndUnalignedEmptyOnesLoad) {
  ExpectOpenError(FileWithHeader(R"({"a": {"dtype": "F32", "shape": [0, 18446744073709551615],)"
                                 R"( "data_offsets": [0, 0]}})", 0),
                  "tensor 'a': shape too large");
  ExpectOpenError(FileWithHeader(R"({"a": {"dtype": "U8", "shape": [0, 4611686018427387904, 4],)"
                                 R"( "data_offsets": [0, 0]}})", 0),
                  "tensor 'a': shape too large");
  std::string header = R"({"a": {"dtype": "F32", "shape": [0, 3], "data_offsets": [1, 1]}})";
  while ((8 + header.size()) % 8 != 0) header += ' ';  // data 8-byte aligned, so offset 1 is not
  const std::string path = testing::MakeTempDir("rainserve-st") + "/empty.safetensors";
  testing::WriteFileBytes(path, FileWithHeader(header, 4));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  auto t = (*file)->Get("a");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->sizes().vec(), std::vector<int64_t>({0, 3}));
}

TEST(SafetensorsTest, BrokenIndexesAreErrors) {
  const std::string dir = testing::MakeTempDir("rainserve-st");
  ASSERT_TRUE(WriteSafetensors(dir + "/s1.safetensors", {{"a", at::ones({2})}}).ok());
  testing::WriteFileBytes(dir + "/diffusion_pytorch_model.safetensors.index.json",
             R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}})");
  auto c = SafetensorsCheckpoint::Open(dir);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("'b' is mapped to s1.safetensors, which does not contain it"),
            std::string::npos);
  testing::WriteFileBytes(dir + "/diffusion_pytorch_model.safetensors.index.json", R"({"weight_map": {"a": "gone.safetensors"}})");
  c = SafetensorsCheckpoint::Open(dir);
  EXPECT_EQ(c.status().code(), StatusCode::kNotFound);
  EXPECT_NE(c.status().message().find("gone.safetensors"), std::string::npos);
  testing::WriteFileBytes(dir + "/diffusion_pytorch_model.safetensors.index.json", R"({"weight_map": {"a": "../x"}})");
  EXPECT_FALSE(SafetensorsCheckpoint::Open(dir).ok());
  testing::WriteFileBytes(dir + "/diffusion_pytorch_model.safetensors.index.json", "not json");
  EXPECT_NE(SafetensorsCheckpoint::Open(dir).status().message().find("bad JSON"), std::string::npos);
  EXPECT_EQ(SafetensorsCheckpoint::Open(testing::MakeTempDir("rainserve-st")).status().code(), StatusCode::kNotFound);
}

TEST(SafetensorsTest, WriterRejectsUnsupportedInput) {
  const std::string dir = testing::MakeTempDir("rainserve-st");
  EXPECT_FALSE(WriteSafetensors(dir + "/x.safetensors", {{"a", at::ones({2})}, {"a", at::ones({2})}}).ok());
  EXPECT_FALSE(WriteSafetensors(dir + "/x.safetensors", {{"c", at::ones({2}, at::kComplexFloat)}}).ok());
}

}  // namespace
}  // namespace rainserve
