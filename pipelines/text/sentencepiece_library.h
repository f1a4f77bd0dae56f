// libsentencepiece, loaded at run time: training SentencePiece models (the
// tiny-checkpoint generator, tools/make_wan_checkpoint) and the reference
// encoder the tokenizer tests compare pipelines/text/sentencepiece.h with.
// Tools and tests only: the server reads spiece.model itself and never
// loads this library (target rainserve_sentencepiece_library, which
// rainserve_pipelines does not link).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace rainserve {

// A model loaded by libsentencepiece's SentencePieceProcessor.
class LibSentencePiece {
 public:
  // NOT_FOUND when the file cannot be read, INVALID_ARGUMENT when the library
  // rejects it, FAILED_PRECONDITION when the library cannot be loaded.
  static StatusOr<std::unique_ptr<LibSentencePiece>> Load(const std::string& model_path);
  ~LibSentencePiece();

  // SentencePieceProcessor::Encode to ids.
  std::vector<int> Encode(const std::string& text) const;

  int size() const;
  int unk_id() const;
  int bos_id() const;
  int eos_id() const;
  int pad_id() const;

 private:
  LibSentencePiece();
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

// SentencePieceTrainer::Train with spm_train's flags as a map ("input",
// "model_prefix", "vocab_size", ...): writes <model_prefix>.model / .vocab.
Status TrainSentencePiece(const std::map<std::string, std::string>& args);

// Trains a unigram SentencePiece model from `corpus_file` (one sentence a
// line) into <model_prefix>.model / .vocab with T5 ids (pad 0, eos 1,
// unk 2, no bos), full character coverage, one thread and no sampling, so
// the same corpus gives the same model.
Status TrainSentencePieceModel(const std::string& corpus_file, const std::string& model_prefix,
                               int vocab_size);

}  // namespace rainserve
