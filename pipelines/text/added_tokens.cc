// Added-token splitting (pipelines/text/added_tokens.h says the rules).
#include "pipelines/text/added_tokens.h"

#include <unordered_map>

namespace rainserve {
namespace {

constexpr uint32_t kMalformed = 0xFFFD;

// Rust regex \w, approximated (the header says how).
bool IsWordChar(uint32_t cp) {
  if (cp < 0x80) {
    return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9') ||
           cp == '_';
  }
  if (IsUnicodeWhitespace(cp)) return false;
  if (cp >= 0xA1 && cp <= 0xBF) return cp == 0xAA || cp == 0xB5 || cp == 0xBA;
  return !((cp >= 0x2000 && cp <= 0x206F) || (cp >= 0x3000 && cp <= 0x303F) ||
           (cp >= 0xFF01 && cp <= 0xFF0F));
}

// The last character of `s` (which is not empty).
uint32_t LastChar(std::string_view s) {
  size_t i = s.size() - 1;
  // Back over at most three continuation bytes to the lead byte.
  for (int k = 0; k < 3 && i > 0 && (static_cast<uint8_t>(s[i]) & 0xC0) == 0x80; ++k) --i;
  uint32_t cp = kMalformed;
  return DecodeUtf8At(s, i, &cp) == s.size() - i ? cp : kMalformed;
}

// Byte length of the whitespace run that starts s.
size_t LeadingWhitespace(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    uint32_t cp = 0;
    const size_t len = DecodeUtf8At(s, i, &cp);
    if (!IsUnicodeWhitespace(cp)) break;
    i += len;
  }
  return i;
}

// Byte offset where the whitespace run that ends s begins.
size_t TrailingWhitespaceStart(std::string_view s) {
  size_t end = 0;  // just past the last non-whitespace character
  for (size_t i = 0; i < s.size();) {
    uint32_t cp = 0;
    const size_t len = DecodeUtf8At(s, i, &cp);
    i += len;
    if (!IsUnicodeWhitespace(cp)) end = i;
  }
  return end;
}

}  // namespace

bool IsUnicodeWhitespace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

size_t DecodeUtf8At(std::string_view s, size_t i, uint32_t* cp) {
  const auto b0 = static_cast<uint8_t>(s[i]);
  const size_t n = b0 < 0x80 ? 1 : (b0 >> 5) == 0x6 ? 2 : (b0 >> 4) == 0xE ? 3 : (b0 >> 3) == 0x1E ? 4 : 0;
  *cp = kMalformed;
  if (n == 0 || s.size() - i < n) return 1;
  uint32_t v = n == 1 ? b0 : n == 2 ? (b0 & 0x1Fu) : n == 3 ? (b0 & 0x0Fu) : (b0 & 0x07u);
  for (size_t k = 1; k < n; ++k) {
    const auto b = static_cast<uint8_t>(s[i + k]);
    if ((b & 0xC0) != 0x80) return 1;
    v = (v << 6) | (b & 0x3Fu);
  }
  *cp = v;
  return n;
}

AddedTokenSplitter::AddedTokenSplitter(const std::vector<AddedToken>& tokens)
    : by_first_byte_(256) {
  std::unordered_map<std::string, size_t> index;
  for (const AddedToken& t : tokens) {
    if (t.content.empty()) continue;
    const auto [it, inserted] = index.emplace(t.content, tokens_.size());
    if (inserted) {
      tokens_.push_back(t);
    } else {
      tokens_[it->second] = t;
    }
  }
  for (size_t i = 0; i < tokens_.size(); ++i) {
    by_first_byte_[static_cast<uint8_t>(tokens_[i].content[0])].push_back(static_cast<uint32_t>(i));
  }
}

const AddedToken* AddedTokenSplitter::LongestAt(std::string_view text, size_t pos) const {
  const AddedToken* best = nullptr;
  const std::string_view rest = text.substr(pos);
  for (uint32_t i : by_first_byte_[static_cast<uint8_t>(text[pos])]) {
    const AddedToken& t = tokens_[i];
    if (rest.substr(0, t.content.size()) == t.content &&
        (best == nullptr || t.content.size() > best->content.size())) {
      best = &t;
    }
  }
  return best;
}

void AddedTokenSplitter::Split(std::string_view text, std::vector<TextSegment>* out) const {
  size_t done = 0;  // end of the previous token (with its stripped whitespace)
  for (size_t pos = 0; pos < text.size();) {
    const AddedToken* t = tokens_.empty() ? nullptr : LongestAt(text, pos);
    if (t == nullptr) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + t->content.size();
    pos = stop;  // the scan resumes after the match, kept or not
    if (t->single_word) {
      const bool word_before = start > 0 && IsWordChar(LastChar(text.substr(0, start)));
      uint32_t next = 0;
      const bool word_after = stop < text.size() && (DecodeUtf8At(text, stop, &next), IsWordChar(next));
      if (word_before || word_after) continue;
    }
    if (start < done) continue;  // inside the previous token's stripped whitespace
    if (t->lstrip) start = done + TrailingWhitespaceStart(text.substr(done, start - done));
    if (t->rstrip) stop += LeadingWhitespace(text.substr(stop));
    if (start > done) out->push_back({text.substr(done, start - done), -1});
    out->push_back({text.substr(start, stop - start), t->id});
    done = stop;
  }
  if (done < text.size()) out->push_back({text.substr(done), -1});
}

}  // namespace rainserve
