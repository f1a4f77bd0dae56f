// tokenizer.json, tokenizer_config.json and special_tokens_map.json
// (pipelines/text/tokenizer_json.h says which parts are read).
#include "pipelines/text/tokenizer_json.h"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <utility>

#include "pipelines/core/json_config.h"

namespace rainserve {
namespace {

using nlohmann::json;
using PieceType = SentencePieceModel::PieceType;

// Standard base64 (RFC 4648 with '=' padding), as Python's b64encode writes
// it; false on any other character or a bad length.
bool DecodeBase64(const std::string& in, std::string* out) {
  if (in.size() % 4 != 0) return false;
  out->clear();
  out->reserve(in.size() / 4 * 3);
  uint32_t bits = 0;
  int count = 0, padding = 0;
  for (char c : in) {
    int v = -1;
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
    else if (c >= '0' && c <= '9') v = c - '0' + 52;
    else if (c == '+') v = 62;
    else if (c == '/') v = 63;
    else if (c == '=') v = 0, ++padding;
    if (v < 0 || (padding > 0 && c != '=') || padding > 2) return false;
    bits = (bits << 6) | static_cast<uint32_t>(v);
    if (++count == 4) {
      out->push_back(static_cast<char>(bits >> 16));
      out->push_back(static_cast<char>((bits >> 8) & 0xFF));
      out->push_back(static_cast<char>(bits & 0xFF));
      bits = 0;
      count = 0;
    }
  }
  out->resize(out->size() - static_cast<size_t>(padding));
  return true;
}

// <0xXX> with two upper-case hex digits: a byte piece's name.
bool IsBytePieceName(const std::string& s) {
  const auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'); };
  return s.size() == 6 && s.compare(0, 3, "<0x") == 0 && hex(s[3]) && hex(s[4]) && s[5] == '>';
}

Status KeyError(const std::string& name, const std::string& key, const std::string& what) {
  return config_json::KeyError(name, key, what);
}

// Reads the optional boolean `key` of `j` into *out.
Status ReadBool(const json& j, const std::string& name, const std::string& where, const char* key,
                bool* out) {
  if (!j.contains(key) || j[key].is_null()) return OkStatus();
  if (!j[key].is_boolean()) return KeyError(name, where + "." + key, "expected true or false");
  *out = j[key].get<bool>();
  return OkStatus();
}

// An added token given as a string (special, not normalized) or as an
// object {content, single_word, lstrip, rstrip, normalized, special}; an
// object's missing flags take the tokenizers library's defaults
// (normalized = !special). `special` is the default for the special flag.
Status ReadAddedToken(const json& j, const std::string& name, const std::string& where,
                      bool special, AddedToken* t) {
  t->special = special;
  t->normalized = !special;
  if (j.is_string()) {
    t->content = j.get<std::string>();
    return OkStatus();
  }
  if (!j.is_object() || !j.contains("content") || !j["content"].is_string()) {
    return KeyError(name, where, "expected a string or an object with a string \"content\"");
  }
  t->content = j["content"].get<std::string>();
  RAINSERVE_RETURN_IF_ERROR(ReadBool(j, name, where, "special", &t->special));
  t->normalized = !t->special;
  RAINSERVE_RETURN_IF_ERROR(ReadBool(j, name, where, "single_word", &t->single_word));
  RAINSERVE_RETURN_IF_ERROR(ReadBool(j, name, where, "lstrip", &t->lstrip));
  RAINSERVE_RETURN_IF_ERROR(ReadBool(j, name, where, "rstrip", &t->rstrip));
  return ReadBool(j, name, where, "normalized", &t->normalized);
}

// An id (a JSON integer, or a decimal string for added_tokens_decoder keys).
Status ReadTokenId(const json& j, const std::string& name, const std::string& where, int64_t* id) {
  bool ok = j.is_number_integer();
  if (ok) *id = j.get<int64_t>();
  if (j.is_string()) {
    const std::string s = j.get<std::string>();
    ok = !s.empty() && s.size() <= 9 && s.find_first_not_of("0123456789") == std::string::npos;
    if (ok) *id = std::stoll(s);
  }
  if (!ok || *id < 0 || *id > kMaxAddedTokenId) {
    return KeyError(name, where,
                    "expected a token id in [0, " + std::to_string(kMaxAddedTokenId) + "], got " +
                        j.dump());
  }
  return OkStatus();
}

// tokenizer.json's added_tokens: [{id, content, flags...}, ...].
Status ReadAddedTokens(const json& root, const std::string& name, std::vector<AddedToken>* out) {
  if (!root.contains("added_tokens") || root["added_tokens"].is_null()) return OkStatus();
  const json& list = root["added_tokens"];
  if (!list.is_array()) return KeyError(name, "added_tokens", "expected an array");
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string where = "added_tokens[" + std::to_string(i) + "]";
    if (!list[i].is_object() || !list[i].contains("id")) {
      return KeyError(name, where, "expected an object with \"id\" and \"content\"");
    }
    AddedToken t;
    RAINSERVE_RETURN_IF_ERROR(ReadTokenId(list[i]["id"], name, where + ".id", &t.id));
    RAINSERVE_RETURN_IF_ERROR(ReadAddedToken(list[i], name, where, /*special=*/false, &t));
    out->push_back(std::move(t));
  }
  return OkStatus();
}

// The Precompiled step of the normalizer (alone or in a Sequence), decoded.
Status ReadCharsmap(const json& root, const std::string& name, std::string* charsmap) {
  if (!root.contains("normalizer") || root["normalizer"].is_null()) return OkStatus();
  const json& n = root["normalizer"];
  if (!n.is_object()) return KeyError(name, "normalizer", "expected an object or null");
  std::vector<const json*> steps = {&n};
  if (n.contains("normalizers") && n["normalizers"].is_array()) {
    for (const json& step : n["normalizers"]) steps.push_back(&step);
  }
  for (const json* step : steps) {
    if (!step->is_object() || !step->contains("type") || (*step)["type"] != "Precompiled") continue;
    const json& blob = step->contains("precompiled_charsmap") ? (*step)["precompiled_charsmap"]
                                                               : json();
    if (blob.is_null()) return OkStatus();
    if (!blob.is_string() || !DecodeBase64(blob.get<std::string>(), charsmap)) {
      return KeyError(name, "normalizer.precompiled_charsmap", "expected a base64 string");
    }
    return OkStatus();
  }
  return OkStatus();
}

// model.vocab as pieces, typed as the header says.
Status ReadUnigram(const json& root, const std::string& name,
                   const std::vector<AddedToken>& added_tokens, std::vector<SentencePieceModel::Piece>* pieces,
                   SentencePieceModel::Options* options) {
  if (!root.contains("model") || !root["model"].is_object()) {
    return KeyError(name, "model", "expected an object");
  }
  const json& model = root["model"];
  const json type = model.contains("type") ? model["type"] : json("Unigram");
  if (type != "Unigram") {
    return KeyError(name, "model.type",
                    "only Unigram models are supported, got " + type.dump());
  }
  if (!model.contains("vocab") || !model["vocab"].is_array() || model["vocab"].empty()) {
    return KeyError(name, "model.vocab", "expected a non-empty array of [piece, score]");
  }
  const json& vocab = model["vocab"];
  for (size_t i = 0; i < vocab.size(); ++i) {
    const json& e = vocab[i];
    if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_number() ||
        !(std::fabs(e[1].get<double>()) <= std::numeric_limits<float>::max())) {
      return KeyError(name, "model.vocab[" + std::to_string(i) + "]",
                      "expected [piece, score] with a float score");
    }
    pieces->push_back(
        {e[0].get<std::string>(), static_cast<float>(e[1].get<double>()), PieceType::kNormal});
  }
  RAINSERVE_RETURN_IF_ERROR(ReadBool(model, name, "model", "byte_fallback", &options->byte_fallback));
  const json unk = model.contains("unk_id") ? model["unk_id"] : json();
  if (!unk.is_number_integer() || unk.get<int64_t>() < 0 ||
      unk.get<int64_t>() >= static_cast<int64_t>(pieces->size())) {
    return KeyError(name, "model.unk_id",
                    "expected the id of a vocab entry (a Unigram model needs one), got " + unk.dump());
  }
  for (const AddedToken& t : added_tokens) {
    if (t.special && t.id < static_cast<int64_t>(pieces->size())) {
      (*pieces)[static_cast<size_t>(t.id)].type = PieceType::kControl;
    }
  }
  for (SentencePieceModel::Piece& p : *pieces) {
    if (options->byte_fallback && IsBytePieceName(p.text)) p.type = PieceType::kByte;
  }
  SentencePieceModel::Piece& unk_piece = (*pieces)[unk.get<size_t>()];
  unk_piece.type = PieceType::kUnknown;
  options->unk_piece = unk_piece.text;
  return OkStatus();
}

}  // namespace

StatusOr<TokenizerJson> ParseTokenizerJson(const std::string& text, const std::string& name) {
  RAINSERVE_ASSIGN_OR_RETURN(const json root, config_json::ParseObject(text, name));
  TokenizerJson out;
  RAINSERVE_RETURN_IF_ERROR(ReadAddedTokens(root, name, &out.added_tokens));
  SentencePieceModel::Options options;
  RAINSERVE_RETURN_IF_ERROR(ReadCharsmap(root, name, &options.precompiled_charsmap));
  std::vector<SentencePieceModel::Piece> pieces;
  RAINSERVE_RETURN_IF_ERROR(ReadUnigram(root, name, out.added_tokens, &pieces, &options));
  RAINSERVE_ASSIGN_OR_RETURN(
      out.model,
      SentencePieceModel::Build(std::move(pieces), options, name + ": not a valid Unigram model: "));
  return out;
}

namespace {

// The keys both files may carry: the named special tokens and
// additional_special_tokens.
Status ReadSpecialTokens(const json& j, const std::string& name, TokenizerConfig* c) {
  const std::pair<const char*, AddedToken*> named[] = {
      {"eos_token", &c->eos_token}, {"unk_token", &c->unk_token}, {"pad_token", &c->pad_token}};
  for (const auto& [key, token] : named) {
    if (!j.contains(key) || j[key].is_null()) continue;
    RAINSERVE_RETURN_IF_ERROR(ReadAddedToken(j[key], name, key, /*special=*/true, token));
    token->special = true;  // transformers marks the named tokens special
  }
  // transformers 5 writes extra_special_tokens (a list, or an object of
  // named tokens), earlier versions additional_special_tokens (a list).
  for (const char* key : {"additional_special_tokens", "extra_special_tokens"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    const json& list = j[key];
    if (!list.is_array() && !list.is_object()) return KeyError(name, key, "expected an array");
    c->additional_special_tokens.clear();
    size_t i = 0;
    for (const json& value : list) {
      AddedToken t;
      const std::string where = std::string(key) + "[" + std::to_string(i++) + "]";
      RAINSERVE_RETURN_IF_ERROR(ReadAddedToken(value, name, where, /*special=*/true, &t));
      c->additional_special_tokens.push_back(std::move(t));
    }
  }
  return OkStatus();
}

Status ReadConfigFile(const json& j, const std::string& name, TokenizerConfig* c) {
  RAINSERVE_RETURN_IF_ERROR(ReadSpecialTokens(j, name, c));
  RAINSERVE_RETURN_IF_ERROR(config_json::ReadInt(j, name, "extra_ids", 0, kMaxExtraIds, &c->extra_ids));
  if (!j.contains("added_tokens_decoder") || j["added_tokens_decoder"].is_null()) return OkStatus();
  const json& decoder = j["added_tokens_decoder"];
  if (!decoder.is_object()) return KeyError(name, "added_tokens_decoder", "expected an object");
  for (const auto& [key, value] : decoder.items()) {
    const std::string where = "added_tokens_decoder." + key;
    AddedToken t;
    RAINSERVE_RETURN_IF_ERROR(ReadTokenId(json(key), name, where, &t.id));
    RAINSERVE_RETURN_IF_ERROR(ReadAddedToken(value, name, where, /*special=*/false, &t));
    c->added_tokens_decoder.push_back(std::move(t));
  }
  return OkStatus();
}

}  // namespace

StatusOr<TokenizerConfig> ParseTokenizerConfig(const std::optional<std::string>& config_text,
                                               const std::string& config_name,
                                               const std::optional<std::string>& map_text,
                                               const std::string& map_name) {
  TokenizerConfig c;
  if (config_text.has_value()) {
    RAINSERVE_ASSIGN_OR_RETURN(const json j, config_json::ParseObject(*config_text, config_name));
    RAINSERVE_RETURN_IF_ERROR(ReadConfigFile(j, config_name, &c));
  }
  if (map_text.has_value()) {
    RAINSERVE_ASSIGN_OR_RETURN(const json j, config_json::ParseObject(*map_text, map_name));
    RAINSERVE_RETURN_IF_ERROR(ReadSpecialTokens(j, map_name, &c));
  }
  return c;
}

}  // namespace rainserve
