// UMT5 tokenizer: the checkpoint's SentencePiece model (tokenizer/spiece.model,
// read and run by pipelines/text/sentencepiece.h, not by libsentencepiece) with
// the T5 conventions transformers applies for
//   tokenizer(text, padding="max_length", max_length=L, truncation=True,
//             add_special_tokens=True)
// i.e. pieces of the text, then EOS; longer texts keep their first L-1
// pieces + EOS; padded with the pad id to L; mask 1 on real tokens (EOS
// included), 0 on padding. Prompts are cleaned first as the Wan pipeline
// does (HTML entities unescaped, whitespace runs collapsed, ends stripped).
//
// Ids of the T5 family: pad 0, eos 1, unk 2, no bos (read from the model).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace rainserve {

class SentencePieceModel;

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
  // Loads <dir>/spiece.model. tokenizer_config.json and
  // special_tokens_map.json may sit beside it; they are not needed.
  // NOT_FOUND / INVALID_ARGUMENT naming the file when it is missing or not a
  // unigram SentencePiece model with pad and eos pieces. Called once at
  // model load.
  static StatusOr<std::unique_ptr<UMT5Tokenizer>> Load(const std::string& dir);
  ~UMT5Tokenizer();

  // Tokenizes one prompt (cleaned first). max_length >= 1. Thread-safe
  // (encoding is const), so any request thread may call it.
  TokenizedText Encode(const std::string& text, int64_t max_length) const;

  // Encode() for every prompt, stacked: [B, max_length] int64 on the CPU.
  TokenizedBatch EncodeBatch(const std::vector<std::string>& texts, int64_t max_length) const;

  // The raw SentencePiece pieces of `text`, no cleaning and no EOS.
  std::vector<int64_t> Pieces(const std::string& text) const;

  int64_t pad_id() const { return pad_id_; }
  int64_t eos_id() const { return eos_id_; }
  int64_t unk_id() const { return unk_id_; }
  int64_t vocab_size() const;  // pieces in the SentencePiece model

 private:
  UMT5Tokenizer();
  std::unique_ptr<SentencePieceModel> model_;
  int64_t pad_id_ = 0, eos_id_ = 1, unk_id_ = 2;
};

// Prompt cleaning of the Wan pipeline (without ftfy's mojibake repair):
// HTML entities unescaped (twice, as the reference does), every run of
// whitespace (ASCII and Unicode spaces) replaced by one space, ends stripped.
std::string CleanPrompt(const std::string& text);

}  // namespace rainserve
