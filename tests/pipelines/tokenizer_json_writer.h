// Writes a tokenizer.json for a loaded SentencePiece model, laid out as
// transformers 5 saves a T5/UMT5 tokenizer: the Unigram vocabulary with the
// pieces' scores and unk_id, the model's charsmap as the Precompiled
// normalizer, WhitespaceSplit + Metaspace (prepend_scheme "always") as the
// pre-tokenizer, and the CONTROL pieces (special) and USER_DEFINED pieces
// as added tokens, none normalized. Tests and the tokenizer fuzzer use it to
// get a tokenizer.json equivalent to an spiece.model without a file from
// elsewhere.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "pipelines/text/added_tokens.h"
#include "pipelines/text/sentencepiece.h"

namespace rainserve::testing {

inline std::string Base64(const std::string& bytes) {
  static const char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (size_t i = 0; i < bytes.size(); i += 3) {
    uint32_t v = static_cast<uint8_t>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) v |= static_cast<uint8_t>(bytes[i + 1]) << 8;
    if (i + 2 < bytes.size()) v |= static_cast<uint8_t>(bytes[i + 2]);
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(i + 1 < bytes.size() ? kAlphabet[(v >> 6) & 63] : '=');
    out.push_back(i + 2 < bytes.size() ? kAlphabet[v & 63] : '=');
  }
  return out;
}

inline nlohmann::json AddedTokenJson(const AddedToken& t) {
  return {{"id", t.id},         {"content", t.content}, {"single_word", t.single_word},
          {"lstrip", t.lstrip}, {"rstrip", t.rstrip},   {"normalized", t.normalized},
          {"special", t.special}};
}

// The tokenizer.json of `model`, with `extra` appended to its added tokens.
inline std::string TokenizerJsonFor(const SentencePieceModel& model,
                                    const std::vector<AddedToken>& extra = {}) {
  using nlohmann::json;
  using PieceType = SentencePieceModel::PieceType;
  json vocab = json::array();
  json added = json::array();
  int unk_id = 0;
  for (int id = 0; id < model.size(); ++id) {
    const SentencePieceModel::Piece& p = model.piece(id);
    vocab.push_back(json::array({p.text, static_cast<double>(p.score)}));
    if (p.type == PieceType::kUnknown) unk_id = id;
    if (p.type == PieceType::kControl || p.type == PieceType::kUserDefined) {
      AddedToken t{p.text, id};
      t.special = p.type == PieceType::kControl;
      added.push_back(AddedTokenJson(t));
    }
  }
  for (const AddedToken& t : extra) added.push_back(AddedTokenJson(t));
  json normalizer = nullptr;
  if (!model.precompiled_charsmap().empty()) {
    normalizer = {{"type", "Precompiled"},
                  {"precompiled_charsmap", Base64(model.precompiled_charsmap())}};
  }
  const json metaspace = {{"type", "Metaspace"},
                          {"replacement", "\xe2\x96\x81"},
                          {"prepend_scheme", "always"},
                          {"split", true}};
  const json root = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", normalizer},
      {"pre_tokenizer",
       {{"type", "Sequence"}, {"pretokenizers", json::array({{{"type", "WhitespaceSplit"}}, metaspace})}}},
      {"post_processor", nullptr},
      {"decoder", metaspace},
      {"model", {{"type", "Unigram"}, {"unk_id", unk_id}, {"vocab", vocab}, {"byte_fallback", model.byte_fallback()}}},
  };
  return root.dump();
}

}  // namespace rainserve::testing
