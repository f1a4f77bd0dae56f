// UMT5 tokenizer (pipelines/text/tokenizer.h): prompt cleaning and the T5 layout
// of ids around pipelines/text/sentencepiece.h's encoder.
#include "pipelines/text/tokenizer.h"

#include <algorithm>
#include <cstring>
#include <unordered_map>

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

StatusOr<std::unique_ptr<UMT5Tokenizer>> UMT5Tokenizer::Load(const std::string& dir) {
  const std::string path = dir + "/spiece.model";
  std::unique_ptr<UMT5Tokenizer> tok(new UMT5Tokenizer());
  RAINSERVE_ASSIGN_OR_RETURN(tok->model_, SentencePieceModel::Load(path));
  tok->pad_id_ = tok->model_->pad_id();
  tok->eos_id_ = tok->model_->eos_id();
  tok->unk_id_ = tok->model_->unk_id();
  if (tok->pad_id_ < 0 || tok->eos_id_ < 0) {
    return InvalidArgumentError(path + ": the model defines no pad or eos piece (pad_id " +
                                std::to_string(tok->pad_id_) + ", eos_id " +
                                std::to_string(tok->eos_id_) + ")");
  }
  return tok;
}

int64_t UMT5Tokenizer::vocab_size() const { return model_->size(); }

std::vector<int64_t> UMT5Tokenizer::Pieces(const std::string& text) const {
  const std::vector<int> ids = model_->Encode(text);
  return std::vector<int64_t>(ids.begin(), ids.end());
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
