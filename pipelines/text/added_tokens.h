// Added tokens (special tokens such as </s>, <pad>, <unk>, <extra_id_N>, and
// user-added ones) split out of a text before the SentencePiece model runs,
// as the tokenizers library's AddedVocabulary does for transformers'
// tokenizers:
//
//   - matching is leftmost-longest over the bytes of the text, scanning left
//     to right; after a match the scan resumes at its end (so matches never
//     overlap), also after a match that single_word then discards;
//   - single_word: the match counts only when the character before it and
//     the one after it (where there is one) are not word characters;
//   - lstrip / rstrip: the whitespace run just before / after the match
//     belongs to the token (lstrip never reaches back past the previous
//     match); that whitespace is then not tokenized, and a match that starts
//     inside whitespace an earlier token took is dropped;
//   - the text between matches is returned as text segments (empty ones
//     dropped).
// Tokens with normalized=false are matched in the raw text, those with
// normalized=true in each text segment after normalization (by their
// normalized content); the caller runs the two passes (pipelines/text/tokenizer.cc).
//
// Whitespace is Unicode White_Space (Rust's \s). Word characters (\w) are
// ASCII letters, digits and '_', and every non-ASCII code point except
// whitespace and the punctuation blocks U+00A1-U+00BF (but ª µ º),
// U+2000-U+206F, U+3000-U+303F and U+FF01-U+FF0F; an approximation of
// Unicode \w that only single_word tokens see (T5/UMT5 tokenizers have none).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace rainserve {

struct AddedToken {
  std::string content;
  int64_t id = -1;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = true;
};

// One piece of a split text: a run of text (id -1) or a matched token.
struct TextSegment {
  std::string_view text;
  int64_t id = -1;
};

class AddedTokenSplitter {
 public:
  // Matches `tokens` by their content (empty contents are ignored; for two
  // tokens with the same content the later wins).
  explicit AddedTokenSplitter(const std::vector<AddedToken>& tokens);

  bool empty() const { return tokens_.empty(); }

  // Appends the segments of `text` (views into it) to *out.
  void Split(std::string_view text, std::vector<TextSegment>* out) const;

 private:
  // The longest token that starts at text[pos], or nullptr.
  const AddedToken* LongestAt(std::string_view text, size_t pos) const;

  std::vector<AddedToken> tokens_;                    // distinct contents
  std::vector<std::vector<uint32_t>> by_first_byte_;  // [256] indices into tokens_
};

// Unicode White_Space, as Rust's char::is_whitespace and the regex \s.
bool IsUnicodeWhitespace(uint32_t cp);

// Decodes the UTF-8 character at s[i] into *cp and returns its length; a
// malformed or truncated sequence reads as one byte (cp = U+FFFD).
size_t DecodeUtf8At(std::string_view s, size_t i, uint32_t* cp);

}  // namespace rainserve
