// UMT5Tokenizer: T5 conventions (EOS, padding, truncation, mask) over a
// SentencePiece model trained here from tools/data/tiny_corpus.txt (by
// libsentencepiece, pipelines/text/sentencepiece_library.h). Expected ids come
// from the trainer's .vocab file (one piece a line, id = line): the pieces
// of a text must spell the text back, word starts marked "\u2581". The
// encoder's id-for-id parity with libsentencepiece is sentencepiece_test's.
#include "pipelines/text/tokenizer.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "pipelines/text/sentencepiece_library.h"
#include "tests/test_files.h"

namespace rainserve {
namespace {

class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::MakeTempDir("rainserve-tok"));
    const Status st = TrainSentencePieceModel(testing::SourceDir() + "/tools/data/tiny_corpus.txt",
                                              *dir_ + "/spiece", 400);
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override {
    auto tok = UMT5Tokenizer::Load(*dir_);
    ASSERT_TRUE(tok.ok()) << tok.status().ToString();
    tok_ = std::move(*tok);
    std::ifstream vocab(*dir_ + "/spiece.vocab");
    std::string line;
    while (std::getline(vocab, line)) {
      const std::string piece = line.substr(0, line.find('\t'));
      id_of_[piece] = static_cast<int64_t>(pieces_.size());
      pieces_.push_back(piece);
    }
    ASSERT_EQ(pieces_.size(), 400u);
  }
  // The raw pieces of `text`, checked against the vocabulary: they must spell
  // "\u2581" + text with every space as "\u2581".
  std::vector<int64_t> SpIds(const std::string& text) {
    const std::vector<int64_t> ids = tok_->Pieces(text);
    std::string spelled, want = "\xe2\x96\x81";
    for (char ch : text) want += ch == ' ' ? std::string("\xe2\x96\x81") : std::string(1, ch);
    for (int64_t id : ids) {
      EXPECT_GE(id, 3);
      EXPECT_LT(id, static_cast<int64_t>(pieces_.size()));
      if (id >= 0 && id < static_cast<int64_t>(pieces_.size())) spelled += pieces_[static_cast<size_t>(id)];
    }
    EXPECT_EQ(spelled, want) << text;
    return ids;
  }

  static std::string* dir_;
  std::unique_ptr<UMT5Tokenizer> tok_;
  std::vector<std::string> pieces_;
  std::map<std::string, int64_t> id_of_;
};
std::string* TokenizerTest::dir_ = nullptr;

TEST_F(TokenizerTest, SpecialIdsFollowT5) {
  EXPECT_EQ(tok_->pad_id(), 0);
  EXPECT_EQ(tok_->eos_id(), 1);
  EXPECT_EQ(tok_->unk_id(), 2);
  EXPECT_EQ(tok_->vocab_size(), 400);
  EXPECT_EQ(pieces_[0], "<pad>");
  EXPECT_EQ(pieces_[1], "</s>");
  EXPECT_EQ(pieces_[2], "<unk>");
}

TEST_F(TokenizerTest, FrequentWordsAreSinglePiecesWithTheirVocabularyIds) {
  // Words this frequent in the corpus become whole pieces.
  for (const std::string word : {"a", "the", "of", "in"}) {
    ASSERT_TRUE(id_of_.count("\xe2\x96\x81" + word)) << word;
  }
  const TokenizedText t = tok_->Encode("a the of in", 8);
  const auto id = [&](const std::string& w) { return id_of_.at("\xe2\x96\x81" + w); };
  EXPECT_EQ(t.ids, (std::vector<int64_t>{id("a"), id("the"), id("of"), id("in"), 1, 0, 0, 0}));
  EXPECT_EQ(t.mask, (std::vector<int64_t>{1, 1, 1, 1, 1, 0, 0, 0}));
}

TEST_F(TokenizerTest, IdsArePiecesThenEosThenPadding) {
  for (const std::string text : {"a red fox runs through the snow", "Aerial view of a city at night",
                                 "slow motion, golden light", "x"}) {
    const std::vector<int64_t> pieces = SpIds(text);
    ASSERT_FALSE(pieces.empty());
    ASSERT_LT(pieces.size() + 1, 48u) << text;
    const TokenizedText t = tok_->Encode(text, 48);
    ASSERT_EQ(t.ids.size(), 48u);
    ASSERT_EQ(t.mask.size(), 48u);
    EXPECT_EQ(t.length, static_cast<int64_t>(pieces.size()) + 1) << text;
    for (size_t i = 0; i < 48; ++i) {
      const int64_t want_id = i < pieces.size() ? pieces[i] : i == pieces.size() ? 1 : 0;
      EXPECT_EQ(t.ids[i], want_id) << text << " position " << i;
      EXPECT_EQ(t.mask[i], i <= pieces.size() ? 1 : 0) << text << " position " << i;
    }
  }
}

TEST_F(TokenizerTest, EmptyAndBlankTextAreJustEos) {
  for (const std::string text : {"", "   ", "\t\n"}) {
    const TokenizedText t = tok_->Encode(text, 5);
    EXPECT_EQ(t.ids, (std::vector<int64_t>{1, 0, 0, 0, 0}));
    EXPECT_EQ(t.mask, (std::vector<int64_t>{1, 0, 0, 0, 0}));
    EXPECT_EQ(t.length, 1);
  }
}

TEST_F(TokenizerTest, TruncationKeepsFirstPiecesAndEndsWithEos) {
  const std::string text =
      "a fluffy orange cat sleeps on a wooden windowsill while rain streaks down the glass";
  const std::vector<int64_t> pieces = SpIds(text);
  ASSERT_GT(pieces.size(), 10u);
  const TokenizedText t = tok_->Encode(text, 8);
  ASSERT_EQ(t.ids.size(), 8u);
  for (size_t i = 0; i < 7; ++i) EXPECT_EQ(t.ids[i], pieces[i]) << i;
  EXPECT_EQ(t.ids[7], 1);
  EXPECT_EQ(t.mask, std::vector<int64_t>(8, 1));
  EXPECT_EQ(t.length, 8);
  // max_length 1 leaves room for the EOS only.
  EXPECT_EQ(tok_->Encode(text, 1).ids, std::vector<int64_t>{1});
}

TEST_F(TokenizerTest, ExactFitIsNotTruncated) {
  const std::string text = "waves crash against the rocks";
  const std::vector<int64_t> pieces = SpIds(text);
  const auto n = static_cast<int64_t>(pieces.size());
  const TokenizedText t = tok_->Encode(text, n + 1);
  std::vector<int64_t> want = pieces;
  want.push_back(1);
  EXPECT_EQ(t.ids, want);
  EXPECT_EQ(t.length, n + 1);
}

TEST_F(TokenizerTest, UnseenCharacterIsUnk) {
  // No corpus line has this character; the model has no byte fallback.
  const TokenizedText t = tok_->Encode("\xe2\x82\xac", 8);  // U+20AC
  ASSERT_GE(t.length, 2);
  bool has_unk = false;
  for (int64_t i = 0; i + 1 < t.length; ++i) has_unk = has_unk || t.ids[static_cast<size_t>(i)] == 2;
  EXPECT_TRUE(has_unk);
}

TEST_F(TokenizerTest, PromptIsCleanedLikeTheWanPipeline) {
  EXPECT_EQ(CleanPrompt("  a   red\tfox \n jumps  "), "a red fox jumps");
  EXPECT_EQ(CleanPrompt("cats&amp;dogs"), "cats&dogs");
  EXPECT_EQ(CleanPrompt("cats&amp;amp;dogs"), "cats&dogs");  // unescaped twice
  EXPECT_EQ(CleanPrompt("it&#39;s &lt;b&gt; &#x41;"), "it's <b> A");
  EXPECT_EQ(CleanPrompt("a&nbsp;b\xe3\x80\x80" "c"), "a b c");  // NBSP entity, U+3000
  EXPECT_EQ(CleanPrompt("fish & chips &unknown; &#0;"), "fish & chips &unknown; &#0;");
  EXPECT_EQ(CleanPrompt("caf\xc3\xa9  \xe2\x80\x83 bar"), "caf\xc3\xa9 bar");  // U+2003
  EXPECT_EQ(tok_->Encode("  a   red\tfox \n", 16).ids, tok_->Encode("a red fox", 16).ids);
}

TEST_F(TokenizerTest, BatchStacksTheRowsAsInt64Tensors) {
  const std::vector<std::string> texts = {"a dog", "", "a bright neon sign flickers in the rain"};
  const TokenizedBatch b = tok_->EncodeBatch(texts, 12);
  ASSERT_EQ(b.ids.sizes(), (std::vector<int64_t>{3, 12}));
  ASSERT_EQ(b.mask.sizes(), (std::vector<int64_t>{3, 12}));
  EXPECT_EQ(b.ids.scalar_type(), at::kLong);
  EXPECT_EQ(b.mask.scalar_type(), at::kLong);
  for (size_t r = 0; r < texts.size(); ++r) {
    const TokenizedText t = tok_->Encode(texts[r], 12);
    EXPECT_EQ(b.lengths[r], t.length);
    for (int64_t i = 0; i < 12; ++i) {
      EXPECT_EQ(b.ids[static_cast<int64_t>(r)][i].item<int64_t>(), t.ids[static_cast<size_t>(i)]);
      EXPECT_EQ(b.mask[static_cast<int64_t>(r)][i].item<int64_t>(), t.mask[static_cast<size_t>(i)]);
    }
  }
}

TEST_F(TokenizerTest, TrainingIsDeterministic) {
  const std::string other = testing::MakeTempDir("rainserve-tok");
  ASSERT_TRUE(TrainSentencePieceModel(testing::SourceDir() + "/tools/data/tiny_corpus.txt", other + "/spiece", 400)
                  .ok());
  // The .model embeds the output path; the pieces and scores must agree.
  const std::string vocab = testing::ReadFileBytes(*dir_ + "/spiece.vocab");
  EXPECT_FALSE(vocab.empty());
  EXPECT_EQ(testing::ReadFileBytes(other + "/spiece.vocab"), vocab);
}

TEST(TokenizerWanTinyTest, PiecesAreLibSentencePieceIdsAndPromptsAreCleanedFirst) {
  const std::string dir = testing::SourceDir() + "/models/wan-tiny/tokenizer";
  auto tok = UMT5Tokenizer::Load(dir);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  auto ref = LibSentencePiece::Load(dir + "/spiece.model");
  ASSERT_TRUE(ref.ok()) << ref.status().ToString();
  EXPECT_EQ((*tok)->vocab_size(), (*ref)->size());
  EXPECT_EQ((*tok)->pad_id(), (*ref)->pad_id());
  EXPECT_EQ((*tok)->eos_id(), (*ref)->eos_id());
  EXPECT_EQ((*tok)->unk_id(), (*ref)->unk_id());
  for (const std::string text :
       {"A red fox trots across a snowy meadow at dawn.", "  two  spaces\tand a tab ",
        "\xef\xbc\xa1\xef\xbc\xa2 full width, caf\xc3\xa9, "
        "\xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80",
        "bad \xff byte", "it&#39;s &amp; more", ""}) {
    const std::vector<int> want = (*ref)->Encode(text);
    EXPECT_EQ((*tok)->Pieces(text), std::vector<int64_t>(want.begin(), want.end())) << text;
    const std::vector<int> cleaned = (*ref)->Encode(CleanPrompt(text));
    const TokenizedText t = (*tok)->Encode(text, 64);
    ASSERT_EQ(t.length, static_cast<int64_t>(cleaned.size()) + 1) << text;
    for (size_t i = 0; i < cleaned.size(); ++i) EXPECT_EQ(t.ids[i], cleaned[i]) << text << " " << i;
  }
}

TEST(TokenizerLoadTest, MissingOrInvalidModelNamesTheFile) {
  const std::string dir = testing::MakeTempDir("rainserve-tok");
  auto missing = UMT5Tokenizer::Load(dir);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find(dir + "/spiece.model"), std::string::npos);

  std::ofstream(dir + "/spiece.model") << "not a model";
  auto garbage = UMT5Tokenizer::Load(dir);
  ASSERT_FALSE(garbage.ok());
  EXPECT_EQ(garbage.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(garbage.status().message().find("spiece.model"), std::string::npos);
}

TEST(TokenizerLoadTest, TrainingFromAMissingCorpusIsAnError) {
  const std::string dir = testing::MakeTempDir("rainserve-tok");
  const Status st = TrainSentencePieceModel(dir + "/no-such-corpus.txt", dir + "/spiece", 100);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("no-such-corpus.txt"), std::string::npos);
}

}  // namespace
}  // namespace rainserve
