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

#include "pipelines/text/added_tokens.h"
#include "pipelines/text/sentencepiece.h"
#include "pipelines/text/sentencepiece_library.h"
#include "tests/pipelines/tokenizer_json_writer.h"
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
  EXPECT_EQ(pieces_[0], "<pad>");
  EXPECT_EQ(pieces_[1], "</s>");
  EXPECT_EQ(pieces_[2], "<unk>");
}

TEST_F(TokenizerTest, WithoutAConfigThereAre100ExtraIdsAfterTheVocabularyInReverse) {
  // No tokenizer_config.json: T5Tokenizer's extra_ids=100, <extra_id_0> last.
  EXPECT_EQ(tok_->vocab_size(), 500);
  EXPECT_EQ(tok_->Pieces("<extra_id_0>"), std::vector<int64_t>{499});
  EXPECT_EQ(tok_->Pieces("<extra_id_99>"), std::vector<int64_t>{400});
  for (int64_t id : tok_->Pieces("<extra_id_100>")) EXPECT_LT(id, 400);  // not a token
  std::vector<int64_t> want = SpIds("a");
  want.push_back(497);
  for (int64_t id : SpIds("the")) want.push_back(id);
  EXPECT_EQ(tok_->Pieces("a <extra_id_2> the"), want);
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

// ---- Special and added tokens in the text ----------------------------------
// wan-tiny's tokenizer folder (spiece.model, extra_ids 0) against
// libsentencepiece on the text between the tokens: a special token is its id,
// the text around it is tokenized as separate segments, and the first word
// after a token starts a new word ("\u2581" prefix, prepend_scheme "always").

std::string WanTinyDir() { return testing::SourceDir() + "/models/wan-tiny/tokenizer"; }

class WanTinyTokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto tok = UMT5Tokenizer::Load(WanTinyDir());
    ASSERT_TRUE(tok.ok()) << tok.status().ToString();
    tok_ = std::move(*tok);
    auto ref = LibSentencePiece::Load(WanTinyDir() + "/spiece.model");
    ASSERT_TRUE(ref.ok()) << ref.status().ToString();
    ref_ = std::move(*ref);
  }
  // libsentencepiece's ids of each text part, the ids of the tokens between.
  std::vector<int64_t> Expected(const std::vector<std::pair<std::string, int64_t>>& parts) {
    std::vector<int64_t> ids;
    for (const auto& [text, id] : parts) {
      if (id >= 0) {
        ids.push_back(id);
        continue;
      }
      for (int piece : ref_->Encode(text)) ids.push_back(piece);
    }
    return ids;
  }
  std::unique_ptr<UMT5Tokenizer> tok_;
  std::unique_ptr<LibSentencePiece> ref_;
};

TEST_F(WanTinyTokenizerTest, SpecialTokensInTheTextAreTheirIds) {
  const std::string text = "a cat </s> a dog <pad> and <unk>";
  const std::vector<int64_t> want =
      Expected({{"a cat", -1}, {"", 1}, {"a dog", -1}, {"", 0}, {"and", -1}, {"", 2}});
  EXPECT_EQ(tok_->Pieces(text), want);
  // SentencePiece alone spells the special tokens as text.
  const std::vector<int> as_text = ref_->Encode(text);
  EXPECT_NE(std::vector<int64_t>(as_text.begin(), as_text.end()), want);

  const TokenizedText t = tok_->Encode(text, 32);
  std::vector<int64_t> with_eos = want;
  with_eos.push_back(1);
  ASSERT_EQ(t.length, static_cast<int64_t>(with_eos.size()));
  EXPECT_EQ(std::vector<int64_t>(t.ids.begin(), t.ids.begin() + t.length), with_eos);
}

TEST_F(WanTinyTokenizerTest, TextAroundATokenIsTokenizedAsSeparateWords) {
  // No space needed: "b" after </s> is a new word, "a" before it ends one.
  EXPECT_EQ(tok_->Pieces("a</s>b"), Expected({{"a", -1}, {"", 1}, {"b", -1}}));
  EXPECT_EQ(tok_->Pieces("fox<pad>es"), Expected({{"fox", -1}, {"", 0}, {"es", -1}}));
  EXPECT_EQ(tok_->Pieces("</s></s><unk>"), (std::vector<int64_t>{1, 1, 2}));
  EXPECT_EQ(tok_->Pieces("  <pad>  "), std::vector<int64_t>{0});
  // Incomplete or different spellings are text.
  for (const std::string text : {"x</s", "<PAD>", "< /s>", "<extra_id_0>", "<s>"}) {
    EXPECT_EQ(tok_->Pieces(text), Expected({{text, -1}})) << text;
  }
  // The same goes for the cleaned prompt: entities become tokens after unescaping.
  const TokenizedText t = tok_->Encode("red &lt;/s&gt; fox", 16);
  std::vector<int64_t> want = Expected({{"red", -1}, {"", 1}, {"fox", -1}, {"", 1}});
  EXPECT_EQ(std::vector<int64_t>(t.ids.begin(), t.ids.begin() + t.length), want);
}

TEST_F(WanTinyTokenizerTest, ASpecialPieceSpelledByNormalizationIsThatPiece) {
  // Full-width "＜/s＞" is NFKC-folded to "</s>": not an added token (those
  // match the raw text) but the vocabulary's piece, which the tokenizers
  // library's Unigram search matches like any other.
  auto model = SentencePieceModel::Load(WanTinyDir() + "/spiece.model");
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  const int space = (*model)->Find("\xe2\x96\x81");
  ASSERT_GE(space, 0);
  EXPECT_EQ(tok_->Pieces("\xef\xbc\x9c/s\xef\xbc\x9e"), (std::vector<int64_t>{space, 1}));
}

// ---- tokenizer.json ------------------------------------------------------------

// A folder with wan-tiny's config files and `json` as tokenizer.json (and
// spiece.model only when `with_spiece`).
std::string JsonTokenizerDir(const std::string& json, bool with_spiece = false) {
  const std::string dir = testing::MakeTempDir("rainserve-tokjson");
  testing::WriteFileBytes(dir + "/tokenizer.json", json);
  for (const std::string name : {"tokenizer_config.json", "special_tokens_map.json"}) {
    testing::WriteFileBytes(dir + "/" + name, testing::ReadFileBytes(WanTinyDir() + "/" + name));
  }
  if (with_spiece) {
    testing::WriteFileBytes(dir + "/spiece.model",
                            testing::ReadFileBytes(WanTinyDir() + "/spiece.model"));
  }
  return dir;
}

std::unique_ptr<SentencePieceModel> WanTinyModel() {
  auto model = SentencePieceModel::Load(WanTinyDir() + "/spiece.model");
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  return model.ok() ? std::move(*model) : nullptr;
}

TEST(TokenizerJsonTest, TokenizerJsonOnlyFolderGivesTheIdsOfSpieceModel) {
  const std::unique_ptr<SentencePieceModel> model = WanTinyModel();
  ASSERT_NE(model, nullptr);
  const std::string dir = JsonTokenizerDir(testing::TokenizerJsonFor(*model));
  auto from_json = UMT5Tokenizer::Load(dir);
  ASSERT_TRUE(from_json.ok()) << from_json.status().ToString();
  auto from_spiece = UMT5Tokenizer::Load(WanTinyDir());
  ASSERT_TRUE(from_spiece.ok()) << from_spiece.status().ToString();
  const UMT5Tokenizer& a = **from_json;
  const UMT5Tokenizer& b = **from_spiece;
  EXPECT_EQ(a.vocab_size(), b.vocab_size());
  EXPECT_EQ(a.pad_id(), b.pad_id());
  EXPECT_EQ(a.eos_id(), b.eos_id());
  EXPECT_EQ(a.unk_id(), b.unk_id());
  for (const std::string text :
       {"A red fox trots across a snowy meadow at dawn.", "  two  spaces\tand a tab ",
        "\xef\xbc\xa1\xef\xbc\xa2 full width, caf\xc3\xa9, \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80",
        "bad \xff byte", "it&#39;s &amp; more", "", "a cat </s> a dog <pad> and <unk>",
        "a</s>b<unk>c", "\xe2\x96\x81lead \xe2\x96\x81\xe2\x96\x81twice", "\xe2\x82\xac\xe2\x82\xac"}) {
    EXPECT_EQ(a.Pieces(text), b.Pieces(text)) << text;
    EXPECT_EQ(a.Encode(text, 24).ids, b.Encode(text, 24).ids) << text;
  }
}

TEST(TokenizerJsonTest, AddedTokensOfTheJsonAreUsedWithTheirNormalizedFlag) {
  const std::unique_ptr<SentencePieceModel> model = WanTinyModel();
  ASSERT_NE(model, nullptr);
  const int64_t n = model->size();
  // "AB" matched after normalization (full-width letters are NFKC-folded),
  // "CD" only as written; <cat> takes the id after the vocabulary.
  AddedToken ab{"AB", n, false, false, false, /*normalized=*/true, /*special=*/false};
  AddedToken cd{"CD", n + 1, false, false, false, /*normalized=*/false, /*special=*/false};
  AddedToken cat{"<cat>", n + 2};
  // Both files: the tokenizer.json is the one read.
  const std::string dir = JsonTokenizerDir(testing::TokenizerJsonFor(*model, {ab, cd, cat}), true);
  auto tok = UMT5Tokenizer::Load(dir);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  EXPECT_EQ((*tok)->vocab_size(), n + 3);
  EXPECT_EQ((*tok)->Pieces("<cat>"), std::vector<int64_t>{n + 2});
  EXPECT_EQ((*tok)->Pieces("AB"), std::vector<int64_t>{n});
  EXPECT_EQ((*tok)->Pieces("\xef\xbc\xa1\xef\xbc\xa2"), std::vector<int64_t>{n});  // "ＡＢ"
  EXPECT_EQ((*tok)->Pieces("CD"), std::vector<int64_t>{n + 1});
  const std::vector<int64_t> full_width_cd = (*tok)->Pieces("\xef\xbc\xa3\xef\xbc\xa4");  // "ＣＤ"
  EXPECT_FALSE(full_width_cd.empty());
  for (int64_t id : full_width_cd) EXPECT_LT(id, n);
}

TEST(TokenizerJsonTest, AddedTokensDecoderOfTheConfigSetsTheFlags) {
  const std::unique_ptr<SentencePieceModel> model = WanTinyModel();
  ASSERT_NE(model, nullptr);
  const int64_t n = model->size();
  AddedToken ab{"AB", n, false, false, false, /*normalized=*/false, /*special=*/false};
  const std::string dir = JsonTokenizerDir(testing::TokenizerJsonFor(*model, {ab}));
  const std::string fullwidth_ab = "\xef\xbc\xa1\xef\xbc\xa2";  // "ＡＢ"
  {
    auto tok = UMT5Tokenizer::Load(dir);
    ASSERT_TRUE(tok.ok()) << tok.status().ToString();
    EXPECT_NE((*tok)->Pieces(fullwidth_ab), std::vector<int64_t>{n});  // raw match only
  }
  // The config lists "AB" as normalized (under another id, which is not used)
  // and a new token "<dog>" under the id it gets.
  nlohmann::json config = nlohmann::json::parse(testing::ReadFileBytes(dir + "/tokenizer_config.json"));
  config["added_tokens_decoder"] = {
      {"7", {{"content", "AB"}, {"normalized", true}, {"special", false}}},
      {std::to_string(n + 1), {{"content", "<dog>"}, {"normalized", false}, {"special", true}}}};
  testing::WriteFileBytes(dir + "/tokenizer_config.json", config.dump());
  auto tok = UMT5Tokenizer::Load(dir);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  EXPECT_EQ((*tok)->Pieces(fullwidth_ab), std::vector<int64_t>{n});
  EXPECT_EQ((*tok)->Pieces("AB"), std::vector<int64_t>{n});
  EXPECT_EQ((*tok)->Pieces("<dog>"), std::vector<int64_t>{n + 1});
  EXPECT_EQ((*tok)->vocab_size(), n + 2);
}

TEST(TokenizerJsonTest, MalformedTokenizerJsonNamesTheFileAndKey) {
  const std::unique_ptr<SentencePieceModel> model = WanTinyModel();
  ASSERT_NE(model, nullptr);
  nlohmann::json good = nlohmann::json::parse(testing::TokenizerJsonFor(*model));
  const auto error_of = [](const nlohmann::json& j) {
    auto tok = UMT5Tokenizer::Load(JsonTokenizerDir(j.dump()));
    return tok.ok() ? OkStatus() : tok.status();
  };
  nlohmann::json bpe = good;
  bpe["model"]["type"] = "BPE";
  nlohmann::json no_unk = good;
  no_unk["model"]["unk_id"] = nullptr;
  nlohmann::json bad_score = good;
  bad_score["model"]["vocab"][5] = nlohmann::json::array({"x", "high"});
  nlohmann::json bad_id = good;
  bad_id["added_tokens"][0]["id"] = -3;
  nlohmann::json bad_charsmap = good;
  bad_charsmap["normalizer"] = {{"type", "Precompiled"}, {"precompiled_charsmap", "not base64!"}};
  for (const auto& [j, key] : std::vector<std::pair<nlohmann::json, std::string>>{
           {bpe, "model.type"},
           {no_unk, "model.unk_id"},
           {bad_score, "model.vocab[5]"},
           {bad_id, "added_tokens[0].id"},
           {bad_charsmap, "normalizer.precompiled_charsmap"}}) {
    const Status st = error_of(j);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << key;
    EXPECT_NE(st.message().find("tokenizer.json: " + key), std::string::npos) << st.message();
  }
  auto garbage = UMT5Tokenizer::Load(JsonTokenizerDir("{\"model\": [1,"));
  ASSERT_FALSE(garbage.ok());
  EXPECT_EQ(garbage.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(garbage.status().message().find("tokenizer.json"), std::string::npos);

  const std::string dir = JsonTokenizerDir(good.dump());
  testing::WriteFileBytes(dir + "/tokenizer_config.json", "{\"extra_ids\": -1}");
  auto bad_config = UMT5Tokenizer::Load(dir);
  ASSERT_FALSE(bad_config.ok());
  EXPECT_NE(bad_config.status().message().find("tokenizer_config.json: extra_ids"),
            std::string::npos)
      << bad_config.status().message();

  testing::WriteFileBytes(dir + "/tokenizer_config.json", "{\"pad_token\": \"\"}");
  testing::WriteFileBytes(dir + "/special_tokens_map.json", "{}");
  auto no_pad = UMT5Tokenizer::Load(dir);
  ASSERT_FALSE(no_pad.ok());
  EXPECT_EQ(no_pad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(no_pad.status().message().find("no pad or eos token"), std::string::npos)
      << no_pad.status().message();
}

// ---- The added-token splitter ------------------------------------------------

std::vector<std::pair<std::string, int64_t>> SplitText(const std::vector<AddedToken>& tokens,
                                                       const std::string& text) {
  std::vector<TextSegment> segments;
  AddedTokenSplitter(tokens).Split(text, &segments);
  std::vector<std::pair<std::string, int64_t>> out;
  for (const TextSegment& s : segments) out.emplace_back(std::string(s.text), s.id);
  return out;
}

using Segments = std::vector<std::pair<std::string, int64_t>>;

TEST(AddedTokenSplitterTest, LeftmostLongestMatchesWithoutOverlap) {
  const std::vector<AddedToken> tokens = {{"<a>", 1}, {"<a><b>", 2}, {"b>c", 3}};
  EXPECT_EQ(SplitText(tokens, "x<a><b>c"), (Segments{{"x", -1}, {"<a><b>", 2}, {"c", -1}}));
  EXPECT_EQ(SplitText(tokens, "<a><a>"), (Segments{{"<a>", 1}, {"<a>", 1}}));
  EXPECT_EQ(SplitText(tokens, "no tokens"), (Segments{{"no tokens", -1}}));
  EXPECT_EQ(SplitText({}, "text"), (Segments{{"text", -1}}));
  EXPECT_TRUE(SplitText(tokens, "").empty());
}

TEST(AddedTokenSplitterTest, LstripAndRstripTakeTheWhitespaceBesideTheToken) {
  AddedToken l{"<l>", 1};
  l.lstrip = true;
  AddedToken r{"<r>", 2};
  r.rstrip = true;
  EXPECT_EQ(SplitText({l, r}, "a \t<l> b"), (Segments{{"a", -1}, {" \t<l>", 1}, {" b", -1}}));
  EXPECT_EQ(SplitText({l, r}, "a <r>\xe3\x80\x80 b"),  // U+3000 is whitespace
            (Segments{{"a ", -1}, {"<r>\xe3\x80\x80 ", 2}, {"b", -1}}));
  // lstrip stops at the previous token.
  EXPECT_EQ(SplitText({l, r}, "<r>  <l>"), (Segments{{"<r>  ", 2}, {"<l>", 1}}));
}

TEST(AddedTokenSplitterTest, SingleWordTokensMatchOnlyBetweenNonWordCharacters) {
  AddedToken ab{"ab", 1};
  ab.single_word = true;
  const AddedToken bc{"bc", 2};
  EXPECT_EQ(SplitText({ab}, "x ab, y"), (Segments{{"x ", -1}, {"ab", 1}, {", y", -1}}));
  EXPECT_EQ(SplitText({ab}, "xab"), (Segments{{"xab", -1}}));
  EXPECT_EQ(SplitText({ab}, "ab\xc3\xa9"), (Segments{{"ab\xc3\xa9", -1}}));  // é is a word char
  // A discarded match still consumes its bytes: "bc" is not found in "xabc".
  EXPECT_EQ(SplitText({ab, bc}, "xabc"), (Segments{{"xabc", -1}}));
  EXPECT_EQ(SplitText({ab, bc}, "x bc"), (Segments{{"x ", -1}, {"bc", 2}}));
}

TEST(TokenizerLoadTest, MissingOrInvalidModelNamesTheFile) {
  const std::string dir = testing::MakeTempDir("rainserve-tok");
  auto missing = UMT5Tokenizer::Load(dir);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find(dir + "/spiece.model"), std::string::npos);
  EXPECT_NE(missing.status().message().find(dir + "/tokenizer.json"), std::string::npos);

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
