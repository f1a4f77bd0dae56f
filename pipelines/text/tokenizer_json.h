// The JSON files transformers saves for a T5/UMT5 tokenizer beside (or, since
// transformers 5, instead of) spiece.model, read into what the tokenizer
// (pipelines/text/tokenizer.h) needs:
//
//   tokenizer.json           the tokenizers library's serialization: the
//                            Unigram model (model.vocab as [piece, score]
//                            pairs, model.unk_id, model.byte_fallback), the
//                            Precompiled charsmap of the normalizer (alone or
//                            in a Sequence), added_tokens (id, content and
//                            the single_word/lstrip/rstrip/normalized/special
//                            flags);
//   tokenizer_config.json    eos_token, unk_token, pad_token, extra_ids,
//                            additional_special_tokens, added_tokens_decoder;
//   special_tokens_map.json  special tokens, overriding tokenizer_config.json's.
//
// transformers' T5Tokenizer takes only these parts from the files and builds
// the rest of the pipeline itself (pipelines/text/tokenizer.h), so the other
// normalizer steps and the pre_tokenizer of a tokenizer.json are not read.
// Errors are INVALID_ARGUMENT naming the file and the key.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "pipelines/text/added_tokens.h"
#include "pipelines/text/sentencepiece.h"

namespace rainserve {

struct TokenizerJson {
  // Pieces with their scores; type UNKNOWN for model.unk_id, CONTROL for
  // the ids of special added tokens, BYTE for <0xXX> with byte_fallback,
  // NORMAL otherwise.
  std::unique_ptr<SentencePieceModel> model;
  std::vector<AddedToken> added_tokens;
};

// `text` is the content of the tokenizer.json called `name`. Only Unigram
// models are accepted.
StatusOr<TokenizerJson> ParseTokenizerJson(const std::string& text, const std::string& name);

struct TokenizerConfig {
  // The named special tokens (a string, or an object with content and flags).
  AddedToken eos_token{"</s>"};
  AddedToken unk_token{"<unk>"};
  AddedToken pad_token{"<pad>"};
  std::vector<AddedToken> additional_special_tokens;  // ids -1
  std::vector<AddedToken> added_tokens_decoder;       // ids from the keys
  int64_t extra_ids = 100;  // T5Tokenizer's default when the file says none
};

// tokenizer_config.json and special_tokens_map.json; nullopt stands for a
// file that is absent.
StatusOr<TokenizerConfig> ParseTokenizerConfig(const std::optional<std::string>& config_text,
                                               const std::string& config_name,
                                               const std::optional<std::string>& map_text,
                                               const std::string& map_name);

// Largest added-token id and extra_ids accepted.
inline constexpr int64_t kMaxAddedTokenId = (int64_t{1} << 24) - 1;
inline constexpr int64_t kMaxExtraIds = 100000;

}  // namespace rainserve
