// SentencePiece unigram models without the SentencePiece library
// (pipelines/text/sentencepiece.h says what it does). Three parts, in file order:
// the protobuf wire-format reader and the ModelProto fields it extracts; the
// tries (our own byte trie over the pieces, and a reader of the Darts-clone
// double array that a model's precompiled charsmap is stored as); the
// normalizer and the Viterbi encoder.
#include "pipelines/text/sentencepiece.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <limits>
#include <utility>

#include "common/files.h"

namespace rainserve {
namespace {

// ---- Protobuf wire format ---------------------------------------------------
//
// A message is a sequence of fields: a varint key (field_number << 3 |
// wire_type) then the value. Varints are little-endian base-128 (at most 10
// bytes); length-delimited values (strings, bytes, sub-messages) are a varint
// length then that many bytes; fixed32/fixed64 are little-endian. Groups
// (wire types 3 and 4) are obsolete and only skipped. As in protobuf, a
// field that appears again overrides a scalar, merges into a sub-message and
// appends to a repeated field; a known field with an unexpected wire type or
// an enum value out of range is an unknown field and is ignored.

enum WireType : uint32_t {
  kVarint = 0,
  kFixed64 = 1,
  kLengthDelimited = 2,
  kStartGroup = 3,
  kEndGroup = 4,
  kFixed32 = 5,
};

// The little-endian unsigned integer in `bytes` (at most 8 of them).
uint64_t LittleEndian(std::string_view bytes) {
  uint64_t v = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    v |= uint64_t{static_cast<uint8_t>(bytes[i])} << (8 * i);
  }
  return v;
}

struct WireField {
  uint32_t number = 0;
  uint32_t type = kVarint;
  uint64_t value = 0;       // kVarint, kFixed32, kFixed64
  std::string_view bytes;   // kLengthDelimited
  size_t bytes_offset = 0;  // offset of `bytes` in the file
};

class WireReader {
 public:
  // `data` starts at byte `offset` of the file (for error messages).
  WireReader(std::string_view data, size_t offset) : data_(data), offset_(offset) {}

  bool AtEnd() const { return pos_ == data_.size(); }
  const std::string& error() const { return error_; }

  // Reads the next field, key and value. A group is skipped whole and
  // returned as a kStartGroup field. False with error() set when the bytes
  // are not a well-formed message.
  bool Next(WireField* f) {
    return ReadKey(&f->number, &f->type) && ReadValue(f->number, f->type, f, /*depth=*/0);
  }

 private:
  // Protobuf's default recursion limit, for nested groups.
  static constexpr int kMaxDepth = 100;

  bool Fail(const std::string& what) {
    error_ = "malformed protobuf at byte " + std::to_string(offset_ + pos_) + ": " + what;
    return false;
  }

  bool ReadVarint(uint64_t* value) {
    uint64_t v = 0;
    for (int i = 0; i < 10; ++i) {
      if (pos_ == data_.size()) return Fail("truncated varint");
      const auto b = static_cast<uint8_t>(data_[pos_++]);
      v |= static_cast<uint64_t>(b & 0x7F) << (7 * i);
      if ((b & 0x80) == 0) {
        *value = v;
        return true;
      }
    }
    return Fail("varint longer than 10 bytes");
  }

  bool ReadKey(uint32_t* number, uint32_t* type) {
    uint64_t key = 0;
    if (!ReadVarint(&key)) return false;
    if (key > UINT32_MAX || (key >> 3) == 0) return Fail("invalid field key");
    *number = static_cast<uint32_t>(key >> 3);
    *type = static_cast<uint32_t>(key & 7);
    return true;
  }

  bool ReadLittleEndian(size_t size, uint64_t* value) {
    if (data_.size() - pos_ < size) return Fail("truncated fixed-size value");
    *value = LittleEndian(data_.substr(pos_, size));
    pos_ += size;
    return true;
  }

  bool ReadValue(uint32_t number, uint32_t type, WireField* f, int depth) {
    switch (type) {
      case kVarint:
        return ReadVarint(&f->value);
      case kFixed64:
        return ReadLittleEndian(8, &f->value);
      case kFixed32:
        return ReadLittleEndian(4, &f->value);
      case kLengthDelimited: {
        uint64_t length = 0;
        if (!ReadVarint(&length)) return false;
        if (length > data_.size() - pos_) return Fail("length-delimited field past the end");
        f->bytes = data_.substr(pos_, static_cast<size_t>(length));
        f->bytes_offset = offset_ + pos_;
        pos_ += static_cast<size_t>(length);
        return true;
      }
      case kStartGroup:
        return SkipGroup(number, depth + 1);
      case kEndGroup:
        return Fail("end of a group that was not started");
      default:
        return Fail("invalid wire type " + std::to_string(type));
    }
  }

  // Skips fields up to the end-group key of group `number`.
  bool SkipGroup(uint32_t number, int depth) {
    if (depth > kMaxDepth) return Fail("groups nested too deeply");
    while (true) {
      WireField inner;
      if (!ReadKey(&inner.number, &inner.type)) return false;
      if (inner.type == kEndGroup) {
        return inner.number == number ? true : Fail("mismatched end of group");
      }
      if (!ReadValue(inner.number, inner.type, &inner, depth)) return false;
    }
  }

  std::string_view data_;
  size_t offset_ = 0;
  size_t pos_ = 0;
  std::string error_;
};

// The ModelProto fields the encoder needs (sentencepiece_model.proto):
//   ModelProto      pieces = 1 (repeated SentencePiece), trainer_spec = 2,
//                   normalizer_spec = 3
//   SentencePiece   piece = 1 (string), score = 2 (float), type = 3 (enum)
//   TrainerSpec     model_type = 3 (UNIGRAM 1, BPE 2, WORD 3, CHAR 4),
//                   treat_whitespace_as_suffix = 24, byte_fallback = 35,
//                   unk_piece = 45, bos_piece = 46, eos_piece = 47,
//                   pad_piece = 48
//   NormalizerSpec  name = 1, precompiled_charsmap = 2, add_dummy_prefix = 3,
//                   remove_extra_whitespaces = 4, escape_whitespaces = 5
// Defaults are the proto's. TrainerSpec's unk_id/bos_id/eos_id/pad_id
// (40-43) only steer training: a loaded model finds its special pieces by
// the *_piece names, as SentencePieceProcessor does.
struct TrainerFields {
  int model_type = 1;
  bool treat_whitespace_as_suffix = false;
  bool byte_fallback = false;
  std::string unk_piece = "<unk>", bos_piece = "<s>", eos_piece = "</s>", pad_piece = "<pad>";
};

struct NormalizerFields {
  std::string_view precompiled_charsmap;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
};

struct ModelFields {
  std::vector<SentencePieceModel::Piece> pieces;
  TrainerFields trainer;
  NormalizerFields normalizer;
};

bool IsVarint(const WireField& f) { return f.type == kVarint; }
bool IsBytes(const WireField& f) { return f.type == kLengthDelimited; }

// Calls on_field(field) for each field of the message `bytes` (at `offset`
// in the file) until it returns false. False when the message is malformed
// (*error says where) or on_field returned false.
template <typename OnField>
bool ForEachField(std::string_view bytes, size_t offset, std::string* error, OnField&& on_field) {
  WireReader r(bytes, offset);
  WireField f;
  while (!r.AtEnd()) {
    if (!r.Next(&f)) {
      *error = r.error();
      return false;
    }
    if (!on_field(f)) return false;
  }
  return true;
}

void ReadPieceField(const WireField& f, SentencePieceModel::Piece* p) {
  if (f.number == 1 && IsBytes(f)) {
    p->text.assign(f.bytes);
  } else if (f.number == 2 && f.type == kFixed32) {
    const auto bits = static_cast<uint32_t>(f.value);
    std::memcpy(&p->score, &bits, sizeof(bits));
  } else if (f.number == 3 && IsVarint(f) && f.value >= 1 && f.value <= 6) {
    p->type = static_cast<SentencePieceModel::PieceType>(f.value);
  }
}

void ReadTrainerField(const WireField& f, TrainerFields* t) {
  if (f.number == 3 && IsVarint(f) && f.value >= 1 && f.value <= 4) {
    t->model_type = static_cast<int>(f.value);
  } else if (f.number == 24 && IsVarint(f)) {
    t->treat_whitespace_as_suffix = f.value != 0;
  } else if (f.number == 35 && IsVarint(f)) {
    t->byte_fallback = f.value != 0;
  } else if (f.number >= 45 && f.number <= 48 && IsBytes(f)) {
    std::string* names[] = {&t->unk_piece, &t->bos_piece, &t->eos_piece, &t->pad_piece};
    names[f.number - 45]->assign(f.bytes);
  }
}

void ReadNormalizerField(const WireField& f, NormalizerFields* n) {
  if (f.number == 2 && IsBytes(f)) {
    n->precompiled_charsmap = f.bytes;
  } else if (f.number == 3 && IsVarint(f)) {
    n->add_dummy_prefix = f.value != 0;
  } else if (f.number == 4 && IsVarint(f)) {
    n->remove_extra_whitespaces = f.value != 0;
  } else if (f.number == 5 && IsVarint(f)) {
    n->escape_whitespaces = f.value != 0;
  }
}

bool ReadModelProto(std::string_view bytes, ModelFields* m, std::string* error) {
  return ForEachField(bytes, 0, error, [m, error](const WireField& f) {
    if (!IsBytes(f)) return true;
    // Reads the sub-message `f` field by field with `read`.
    const auto each = [&f, error](auto&& read) {
      return ForEachField(f.bytes, f.bytes_offset, error, [&read](const WireField& g) {
        read(g);
        return true;
      });
    };
    switch (f.number) {
      case 1:
        m->pieces.emplace_back();
        return each([m](const WireField& g) { ReadPieceField(g, &m->pieces.back()); });
      case 2:
        return each([m](const WireField& g) { ReadTrainerField(g, &m->trainer); });
      case 3:
        return each([m](const WireField& g) { ReadNormalizerField(g, &m->normalizer); });
      default:
        return true;
    }
  });
}

// ---- Darts-clone double array (the precompiled charsmap) --------------------
//
// Each unit is a little-endian uint32. A unit with bit 31 set holds a value
// (bits 0-30); otherwise bits 0-7 are the label of the edge into it, bit 8
// says the node ends a key (its value sits at the unit `id ^ offset`), and
// bits 10-31 are the offset to its children, shifted left by 8 more when
// bit 9 is set. The child of node `id` for byte c is unit
// `id ^ offset(id) ^ c`, valid when its label is c.
bool DartsHasLeaf(uint32_t unit) { return ((unit >> 8) & 1) == 1; }
uint32_t DartsValue(uint32_t unit) { return unit & 0x7FFFFFFFu; }
uint32_t DartsLabel(uint32_t unit) { return unit & 0x800000FFu; }
uint32_t DartsOffset(uint32_t unit) { return (unit >> 10) << ((unit & (1u << 9)) >> 6); }

// SentencePiece keeps the first 32 charsmap matches of a prefix search (its
// builder never makes more) and the first 64 user-defined-symbol matches.
constexpr int kMaxCharsmapMatches = 32;
constexpr int kMaxUserSymbolMatches = 64;

// ---- Text -----------------------------------------------------------------

constexpr std::string_view kSpaceSymbol = "\xe2\x96\x81";      // U+2581, escapes ' '
constexpr std::string_view kReplacementChar = "\xef\xbf\xbd";  // U+FFFD
constexpr float kUnkPenalty = 10.0f;

// Bytes of the UTF-8 character led by byte `b`, judged by its high bits only
// (continuation and invalid lead bytes count 1), as the Viterbi search steps.
size_t OneCharLen(char b) {
  static constexpr uint8_t kLen[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLen[static_cast<uint8_t>(b) >> 4];
}

bool IsTrailByte(char b) { return (static_cast<uint8_t>(b) & 0xC0) == 0x80; }

// Length of the well-formed UTF-8 character at the start of `s` (non-empty),
// or 0 when it is malformed: a bad lead or trail byte, an overlong form, a
// surrogate, past U+10FFFF, or truncated. U+FFFD itself is well-formed.
size_t ValidUtf8Length(std::string_view s) {
  const auto b0 = static_cast<uint8_t>(s[0]);
  if (b0 < 0x80) return 1;
  size_t n = 0;
  uint32_t cp = 0, min = 0;
  if ((b0 & 0xE0) == 0xC0) {
    n = 2, cp = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    n = 3, cp = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    n = 4, cp = b0 & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (s.size() < n) return 0;
  for (size_t i = 1; i < n; ++i) {
    if (!IsTrailByte(s[i])) return 0;
    cp = (cp << 6) | (static_cast<uint8_t>(s[i]) & 0x3F);
  }
  const bool valid = cp >= min && (cp < 0xD800 || (cp >= 0xE000 && cp <= 0x10FFFF));
  return valid ? n : 0;
}

// SentencePiece's name of byte piece b: "<0x41>" for 'A'.
std::string BytePiece(int b) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  return std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">";
}

// The byte a byte piece names ("<0x41>": 65, upper-case hex only), or -1.
int ByteOfPiece(std::string_view text) {
  const auto hex = [](char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
  };
  if (text.size() != 6 || text.substr(0, 3) != "<0x" || text[5] != '>') return -1;
  const int hi = hex(text[3]), lo = hex(text[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

}  // namespace

// ---- Piece trie -------------------------------------------------------------

// A byte trie over sorted, unique keys: node 0 is the root; the children of
// a node are a run of edges sorted by byte.
class SentencePieceModel::Trie {
 public:
  // `keys`: (text, value), sorted by text, texts unique and non-empty.
  explicit Trie(const std::vector<std::pair<std::string_view, int>>& keys) {
    struct Range {
      uint32_t node;
      size_t begin, end, depth;
    };
    nodes_.emplace_back();
    std::deque<Range> todo = {{0, 0, keys.size(), 0}};
    while (!todo.empty()) {
      const Range r = todo.front();
      todo.pop_front();
      size_t i = r.begin;
      // The key that ends here sorts first in its range.
      if (i < r.end && keys[i].first.size() == r.depth) nodes_[r.node].value = keys[i++].second;
      nodes_[r.node].first_edge = static_cast<uint32_t>(labels_.size());
      while (i < r.end) {
        const char byte = keys[i].first[r.depth];
        size_t j = i + 1;
        while (j < r.end && keys[j].first[r.depth] == byte) ++j;
        const auto child = static_cast<uint32_t>(nodes_.size());
        nodes_.emplace_back();
        labels_.push_back(static_cast<uint8_t>(byte));
        children_.push_back(child);
        todo.push_back({child, i, j, r.depth + 1});
        i = j;
      }
      nodes_[r.node].num_edges = static_cast<uint32_t>(labels_.size()) - nodes_[r.node].first_edge;
    }
  }

  // Calls visit(length, value) for each key that is a prefix of `text`,
  // shortest first, until visit returns false.
  template <typename Visit>
  void ForEachPrefix(std::string_view text, Visit&& visit) const {
    uint32_t node = 0;
    for (size_t i = 0; i < text.size(); ++i) {
      if (!Child(node, static_cast<uint8_t>(text[i]), &node)) return;
      if (nodes_[node].value >= 0 && !visit(i + 1, nodes_[node].value)) return;
    }
  }

  // The value of `key`, or -1.
  int Find(std::string_view key) const {
    uint32_t node = 0;
    for (char c : key) {
      if (!Child(node, static_cast<uint8_t>(c), &node)) return -1;
    }
    return nodes_[node].value;
  }

 private:
  struct Node {
    int value = -1;
    uint32_t first_edge = 0, num_edges = 0;
  };

  bool Child(uint32_t node, uint8_t byte, uint32_t* child) const {
    const auto begin = labels_.begin() + nodes_[node].first_edge;
    const auto end = begin + nodes_[node].num_edges;
    const auto it = std::lower_bound(begin, end, byte);
    if (it == end || *it != byte) return false;
    *child = children_[static_cast<size_t>(it - labels_.begin())];
    return true;
  }

  std::vector<Node> nodes_;
  std::vector<uint8_t> labels_;     // edge bytes, one run per node
  std::vector<uint32_t> children_;  // edge targets, parallel to labels_
};

// ---- Loading ------------------------------------------------------------------

SentencePieceModel::SentencePieceModel() = default;
SentencePieceModel::~SentencePieceModel() = default;

StatusOr<std::unique_ptr<SentencePieceModel>> SentencePieceModel::Load(const std::string& path) {
  std::string bytes;
  RAINSERVE_RETURN_IF_ERROR(ReadFile(path, &bytes));
  return Parse(bytes, path);
}

StatusOr<std::unique_ptr<SentencePieceModel>> SentencePieceModel::Parse(std::string_view bytes,
                                                                        const std::string& name) {
  const std::string prefix = name + ": not a valid SentencePiece model: ";
  ModelFields m;
  std::string error;
  if (!ReadModelProto(bytes, &m, &error)) return InvalidArgumentError(prefix + error);
  if (m.trainer.model_type != 1) {
    static const char* const kTypes[] = {"", "unigram", "BPE", "word", "char"};
    return InvalidArgumentError(name + ": a " + kTypes[m.trainer.model_type] +
                                " SentencePiece model; only unigram models are supported");
  }
  Options options;
  options.precompiled_charsmap.assign(m.normalizer.precompiled_charsmap);
  options.add_dummy_prefix = m.normalizer.add_dummy_prefix;
  options.remove_extra_whitespaces = m.normalizer.remove_extra_whitespaces;
  options.escape_whitespaces = m.normalizer.escape_whitespaces;
  options.treat_whitespace_as_suffix = m.trainer.treat_whitespace_as_suffix;
  options.byte_fallback = m.trainer.byte_fallback;
  options.unk_piece = m.trainer.unk_piece;
  options.bos_piece = m.trainer.bos_piece;
  options.eos_piece = m.trainer.eos_piece;
  options.pad_piece = m.trainer.pad_piece;
  return Build(std::move(m.pieces), options, prefix);
}

StatusOr<std::unique_ptr<SentencePieceModel>> SentencePieceModel::Build(
    std::vector<Piece> pieces, const Options& options, const std::string& error_prefix) {
  std::unique_ptr<SentencePieceModel> model(new SentencePieceModel());
  model->byte_fallback_ = options.byte_fallback;
  model->treat_whitespace_as_suffix_ = options.treat_whitespace_as_suffix;
  model->add_dummy_prefix_ = options.add_dummy_prefix;
  model->remove_extra_whitespaces_ = options.remove_extra_whitespaces;
  model->escape_whitespaces_ = options.escape_whitespaces;
  model->charsmap_ = options.precompiled_charsmap;
  model->pieces_ = std::move(pieces);
  for (const std::string& why : {model->IndexPieces(), model->LoadCharsmap()}) {
    if (!why.empty()) return InvalidArgumentError(error_prefix + why);
  }
  model->IndexAllPieces();
  model->SetSpecialIds(options);
  return model;
}

std::string SentencePieceModel::IndexPieces() {
  // The checks SentencePiece makes on the pieces. NORMAL, USER_DEFINED and
  // UNUSED pieces are matched in text; the others only by their id or name.
  std::vector<std::pair<std::string_view, int>> matched, user_symbols;
  std::vector<bool> byte_seen(256, false);
  for (size_t i = 0; i < pieces_.size(); ++i) {
    const Piece& p = pieces_[i];
    const int id = static_cast<int>(i);
    if (p.text.empty()) return "piece " + std::to_string(i) + " is empty";
    if (p.text.find('\0') != std::string::npos) {
      return "piece " + std::to_string(i) + " contains a NUL byte";
    }
    switch (p.type) {
      case PieceType::kNormal:
      case PieceType::kUnused:
        matched.emplace_back(p.text, id);
        break;
      case PieceType::kUserDefined:
        matched.emplace_back(p.text, id);
        user_symbols.emplace_back(p.text, id);
        break;
      case PieceType::kUnknown:
        if (unknown_id_ >= 0) {
          return "more than one unknown piece (ids " + std::to_string(unknown_id_) + " and " +
                 std::to_string(i) + ")";
        }
        unknown_id_ = id;
        reserved_.emplace_back(p.text, id);
        break;
      case PieceType::kByte: {
        if (!byte_fallback_) return "byte piece '" + p.text + "' in a model without byte_fallback";
        const int byte = ByteOfPiece(p.text);
        if (byte < 0) return "invalid byte piece '" + p.text + "'";
        byte_seen[static_cast<size_t>(byte)] = true;
        reserved_.emplace_back(p.text, id);
        break;
      }
      case PieceType::kControl:
        reserved_.emplace_back(p.text, id);
        break;
    }
  }
  if (unknown_id_ < 0) return "no unknown piece (type UNKNOWN)";
  if (byte_fallback_ && std::count(byte_seen.begin(), byte_seen.end(), false) != 0) {
    return "byte_fallback is on but the 256 byte pieces <0x00>..<0xFF> are not all there";
  }
  if (matched.empty()) return "no normal pieces";
  const auto by_text = [](const auto& a, const auto& b) { return a.first < b.first; };
  const auto duplicate = [](const auto& keys) {
    const auto it = std::adjacent_find(
        keys.begin(), keys.end(), [](const auto& a, const auto& b) { return a.first == b.first; });
    return it == keys.end() ? std::string() : std::string(it->first);
  };
  std::sort(matched.begin(), matched.end(), by_text);
  std::sort(reserved_.begin(), reserved_.end(), by_text);
  std::sort(user_symbols.begin(), user_symbols.end(), by_text);
  for (const std::string& dup : {duplicate(matched), duplicate(reserved_)}) {
    if (!dup.empty()) return "piece '" + dup + "' is defined twice";
  }
  trie_ = std::make_unique<Trie>(matched);
  if (!user_symbols.empty()) user_symbols_ = std::make_unique<Trie>(user_symbols);
  return "";
}

void SentencePieceModel::IndexAllPieces() {
  // Every piece, for Search::kTokenizers; of equal texts the last id wins,
  // as in the tokenizers library's vocabulary map.
  std::vector<std::pair<std::string_view, int>> all;
  min_score_all_ = std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < pieces_.size(); ++i) {
    all.emplace_back(pieces_[i].text, static_cast<int>(i));
    min_score_all_ = std::min(min_score_all_, static_cast<double>(pieces_[i].score));
  }
  std::stable_sort(all.begin(), all.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<std::pair<std::string_view, int>> unique_all;
  for (size_t i = 0; i < all.size(); ++i) {
    if (i + 1 < all.size() && all[i + 1].first == all[i].first) continue;
    unique_all.push_back(all[i]);
  }
  all_trie_ = std::make_unique<Trie>(unique_all);

  // Score range over NORMAL pieces, with SentencePiece's starting values:
  // max_score_ starts at FLT_MIN (the smallest positive float), so with only
  // negative scores it stays there.
  min_score_ = std::numeric_limits<float>::max();
  max_score_ = std::numeric_limits<float>::min();
  for (const Piece& p : pieces_) {
    if (p.type != PieceType::kNormal) continue;
    min_score_ = std::min(min_score_, p.score);
    max_score_ = std::max(max_score_, p.score);
  }
}

void SentencePieceModel::SetSpecialIds(const Options& options) {
  const auto special = [this](const std::string& text, PieceType type) {
    const int id = PieceToId(text);
    return pieces_[static_cast<size_t>(id)].type == type ? id : -1;
  };
  unk_id_ = special(options.unk_piece, PieceType::kUnknown);
  bos_id_ = special(options.bos_piece, PieceType::kControl);
  eos_id_ = special(options.eos_piece, PieceType::kControl);
  pad_id_ = special(options.pad_piece, PieceType::kControl);
  if (byte_fallback_) {
    byte_ids_.resize(256);
    for (int b = 0; b < 256; ++b) byte_ids_[static_cast<size_t>(b)] = PieceToId(BytePiece(b));
  }
}

std::string SentencePieceModel::LoadCharsmap() {
  // Charsmap blob: uint32 size of the double array, the array, then the
  // NUL-terminated replacement strings its values point into.
  const std::string_view charsmap = charsmap_;
  if (charsmap.empty()) return "";
  const uint64_t trie_bytes = LittleEndian(charsmap.substr(0, 4));
  if (charsmap.size() <= 4 || trie_bytes > charsmap.size() - 4) {
    return "precompiled_charsmap is truncated (" + std::to_string(charsmap.size()) + " bytes)";
  }
  const std::string_view array = charsmap.substr(4, trie_bytes);
  charsmap_units_.resize(array.size() / 4);
  for (size_t u = 0; u < charsmap_units_.size(); ++u) {
    charsmap_units_[u] = static_cast<uint32_t>(LittleEndian(array.substr(4 * u, 4)));
  }
  charsmap_strings_.assign(charsmap.substr(4 + trie_bytes));
  return "";
}

int SentencePieceModel::PieceToId(std::string_view text) const {
  const auto it =
      std::lower_bound(reserved_.begin(), reserved_.end(), text,
                       [](const auto& entry, std::string_view t) { return entry.first < t; });
  if (it != reserved_.end() && it->first == text) return it->second;
  const int id = trie_->Find(text);
  return id >= 0 ? id : unknown_id_;
}

int SentencePieceModel::Find(std::string_view text) const {
  const int id = PieceToId(text);
  return pieces_[static_cast<size_t>(id)].text == text ? id : -1;
}

// ---- Normalization ------------------------------------------------------------

size_t SentencePieceModel::MatchCharsmap(std::string_view input,
                                         std::string_view* replacement) const {
  const std::vector<uint32_t>& units = charsmap_units_;
  if (units.empty()) return 0;
  size_t longest = 0;
  uint32_t value = 0;
  uint32_t id = DartsOffset(units[0]);
  int matches = 0;
  for (size_t i = 0; i < input.size() && matches < kMaxCharsmapMatches; ++i) {
    const auto c = static_cast<uint8_t>(input[i]);
    id ^= c;
    // A well-formed array never leads out of itself; a broken one ends the match.
    if (id >= units.size() || DartsLabel(units[id]) != c) break;
    const uint32_t unit = units[id];
    id ^= DartsOffset(unit);
    if (DartsHasLeaf(unit)) {
      if (id >= units.size()) break;
      longest = i + 1;
      value = DartsValue(units[id]);
      ++matches;
    }
  }
  if (longest == 0) return 0;
  // The replacement runs to its NUL (or the end of the blob).
  const std::string_view strings = charsmap_strings_;
  *replacement = value < strings.size() ? strings.substr(value, strings.find('\0', value) - value)
                                        : std::string_view();
  return longest;
}

std::pair<std::string_view, size_t> SentencePieceModel::NormalizePrefix(
    std::string_view input) const {
  // A user-defined symbol is copied as it is, the longest one first.
  if (user_symbols_ != nullptr) {
    size_t longest = 0;
    int matches = 0;
    user_symbols_->ForEachPrefix(input, [&](size_t length, int) {
      longest = length;
      return ++matches < kMaxUserSymbolMatches;
    });
    if (longest > 0) return {input.substr(0, longest), longest};
  }
  std::string_view replacement;
  if (const size_t length = MatchCharsmap(input, &replacement); length > 0) {
    return {replacement, length};
  }
  // No rule: the character as it is, or U+FFFD for one malformed byte.
  const size_t length = ValidUtf8Length(input);
  if (length == 0) return {kReplacementChar, 1};
  return {input.substr(0, length), length};
}

std::string SentencePieceModel::NormalizeCharacters(std::string_view input) const {
  std::string out;
  out.reserve(input.size());
  while (!input.empty()) {
    const auto [replacement, consumed] = NormalizePrefix(input);
    out.append(replacement);
    input.remove_prefix(consumed);
  }
  return out;
}

std::string SentencePieceModel::Normalize(std::string_view input) const {
  std::string out;
  // Leading whitespace: whatever normalizes to a single space.
  if (remove_extra_whitespaces_) {
    while (!input.empty()) {
      const auto [replacement, consumed] = NormalizePrefix(input);
      if (replacement != " ") break;
      input.remove_prefix(consumed);
    }
  }
  if (input.empty()) return out;

  const std::string_view space = escape_whitespaces_ ? kSpaceSymbol : " ";
  out.reserve(input.size() * 3);
  if (add_dummy_prefix_ && !treat_whitespace_as_suffix_) out.append(space);
  bool prev_space = remove_extra_whitespaces_;
  while (!input.empty()) {
    auto [replacement, consumed] = NormalizePrefix(input);
    // After a space, the spaces a replacement starts with are dropped.
    while (prev_space && !replacement.empty() && replacement.front() == ' ') {
      replacement.remove_prefix(1);
    }
    if (!replacement.empty()) {
      for (char c : replacement) {
        if (c == ' ' && escape_whitespaces_) {
          out.append(kSpaceSymbol);
        } else {
          out.push_back(c);
        }
      }
      prev_space = replacement.back() == ' ';
    }
    input.remove_prefix(consumed);
    if (!remove_extra_whitespaces_) prev_space = false;
  }
  if (remove_extra_whitespaces_) {
    while (std::string_view(out).substr(out.size() - std::min(out.size(), space.size())) == space) {
      out.resize(out.size() - space.size());
    }
  }
  if (add_dummy_prefix_ && treat_whitespace_as_suffix_) out.append(space);
  return out;
}

// ---- Encoding -------------------------------------------------------------------

std::vector<int> SentencePieceModel::Encode(std::string_view text) const {
  return EncodeNormalized(Normalize(text));
}

// Viterbi over byte positions: best[e] is the best-scoring segmentation of
// normalized[0, e), by its last piece (start, id). Positions advance one
// character at a time; every piece that starts there is a candidate for the
// position it ends at. With Search::kSentencePiece the scores follow
// SentencePiece's arithmetic exactly (Score = float: a piece's candidate in
// double, stored as float; unknown ones in float) so that ties break the
// same way; with kTokenizers, the tokenizers library's (Score = double).
template <typename Score>
std::vector<SentencePieceModel::PathNode> SentencePieceModel::BestPath(std::string_view normalized,
                                                                       Search search) const {
  const bool tokenizers = search == Search::kTokenizers;
  const size_t n = normalized.size();
  std::vector<PathNode> best(n + 1);
  std::vector<Score> best_score(n + 1, Score{0});
  const Score unk_score = tokenizers ? static_cast<Score>(min_score_all_ - kUnkPenalty)
                                     : static_cast<Score>(min_score_ - kUnkPenalty);
  const Trie& trie = tokenizers ? *all_trie_ : *trie_;
  for (size_t start = 0; start < n;) {
    const size_t char_len = std::min(OneCharLen(normalized[start]), n - start);
    const Score till_here = best_score[start];
    bool covers_char = false;  // a piece of exactly this character exists
    trie.ForEachPrefix(normalized.substr(start), [&](size_t length, int id) {
      const Piece& p = pieces_[static_cast<size_t>(id)];
      if (!tokenizers && p.type == PieceType::kUnused) return true;
      // SentencePiece: user-defined symbols outscore any segmentation of
      // the same bytes.
      const double score = !tokenizers && p.type == PieceType::kUserDefined
                               ? static_cast<double>(static_cast<float>(length) * max_score_) - 0.1
                               : static_cast<double>(p.score);
      const double candidate = score + static_cast<double>(till_here);
      PathNode& b = best[start + length];
      if (b.start < 0 || candidate > static_cast<double>(best_score[start + length])) {
        b = {static_cast<int>(start), id};
        best_score[start + length] = static_cast<Score>(candidate);
      }
      covers_char = covers_char || length == char_len;
      return true;
    });
    if (!covers_char) {
      const Score candidate = unk_score + till_here;
      PathNode& b = best[start + char_len];
      if (b.start < 0 || candidate > best_score[start + char_len]) {
        b = {static_cast<int>(start), unknown_id_};
        best_score[start + char_len] = candidate;
      }
    }
    start += char_len;
  }
  return best;
}

std::vector<int> SentencePieceModel::EncodeNormalized(std::string_view normalized,
                                                      Search search) const {
  std::vector<int> ids;
  if (normalized.empty()) return ids;
  const size_t n = normalized.size();
  const std::vector<PathNode> best = search == Search::kTokenizers
                                         ? BestPath<double>(normalized, search)
                                         : BestPath<float>(normalized, search);

  // The path, last piece first.
  std::vector<size_t> ends;
  for (size_t end = n; end > 0 && best[end].start >= 0;
       end = static_cast<size_t>(best[end].start)) {
    ends.push_back(end);
  }
  bool prev_unknown = false;
  for (auto it = ends.rbegin(); it != ends.rend(); ++it) {
    const PathNode& b = best[*it];
    const bool unknown = pieces_[static_cast<size_t>(b.id)].type == PieceType::kUnknown;
    if (unknown && byte_fallback_) {
      // The unknown character spelled as its UTF-8 bytes.
      for (size_t i = static_cast<size_t>(b.start); i < *it; ++i) {
        ids.push_back(byte_ids_[static_cast<uint8_t>(normalized[i])]);
      }
    } else if (!(unknown && prev_unknown)) {
      ids.push_back(b.id);  // a run of unknown characters is one <unk>
    }
    prev_unknown = unknown;
  }
  return ids;
}

}  // namespace rainserve
