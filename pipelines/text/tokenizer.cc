// UMT5 tokenizer (pipelines/text/tokenizer.h): prompt cleaning and the T5 layout
// of ids around pipelines/text/sentencepiece.h's encoder.
#include "pipelines/text/tokenizer.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <unordered_map>

#include "common/files.h"
#include "pipelines/text/sentencepiece.h"

namespace rainserve {
namespace {

// Appends code point `cp` as UTF-8.
void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Decodes the UTF-8 sequence at s[i]; sets *len to its byte count. Invalid
// or truncated sequences decode as the single byte (len 1, cp = byte | ~0
// marker) so that they are copied through unchanged.
uint32_t DecodeUtf8(const std::string& s, size_t i, size_t* len) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  size_t n = b0 < 0x80 ? 1 : (b0 >> 5) == 0x6 ? 2 : (b0 >> 4) == 0xE ? 3 : (b0 >> 3) == 0x1E ? 4 : 0;
  if (n == 0 || i + n > s.size()) {
    *len = 1;
    return 0xFFFFFFFFu;
  }
  uint32_t cp = n == 1 ? b0 : n == 2 ? (b0 & 0x1F) : n == 3 ? (b0 & 0x0F) : (b0 & 0x07);
  for (size_t k = 1; k < n; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b >> 6) != 0x2) {
      *len = 1;
      return 0xFFFFFFFFu;
    }
    cp = (cp << 6) | (b & 0x3F);
  }
  *len = n;
  return cp;
}

// Python's str.isspace(), which is what the reference's \s matches.
bool IsSpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// One pass of HTML unescaping: the named entities prompts actually carry and
// numeric references (&#39; &#x27;). Unknown or malformed ones stay as they are.
std::string HtmlUnescape(const std::string& s) {
  static const std::unordered_map<std::string, uint32_t> kNamed = {
      {"amp", '&'},     {"lt", '<'},      {"gt", '>'},     {"quot", '"'},    {"apos", '\''},
      {"nbsp", 0xA0},   {"ndash", 0x2013}, {"mdash", 0x2014}, {"hellip", 0x2026},
      {"lsquo", 0x2018}, {"rsquo", 0x2019}, {"ldquo", 0x201C}, {"rdquo", 0x201D}};
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '&') {
      out.push_back(s[i]);
      continue;
    }
    const size_t semi = s.find(';', i + 1);
    if (semi == std::string::npos || semi - i > 12) {
      out.push_back('&');
      continue;
    }
    const std::string name = s.substr(i + 1, semi - i - 1);
    uint32_t cp = 0;
    bool ok = false;
    if (name.size() >= 2 && name[0] == '#') {
      const bool hex = name[1] == 'x' || name[1] == 'X';
      const std::string digits = name.substr(hex ? 2 : 1);
      ok = !digits.empty() && digits.size() <= 8;
      for (char c : digits) {
        const bool digit = (c >= '0' && c <= '9') ||
                           (hex && ((c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')));
        if (!digit) ok = false;
      }
      if (ok) cp = static_cast<uint32_t>(std::stoul(digits, nullptr, hex ? 16 : 10));
      ok = ok && cp > 0 && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
    } else {
      const auto it = kNamed.find(name);
      ok = it != kNamed.end();
      if (ok) cp = it->second;
    }
    if (!ok) {
      out.push_back('&');
      continue;
    }
    AppendUtf8(cp, &out);
    i = semi;
  }
  return out;
}

}  // namespace

std::string CleanPrompt(const std::string& text) {
  const std::string s = HtmlUnescape(HtmlUnescape(text));
  std::string out;
  out.reserve(s.size());
  bool pending_space = false;
  for (size_t i = 0; i < s.size();) {
    size_t len = 1;
    const uint32_t cp = DecodeUtf8(s, i, &len);
    if (IsSpace(cp)) {
      pending_space = true;
    } else {
      if (pending_space && !out.empty()) out.push_back(' ');
      pending_space = false;
      out.append(s, i, len);
    }
    i += len;
  }
  return out;
}

UMT5Tokenizer::UMT5Tokenizer() = default;
UMT5Tokenizer::~UMT5Tokenizer() = default;

namespace {

constexpr std::string_view kMetaspace = "\xe2\x96\x81";  // U+2581

// A file's text, or nullopt when it does not exist.
StatusOr<std::optional<std::string>> ReadOptionalFile(const std::string& path) {
  std::string text;
  const Status st = ReadFile(path, &text);
  if (st.code() == StatusCode::kNotFound) return std::optional<std::string>();
  RAINSERVE_RETURN_IF_ERROR(st);
  return std::optional<std::string>(std::move(text));
}

// What transformers takes from a spiece.model beside its vocabulary: the
// CONTROL pieces as special added tokens, the USER_DEFINED ones as plain
// added tokens, none normalized.
std::vector<AddedToken> SentencePieceAddedTokens(const SentencePieceModel& model) {
  std::vector<AddedToken> tokens;
  for (int id = 0; id < model.size(); ++id) {
    const SentencePieceModel::PieceType type = model.piece(id).type;
    if (type != SentencePieceModel::PieceType::kControl &&
        type != SentencePieceModel::PieceType::kUserDefined) {
      continue;
    }
    AddedToken t;
    t.content = model.piece(id).text;
    t.id = id;
    t.special = type == SentencePieceModel::PieceType::kControl;
    tokens.push_back(std::move(t));
  }
  return tokens;
}

}  // namespace

StatusOr<std::unique_ptr<UMT5Tokenizer>> UMT5Tokenizer::Load(const std::string& dir) {
  std::unique_ptr<UMT5Tokenizer> tok(new UMT5Tokenizer());
  std::vector<AddedToken> tokens;
  const std::string json_path = dir + "/tokenizer.json";
  RAINSERVE_ASSIGN_OR_RETURN(const std::optional<std::string> json_text, ReadOptionalFile(json_path));
  if (json_text.has_value()) {
    RAINSERVE_ASSIGN_OR_RETURN(TokenizerJson parsed, ParseTokenizerJson(*json_text, json_path));
    tok->model_ = std::move(parsed.model);
    tokens = std::move(parsed.added_tokens);
  } else {
    auto model = SentencePieceModel::Load(dir + "/spiece.model");
    if (model.status().code() == StatusCode::kNotFound) {
      return NotFoundError(model.status().message() + " (and there is no " + json_path + ")");
    }
    RAINSERVE_RETURN_IF_ERROR(model.status());
    tok->model_ = std::move(*model);
    tokens = SentencePieceAddedTokens(*tok->model_);
  }
  const std::string config_path = dir + "/tokenizer_config.json";
  const std::string map_path = dir + "/special_tokens_map.json";
  RAINSERVE_ASSIGN_OR_RETURN(const std::optional<std::string> config_text,
                             ReadOptionalFile(config_path));
  RAINSERVE_ASSIGN_OR_RETURN(const std::optional<std::string> map_text, ReadOptionalFile(map_path));
  RAINSERVE_ASSIGN_OR_RETURN(const TokenizerConfig config,
                             ParseTokenizerConfig(config_text, config_path, map_text, map_path));
  tok->SetAddedTokens(std::move(tokens), config);
  if (tok->pad_id_ < 0 || tok->eos_id_ < 0) {
    return InvalidArgumentError(dir + ": the tokenizer has no pad or eos token (pad_token '" +
                                config.pad_token.content + "', eos_token '" +
                                config.eos_token.content + "')");
  }
  return tok;
}

void UMT5Tokenizer::SetAddedTokens(std::vector<AddedToken> tokens, const TokenizerConfig& config) {
  // The id of the token spelled `content`: an added token's (the last one
  // wins, as in the splitter), else the vocabulary's, else -1.
  const auto id_of = [&tokens, this](const std::string& content) -> int64_t {
    for (auto it = tokens.rbegin(); it != tokens.rend(); ++it) {
      if (it->content == content) return it->id;
    }
    return model_->Find(content);
  };
  const auto present = [&tokens](const std::string& content) {
    return std::any_of(tokens.begin(), tokens.end(),
                       [&content](const AddedToken& t) { return t.content == content; });
  };
  // added_tokens_decoder is what transformers re-adds on top: its flags
  // replace those of a token already there, which keeps its id.
  for (AddedToken t : config.added_tokens_decoder) {
    bool updated = false;
    for (AddedToken& have : tokens) {
      if (have.content != t.content) continue;
      t.id = have.id;
      have = t;
      updated = true;
    }
    if (updated) continue;
    if (const int64_t vocab_id = model_->Find(t.content); vocab_id >= 0) t.id = vocab_id;
    tokens.push_back(std::move(t));
  }
  int64_t next_id = model_->size();
  for (const AddedToken& t : tokens) next_id = std::max(next_id, t.id + 1);
  for (AddedToken t : {config.eos_token, config.unk_token, config.pad_token}) {
    if (t.content.empty() || present(t.content)) continue;
    t.id = id_of(t.content);
    if (t.id < 0) t.id = next_id++;
    tokens.push_back(std::move(t));
  }
  std::vector<AddedToken> extra = config.additional_special_tokens;
  if (std::none_of(extra.begin(), extra.end(), [](const AddedToken& t) {
        return t.content.find("<extra_id_") != std::string::npos;
      })) {
    for (int64_t i = 0; i < config.extra_ids; ++i) extra.push_back({"<extra_id_" + std::to_string(i) + ">"});
  }
  std::vector<AddedToken*> missing;  // not in the vocabulary: ids after it, in reverse
  for (AddedToken& t : extra) {
    if (t.content.empty() || present(t.content)) continue;
    t.id = id_of(t.content);
    if (t.id < 0) missing.push_back(&t);
    tokens.push_back(t);
  }
  for (size_t k = 0; k < missing.size(); ++k) {
    const int64_t id = next_id + static_cast<int64_t>(missing.size() - 1 - k);
    for (AddedToken& t : tokens) {
      if (t.id < 0 && t.content == missing[k]->content) t.id = id;
    }
  }
  next_id += static_cast<int64_t>(missing.size());

  std::vector<AddedToken> normalized;
  for (const AddedToken& t : tokens) {
    if (!t.normalized) continue;
    normalized.push_back(t);
    normalized.back().content = model_->NormalizeCharacters(t.content);
  }
  raw_tokens_ = std::make_unique<AddedTokenSplitter>(tokens);
  normalized_tokens_ = std::make_unique<AddedTokenSplitter>(normalized);
  pad_id_ = id_of(config.pad_token.content);
  eos_id_ = id_of(config.eos_token.content);
  unk_id_ = id_of(config.unk_token.content);
  vocab_size_ = next_id;
  added_tokens_ = std::move(tokens);
}

std::vector<int64_t> UMT5Tokenizer::Pieces(const std::string& text) const {
  std::vector<int64_t> ids;
  std::vector<TextSegment> segments, parts;
  raw_tokens_->Split(text, &segments);
  for (const TextSegment& segment : segments) {
    if (segment.id >= 0) {
      ids.push_back(segment.id);
      continue;
    }
    const std::string normalized = model_->NormalizeCharacters(segment.text);
    parts.clear();
    normalized_tokens_->Split(normalized, &parts);
    for (const TextSegment& part : parts) {
      if (part.id >= 0) {
        ids.push_back(part.id);
      } else {
        EncodeWords(part.text, &ids);
      }
    }
  }
  return ids;
}

void UMT5Tokenizer::EncodeWords(std::string_view text, std::vector<int64_t>* ids) const {
  const auto encode = [this, ids](std::string_view piece) {
    for (int id : model_->EncodeNormalized(piece, SentencePieceModel::Search::kTokenizers)) {
      ids->push_back(id);
    }
  };
  std::string word;
  for (size_t i = 0; i <= text.size();) {
    uint32_t cp = 0;
    const size_t len = i < text.size() ? DecodeUtf8At(text, i, &cp) : 0;
    if (i < text.size() && !IsUnicodeWhitespace(cp)) {
      word.append(text.substr(i, len));
      i += len;
      continue;
    }
    if (!word.empty()) {
      // Metaspace: "\u2581" prepended unless there, then cut before each one.
      if (word.compare(0, kMetaspace.size(), kMetaspace) != 0) word.insert(0, kMetaspace);
      size_t start = 0;
      for (size_t cut = word.find(kMetaspace, kMetaspace.size()); cut != std::string::npos;
           cut = word.find(kMetaspace, cut + kMetaspace.size())) {
        encode(std::string_view(word).substr(start, cut - start));
        start = cut;
      }
      encode(std::string_view(word).substr(start));
      word.clear();
    }
    if (i == text.size()) break;
    i += len;
  }
}

TokenizedText UMT5Tokenizer::Encode(const std::string& text, int64_t max_length) const {
  max_length = std::max<int64_t>(max_length, 1);
  std::vector<int64_t> pieces = Pieces(CleanPrompt(text));
  // Truncation keeps room for the EOS that add_special_tokens appends.
  if (static_cast<int64_t>(pieces.size()) > max_length - 1) pieces.resize(max_length - 1);
  TokenizedText t;
  t.ids = std::move(pieces);
  t.ids.push_back(eos_id_);
  t.length = static_cast<int64_t>(t.ids.size());
  t.mask.assign(t.ids.size(), 1);
  t.ids.resize(max_length, pad_id_);
  t.mask.resize(max_length, 0);
  return t;
}

TokenizedBatch UMT5Tokenizer::EncodeBatch(const std::vector<std::string>& texts,
                                          int64_t max_length) const {
  max_length = std::max<int64_t>(max_length, 1);
  const auto b = static_cast<int64_t>(texts.size());
  TokenizedBatch batch;
  batch.ids = at::empty({b, max_length}, at::kLong);
  batch.mask = at::empty({b, max_length}, at::kLong);
  int64_t* ids = batch.ids.data_ptr<int64_t>();
  int64_t* mask = batch.mask.data_ptr<int64_t>();
  for (int64_t i = 0; i < b; ++i) {
    const TokenizedText t = Encode(texts[static_cast<size_t>(i)], max_length);
    std::memcpy(ids + i * max_length, t.ids.data(), sizeof(int64_t) * max_length);
    std::memcpy(mask + i * max_length, t.mask.data(), sizeof(int64_t) * max_length);
    batch.lengths.push_back(t.length);
  }
  return batch;
}

}  // namespace rainserve
