// UMT5 tokenizer: the checkpoint's tokenizer (tokenizer/tokenizer.json when
// present, else tokenizer/spiece.model; pipelines/text/tokenizer_json.h and
// pipelines/text/sentencepiece.h read them, not libsentencepiece) run as
// transformers' T5Tokenizer (transformers 5, backed by the tokenizers
// library) runs it for
//   tokenizer(text, padding="max_length", max_length=L, truncation=True,
//             add_special_tokens=True)
// Encoding a text:
//   1. added tokens split out of the raw text (pipelines/text/added_tokens.h):
//      every token with normalized=false, each becoming its own id;
//   2. each remaining segment normalized with the model's charsmap
//      (SentencePieceModel::NormalizeCharacters), then the normalized=true
//      tokens split out of it the same way;
//   3. each remaining piece split into words at Unicode whitespace (the
//      whitespace is dropped), each word prefixed with "▁" unless it
//      starts with one (Metaspace, prepend_scheme "always": also the first
//      word after a special token), cut before every further "▁", and
//      each cut run through the unigram Viterbi search on its own, as the
//      tokenizers library's Unigram model runs it
//      (SentencePieceModel::Search::kTokenizers);
//   4. EOS appended; longer texts keep their first L-1 ids + EOS; padded
//      with the pad id to L; mask 1 on real tokens (EOS included), 0 on
//      padding.
// The added tokens: tokenizer.json's added_tokens (with their flags), or
// for a spiece.model the CONTROL pieces (special) and USER_DEFINED pieces
// (not special), none normalized; then tokenizer_config.json's
// added_tokens_decoder (its flags replace those of a token of the same
// content, which keeps its id; a new one takes its vocabulary id, else the
// id it is listed under); then eos/unk/pad_token (tokenizer_config.json,
// special_tokens_map.json; default </s>, <unk>, <pad>) and the additional
// special tokens (additional_special_tokens / extra_special_tokens, or
// <extra_id_0>..<extra_id_{extra_ids-1}> when none of them is an
// <extra_id_N>; extra_ids defaults to 100) unless a token of that content
// is there already. A token's id is its vocabulary id; the additional
// special tokens that are not in the vocabulary follow it in reverse order
// (the T5 layout: <extra_id_0> last).
// Prompts are cleaned first as the Wan pipeline does (HTML entities
// unescaped, whitespace runs collapsed, ends stripped).
//
// Ids of the T5 family: pad 0, eos 1, unk 2, no bos (looked up by name).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "pipelines/text/added_tokens.h"
#include "pipelines/text/tokenizer_json.h"

namespace rainserve {

struct TokenizedText {
  std::vector<int64_t> ids;   // [max_length]
  std::vector<int64_t> mask;  // [max_length], 1 for real tokens
  int64_t length = 0;         // real tokens, EOS included (1..max_length)
};

// A batch of prompts as the text encoder takes them.
struct TokenizedBatch {
  at::Tensor ids;                // [B, L] int64
  at::Tensor mask;               // [B, L] int64
  std::vector<int64_t> lengths;  // [B]
};

class UMT5Tokenizer {
 public:
  // Loads <dir>/tokenizer.json, or <dir>/spiece.model when there is none,
  // with tokenizer_config.json and special_tokens_map.json when present.
  // NOT_FOUND when neither model file can be read; INVALID_ARGUMENT naming
  // the file (and key) when one is not a unigram model or not well-formed.
  // Called once at model load.
  static StatusOr<std::unique_ptr<UMT5Tokenizer>> Load(const std::string& dir);
  ~UMT5Tokenizer();

  // Tokenizes one prompt (cleaned first). max_length >= 1. Thread-safe
  // (encoding is const), so any request thread may call it.
  TokenizedText Encode(const std::string& text, int64_t max_length) const;

  // Encode() for every prompt, stacked: [B, max_length] int64 on the CPU.
  TokenizedBatch EncodeBatch(const std::vector<std::string>& texts, int64_t max_length) const;

  // Steps 1-3 on `text`: no cleaning and no EOS.
  std::vector<int64_t> Pieces(const std::string& text) const;

  int64_t pad_id() const { return pad_id_; }
  int64_t eos_id() const { return eos_id_; }
  int64_t unk_id() const { return unk_id_; }
  // Model pieces and added tokens: one more than the largest id.
  int64_t vocab_size() const { return vocab_size_; }
  // The added tokens with their ids (normalized ones with their contents
  // as written, not normalized).
  const std::vector<AddedToken>& added_tokens() const { return added_tokens_; }

 private:
  UMT5Tokenizer();
  // Completes the added tokens from the config files and builds the
  // splitters and the special ids.
  void SetAddedTokens(std::vector<AddedToken> tokens, const TokenizerConfig& config);
  // Step 3 on a normalized piece of text, appending to *ids.
  void EncodeWords(std::string_view text, std::vector<int64_t>* ids) const;

  std::unique_ptr<SentencePieceModel> model_;
  std::vector<AddedToken> added_tokens_;
  std::unique_ptr<AddedTokenSplitter> raw_tokens_;         // normalized=false
  std::unique_ptr<AddedTokenSplitter> normalized_tokens_;  // normalized=true, by normalized content
  int64_t pad_id_ = 0, eos_id_ = 1, unk_id_ = 2;
  int64_t vocab_size_ = 0;
};

// Prompt cleaning of the Wan pipeline (without ftfy's mojibake repair):
// HTML entities unescaped (twice, as the reference does), every run of
// whitespace (ASCII and Unicode spaces) replaced by one space, ends stripped.
std::string CleanPrompt(const std::string& text);

}  // namespace rainserve
