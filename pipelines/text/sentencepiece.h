// SentencePiece unigram models read and run without the SentencePiece
// library: a spiece.model file (a serialized sentencepiece.ModelProto) is
// parsed from the protobuf wire format by hand, and text is encoded to piece
// ids exactly as SentencePieceProcessor::Encode does for a unigram model:
//
//   1. normalization: user-defined symbols copied as they are, otherwise the
//      longest rule of the precompiled charsmap (a Darts-clone double-array
//      trie over UTF-8 keys plus a blob of NUL-terminated replacements), or
//      the character itself, or U+FFFD for each byte of malformed UTF-8;
//      then leading, trailing and repeated spaces removed, a dummy "▁"
//      prefix (or suffix) added and spaces escaped as "▁" (U+2581), each as
//      the model's normalizer_spec / trainer_spec say;
//   2. Viterbi over the pieces that match at each position (scores are log
//      probabilities; user-defined symbols always win; a character no piece
//      covers is <unk> scored min_score - 10);
//   3. runs of <unk> merged into one id, or, with byte_fallback, each <unk>
//      spelled as its UTF-8 bytes' <0xXX> pieces.
//
// A model can also be built from its pieces and options (Build), which is
// how pipelines/text/tokenizer_json.h loads the Unigram model of a tokenizer.json.
// The serving tokenizer (pipelines/text/tokenizer.h) runs the steps separately
// (NormalizeCharacters, then EncodeNormalized per word), as transformers'
// tokenizers pipeline does.
//
// Torch-free and dependency-free (no protobuf): tests/pipelines/
// sentencepiece_test.cc checks Encode id for id against libsentencepiece.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace rainserve {

class SentencePieceModel {
 public:
  // ModelProto.SentencePiece.Type.
  enum class PieceType : uint8_t {
    kNormal = 1,
    kUnknown = 2,
    kControl = 3,
    kUserDefined = 4,
    kUnused = 5,
    kByte = 6,
  };
  struct Piece {
    std::string text;
    float score = 0.0f;
    PieceType type = PieceType::kNormal;
  };

  // The ModelProto fields beside the pieces that steer encoding, with the
  // proto's defaults.
  struct Options {
    std::string precompiled_charsmap;  // normalizer_spec; empty: identity
    bool add_dummy_prefix = true;
    bool remove_extra_whitespaces = true;
    bool escape_whitespaces = true;
    bool treat_whitespace_as_suffix = false;  // trainer_spec
    bool byte_fallback = false;               // trainer_spec
    std::string unk_piece = "<unk>", bos_piece = "<s>", eos_piece = "</s>", pad_piece = "<pad>";
  };

  // Reads and checks <path>. NOT_FOUND when the file cannot be read;
  // INVALID_ARGUMENT naming the file when it is not a well-formed unigram
  // model (truncated or malformed protobuf, a broken charsmap, no <unk>,
  // duplicate pieces, byte pieces without byte_fallback, ...), the checks
  // SentencePiece itself makes when it loads a model. Called at model load.
  static StatusOr<std::unique_ptr<SentencePieceModel>> Load(const std::string& path);

  // Load() from the file's bytes; `name` prefixes the error messages.
  static StatusOr<std::unique_ptr<SentencePieceModel>> Parse(std::string_view bytes,
                                                             const std::string& name);

  // A model from its pieces (id = index) with the checks Parse() makes.
  // INVALID_ARGUMENT "<error_prefix><why>" when they fail.
  static StatusOr<std::unique_ptr<SentencePieceModel>> Build(std::vector<Piece> pieces,
                                                             const Options& options,
                                                             const std::string& error_prefix);

  ~SentencePieceModel();

  // Piece ids of `text` (any bytes). Thread-safe: const and allocation-local.
  std::vector<int> Encode(std::string_view text) const;

  // Step 1 alone: the normalized text the Viterbi search runs on.
  std::string Normalize(std::string_view text) const;

  // The character rules of step 1 alone (user-defined symbols, charsmap,
  // U+FFFD for malformed bytes), without the whitespace rules: what the
  // tokenizers library's Precompiled normalizer does with the charsmap.
  std::string NormalizeCharacters(std::string_view text) const;

  // Which unigram search EncodeNormalized runs.
  enum class Search {
    // SentencePiece's: NORMAL and USER_DEFINED pieces (user-defined ones
    // outscoring any other segmentation of their bytes), scores summed as
    // SentencePiece sums them (stored as float), the unknown score from the
    // lowest NORMAL score.
    kSentencePiece,
    // The tokenizers library's Unigram model: every piece by its own score
    // (CONTROL, UNKNOWN, UNUSED and byte pieces spelled out in the text
    // too), sums in double, the unknown score from the lowest score of all
    // pieces.
    kTokenizers,
  };

  // Steps 2 and 3 on text that is already normalized and escaped.
  std::vector<int> EncodeNormalized(std::string_view normalized,
                                    Search search = Search::kSentencePiece) const;

  // The id of the piece spelled `text`, whatever its type; -1 when none.
  int Find(std::string_view text) const;

  // The normalizer_spec's charsmap blob as the model holds it ("" when none).
  const std::string& precompiled_charsmap() const { return charsmap_; }

  int size() const { return static_cast<int>(pieces_.size()); }
  const Piece& piece(int id) const { return pieces_[static_cast<size_t>(id)]; }

  // Ids of the special pieces as SentencePiece reports them: the piece named
  // by trainer_spec (unk_piece "<unk>", bos_piece "<s>", eos_piece "</s>",
  // pad_piece "<pad>" unless set) when it has the right type (UNKNOWN for
  // unk, CONTROL for the others), else -1.
  int unk_id() const { return unk_id_; }
  int bos_id() const { return bos_id_; }
  int eos_id() const { return eos_id_; }
  int pad_id() const { return pad_id_; }
  bool byte_fallback() const { return byte_fallback_; }

 private:
  class Trie;

  // The last piece of the best segmentation ending at a position.
  struct PathNode {
    int start = -1;
    int id = -1;
  };

  SentencePieceModel();
  // Step 2: the best path's node for every end position.
  template <typename Score>
  std::vector<PathNode> BestPath(std::string_view normalized, Search search) const;
  // Build() in steps; each returns "" or why the pieces are not a model.
  std::string IndexPieces();
  // The score ranges and the trie of every piece.
  void IndexAllPieces();
  void SetSpecialIds(const Options& options);
  std::string LoadCharsmap();
  // Id of `text` as SentencePiece's PieceToId: special pieces first, then
  // the normal ones, else the unknown piece.
  int PieceToId(std::string_view text) const;
  // The replacement of the longest rule that matches a prefix of `input`
  // and the input bytes it consumes (step 1 for one position).
  std::pair<std::string_view, size_t> NormalizePrefix(std::string_view input) const;
  // Longest charsmap key that prefixes `input`: its byte length (0: none)
  // and its replacement.
  size_t MatchCharsmap(std::string_view input, std::string_view* replacement) const;

  std::vector<Piece> pieces_;
  std::unique_ptr<Trie> trie_;          // NORMAL, USER_DEFINED and UNUSED pieces -> id
  std::unique_ptr<Trie> user_symbols_;  // USER_DEFINED pieces; null when none
  std::unique_ptr<Trie> all_trie_;      // every piece (Search::kTokenizers)
  std::vector<std::pair<std::string, int>> reserved_;  // other pieces, sorted by text
  std::vector<int> byte_ids_;                          // byte_fallback: id of <0xXX>, [256]
  int unknown_id_ = -1;  // the UNKNOWN piece: what the encoder emits for unknown text
  int unk_id_ = -1, bos_id_ = -1, eos_id_ = -1, pad_id_ = -1;
  float min_score_ = 0.0f, max_score_ = 0.0f;  // over NORMAL pieces, as SentencePiece sets them
  double min_score_all_ = 0.0;                 // over all pieces, as tokenizers sets it

  // Normalizer: the charsmap blob, its units (Darts-clone, little-endian uint32) and the
  // blob of replacements their values point into; empty when the model has
  // no charsmap (identity).
  std::string charsmap_;
  std::vector<uint32_t> charsmap_units_;
  std::string charsmap_strings_;
  bool add_dummy_prefix_ = true;
  bool remove_extra_whitespaces_ = true;
  bool escape_whitespaces_ = true;
  bool treat_whitespace_as_suffix_ = false;
  bool byte_fallback_ = false;
};

}  // namespace rainserve
