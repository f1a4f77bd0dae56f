// Fuzzes the UMT5 tokenizer (pipelines/tokenizer.h) with the embedded
// wan-tiny model's spiece.model: arbitrary bytes (valid and invalid UTF-8,
// HTML entities, Unicode spaces) as the prompt. The first byte picks
// max_length. Checks the T5 layout of the result and CleanPrompt's output.
//
//   build-fuzz/tests/fuzz/fuzz_tokenizer tests/fuzz/corpus/tokenizer
#include <cstdint>
#include <memory>
#include <string>

#include "pipelines/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

namespace rainserve {
namespace {

const UMT5Tokenizer& Tokenizer() {
  static const UMT5Tokenizer* tokenizer = [] {
    auto t = UMT5Tokenizer::Load(fuzz::SourceDir() + "/models/wan-tiny/tokenizer");
    if (!t.ok()) std::fprintf(stderr, "%s\n", t.status().ToString().c_str());
    RAINSERVE_FUZZ_CHECK(t.ok());
    return t->release();
  }();
  return *tokenizer;
}

void CheckEncoded(const UMT5Tokenizer& tok, const TokenizedText& t, int64_t max_length) {
  RAINSERVE_FUZZ_CHECK(static_cast<int64_t>(t.ids.size()) == max_length);
  RAINSERVE_FUZZ_CHECK(static_cast<int64_t>(t.mask.size()) == max_length);
  RAINSERVE_FUZZ_CHECK(t.length >= 1 && t.length <= max_length);
  RAINSERVE_FUZZ_CHECK(t.ids[t.length - 1] == tok.eos_id());
  for (int64_t i = 0; i < max_length; ++i) {
    RAINSERVE_FUZZ_CHECK(t.ids[i] >= 0 && t.ids[i] < tok.vocab_size());
    RAINSERVE_FUZZ_CHECK(t.mask[i] == (i < t.length ? 1 : 0));
    if (i >= t.length) RAINSERVE_FUZZ_CHECK(t.ids[i] == tok.pad_id());
  }
}

}  // namespace
}  // namespace rainserve

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace rainserve;
  if (size == 0) return 0;
  const UMT5Tokenizer& tok = Tokenizer();
  const int64_t max_length = 1 + data[0] % 64;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);

  // Cleaned prompts have single spaces between words and none at the ends.
  const std::string clean = CleanPrompt(text);
  RAINSERVE_FUZZ_CHECK(clean.find("  ") == std::string::npos);
  RAINSERVE_FUZZ_CHECK(clean.empty() || (clean.front() != ' ' && clean.back() != ' '));

  const TokenizedText t = tok.Encode(text, max_length);
  CheckEncoded(tok, t, max_length);
  for (int64_t id : tok.Pieces(text)) RAINSERVE_FUZZ_CHECK(id >= 0 && id < tok.vocab_size());

  // The batch path stacks the same rows.
  const TokenizedBatch batch = tok.EncodeBatch({text, clean}, max_length);
  RAINSERVE_FUZZ_CHECK(batch.ids.size(0) == 2 && batch.ids.size(1) == max_length);
  const int64_t* ids = batch.ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < max_length; ++i) RAINSERVE_FUZZ_CHECK(ids[i] == t.ids[i]);
  RAINSERVE_FUZZ_CHECK(batch.lengths[0] == t.length);
  return 0;
}
