// Fuzzes the UMT5 tokenizer (pipelines/text/tokenizer.h) and the readers under it
// (pipelines/text/sentencepiece.h, pipelines/text/tokenizer_json.h), with the embedded
// wan-tiny model's spiece.model. The first byte picks the mode:
//   < 0xA0  prompt: the rest is the prompt (valid and invalid UTF-8, HTML
//           entities, Unicode spaces, special tokens), max_length =
//           1 + first % 64. Checks the T5 layout of the result, CleanPrompt's
//           output and that a leading </s> is the EOS id.
//   < 0xC0  tokenizer.json: bytes 1-4 (little-endian) pick an offset in a
//           tokenizer.json written from spiece.model, byte 5 how many bytes
//           to drop there, the rest is inserted; the edited file must parse
//           or be INVALID_ARGUMENT, and a parsed one must encode some texts
//           to ids in range and split the inserted bytes on its added
//           tokens into segments that spell them back.
//   >= 0xC0 model: the same edits on spiece.model; the edited file must
//           parse to a model or INVALID_ARGUMENT, and a model must encode
//           some texts (the first inserted bytes among them: an edited
//           charsmap may expand each byte to a long replacement) to ids in
//           range.
//
//   build-fuzz/tests/fuzz/fuzz_tokenizer tests/fuzz/corpus/tokenizer
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/files.h"
#include "pipelines/text/added_tokens.h"
#include "pipelines/text/sentencepiece.h"
#include "pipelines/text/tokenizer.h"
#include "pipelines/text/tokenizer_json.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/pipelines/tokenizer_json_writer.h"

namespace rainserve {
namespace {

std::string TokenizerDir() { return fuzz::SourceDir() + "/models/wan-tiny/tokenizer"; }

const UMT5Tokenizer& Tokenizer() {
  static const UMT5Tokenizer* tokenizer = [] {
    auto t = UMT5Tokenizer::Load(TokenizerDir());
    if (!t.ok()) std::fprintf(stderr, "%s\n", t.status().ToString().c_str());
    RAINSERVE_FUZZ_CHECK(t.ok());
    return t->release();
  }();
  return *tokenizer;
}

const std::string& ModelBytes() {
  static const std::string* bytes = [] {
    auto* b = new std::string();
    RAINSERVE_FUZZ_CHECK(ReadFile(TokenizerDir() + "/spiece.model", b).ok());
    return b;
  }();
  return *bytes;
}

const std::string& JsonBytes() {
  static const std::string* bytes = [] {
    auto model = SentencePieceModel::Parse(ModelBytes(), "spiece.model");
    RAINSERVE_FUZZ_CHECK(model.ok());
    return new std::string(testing::TokenizerJsonFor(**model));
  }();
  return *bytes;
}

// `base` with data[5] bytes dropped at the offset data[1..4] picks and the
// rest of data inserted there; *inserted gets the inserted bytes.
std::string Edited(const std::string& base, const uint8_t* data, size_t size,
                   std::string* inserted) {
  const uint32_t where =
      data[1] | (data[2] << 8) | (data[3] << 16) | (static_cast<uint32_t>(data[4]) << 24);
  const size_t offset = where % (base.size() + 1);
  const size_t drop = std::min<size_t>(data[5], base.size() - offset);
  inserted->assign(reinterpret_cast<const char*>(data) + 6, size - 6);
  return base.substr(0, offset) + *inserted + base.substr(offset + drop);
}

void CheckModelEncodes(const SentencePieceModel& m, const std::string& inserted) {
  for (int id : {m.unk_id(), m.bos_id(), m.eos_id(), m.pad_id()}) {
    RAINSERVE_FUZZ_CHECK(id >= -1 && id < m.size());
  }
  for (const std::string& text :
       {std::string("A red fox trots across a snowy meadow at dawn."),
        std::string("  \xef\xbc\xa1\xef\xbc\xa2 caf\xc3\xa9 \xe6\x97\xa5 \xf0\x9f\x98\x80 \xff "),
        inserted.substr(0, 64)}) {
    for (int id : m.Encode(text)) RAINSERVE_FUZZ_CHECK(id >= 0 && id < m.size());
    const std::string normalized = m.NormalizeCharacters(text);
    for (auto search : {SentencePieceModel::Search::kSentencePiece,
                        SentencePieceModel::Search::kTokenizers}) {
      for (int id : m.EncodeNormalized(normalized, search)) {
        RAINSERVE_FUZZ_CHECK(id >= 0 && id < m.size());
      }
    }
  }
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

void FuzzPrompt(const uint8_t* data, size_t size) {
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

  // A special token at the start is its id, whatever follows.
  const std::vector<int64_t> after_eos = tok.Pieces("</s>" + text);
  RAINSERVE_FUZZ_CHECK(!after_eos.empty() && after_eos[0] == tok.eos_id());

  // The batch path stacks the same rows.
  const TokenizedBatch batch = tok.EncodeBatch({text, clean}, max_length);
  RAINSERVE_FUZZ_CHECK(batch.ids.size(0) == 2 && batch.ids.size(1) == max_length);
  const int64_t* ids = batch.ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < max_length; ++i) RAINSERVE_FUZZ_CHECK(ids[i] == t.ids[i]);
  RAINSERVE_FUZZ_CHECK(batch.lengths[0] == t.length);
}

void FuzzModel(const uint8_t* data, size_t size) {
  if (size < 6) return;
  std::string inserted;
  const std::string bytes = Edited(ModelBytes(), data, size, &inserted);
  auto model = SentencePieceModel::Parse(bytes, "fuzz.model");
  if (!model.ok()) {
    RAINSERVE_FUZZ_CHECK(model.status().code() == StatusCode::kInvalidArgument);
    return;
  }
  CheckModelEncodes(**model, inserted);
}

void FuzzTokenizerJson(const uint8_t* data, size_t size) {
  if (size < 6) return;
  std::string inserted;
  const std::string bytes = Edited(JsonBytes(), data, size, &inserted);
  auto parsed = ParseTokenizerJson(bytes, "tokenizer.json");
  if (!parsed.ok()) {
    RAINSERVE_FUZZ_CHECK(parsed.status().code() == StatusCode::kInvalidArgument);
    return;
  }
  CheckModelEncodes(*parsed->model, inserted);
  // The segments of a split spell the text back, in order.
  std::vector<TextSegment> segments;
  AddedTokenSplitter(parsed->added_tokens).Split(inserted, &segments);
  std::string spelled;
  for (const TextSegment& s : segments) {
    RAINSERVE_FUZZ_CHECK(!s.text.empty() && s.id >= -1 && s.id <= kMaxAddedTokenId);
    spelled.append(s.text);
  }
  RAINSERVE_FUZZ_CHECK(spelled == inserted);
}

}  // namespace
}  // namespace rainserve

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  if (data[0] >= 0xC0) {
    rainserve::FuzzModel(data, size);
  } else if (data[0] >= 0xA0) {
    rainserve::FuzzTokenizerJson(data, size);
  } else {
    rainserve::FuzzPrompt(data, size);
  }
  return 0;
}
