// libsentencepiece behind dlopen() (pipelines/text/sentencepiece_library.h).
#include "pipelines/text/sentencepiece_library.h"

#include <dlfcn.h>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <exception>
#include <new>
#include <unordered_map>

namespace rainserve {
namespace {

// SentencePiece, behind dlopen(RTLD_LOCAL | RTLD_DEEPBIND). Debian's
// libsentencepiece carries its own protobuf-lite and exports it; linked
// into a process beside a LibTorch built on the system libprotobuf, each
// library binds to the other's protobuf functions and the process crashes
// before main(). Loaded locally with deep binding, SentencePiece keeps to its
// own copy and the rest of the process never sees it. So nothing here links
// against it: SentencePieceProcessor's methods are virtual (called through
// its vtable, no symbol needed) and the few plain functions are looked up
// by their (Itanium ABI) names. Its logging is switched off: deep binding
// gives it libstdc++'s own std::cerr, which in an executable that also uses
// std::cerr is a never-constructed twin (copy relocation); errors still come
// back as Status.
using SpStatus = sentencepiece::util::Status;
using TrainArgs = std::unordered_map<std::string, std::string>;

struct SentencePieceLibrary {
  std::string error;                                             // empty when loaded
  void (*construct)(void* memory) = nullptr;                     // SentencePieceProcessor()
  void (*destroy_status)(SpStatus* status) = nullptr;            // util::Status::~Status()
  std::string (*status_text)(const SpStatus* status) = nullptr;  // util::Status::ToString()
  int (*status_code)(const SpStatus* status) = nullptr;          // util::Status::code()
  SpStatus (*train)(const TrainArgs& args, sentencepiece::SentenceIterator* it,
                    std::string* model) = nullptr;  // SentencePieceTrainer::Train()
};

// AddressSanitizer builds: GCC says so with __SANITIZE_ADDRESS__, clang
// only through __has_feature.
#if defined(__SANITIZE_ADDRESS__)
#define RAINSERVE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RAINSERVE_ASAN 1
#endif
#endif

int DlopenFlags() {
#if defined(RAINSERVE_ASAN)
  // The sanitizer runtime refuses deep binding. Without it the library
  // works in a process that has no other protobuf (the torch-free
  // sentencepiece_test), not beside LibTorch.
  return RTLD_NOW | RTLD_LOCAL;
#else
  return RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND;
#endif
}

// Resolves `name` in `handle` into *fn, or records the failure in lib->error.
template <typename Fn>
void Resolve(void* handle, const char* name, Fn* fn, SentencePieceLibrary* lib) {
  void* sym = handle != nullptr ? ::dlsym(handle, name) : nullptr;
  if (sym == nullptr && lib->error.empty()) lib->error = std::string("SentencePiece lacks ") + name;
  *fn = reinterpret_cast<Fn>(sym);
}

SentencePieceLibrary LoadLibrary(bool trainer) {
  SentencePieceLibrary lib;
  void* core = ::dlopen("libsentencepiece.so.0", DlopenFlags());
  if (core == nullptr) {
    lib.error = std::string("cannot load libsentencepiece.so.0: ") + ::dlerror();
    return lib;
  }
  Resolve(core, "_ZN13sentencepiece22SentencePieceProcessorC1Ev", &lib.construct, &lib);
  Resolve(core, "_ZN13sentencepiece4util6StatusD1Ev", &lib.destroy_status, &lib);
  Resolve(core, "_ZNK13sentencepiece4util6Status8ToStringB5cxx11Ev", &lib.status_text, &lib);
  Resolve(core, "_ZNK13sentencepiece4util6Status4codeEv", &lib.status_code, &lib);
  void (*set_min_log_level)(int) = nullptr;
  Resolve(core, "_ZN13sentencepiece7logging14SetMinLogLevelEi", &set_min_log_level, &lib);
  if (set_min_log_level != nullptr) set_min_log_level(100);  // above every severity
  if (trainer) {
    void* train = ::dlopen("libsentencepiece_train.so.0", DlopenFlags());
    if (train == nullptr) {
      lib.error = std::string("cannot load libsentencepiece_train.so.0: ") + ::dlerror();
      return lib;
    }
    Resolve(train,
            "_ZN13sentencepiece20SentencePieceTrainer5TrainERKSt13unordered_mapINSt7__cxx1112basic_"
            "stringIcSt11char_traitsIcESaIcEEES7_St4hashIS7_ESt8equal_toIS7_ESaISt4pairIKS7_S7_EEEP"
            "NS_16SentenceIteratorEPS7_",
            &lib.train, &lib);
  }
  return lib;
}

// Loaded once per process, on first use (thread-safe static initialisation).
const SentencePieceLibrary& Library() {
  static const SentencePieceLibrary lib = LoadLibrary(/*trainer=*/false);
  return lib;
}
const SentencePieceLibrary& TrainerLibrary() {
  static const SentencePieceLibrary lib = LoadLibrary(/*trainer=*/true);
  return lib;
}

// Runs `call` (returning a util::Status) and converts its status. The status
// is built in place (C++17 guaranteed elision) and destroyed through the
// library, so no util::Status symbol is linked.
template <typename Call>
Status Checked(const SentencePieceLibrary& lib, Call&& call) {
  alignas(SpStatus) unsigned char storage[sizeof(SpStatus)];
  SpStatus* st = nullptr;
  try {
    st = new (storage) SpStatus(call());
  } catch (const std::exception& e) {
    return InternalError(std::string("SentencePiece failed: ") + e.what());
  }
  Status out;
  if (!st->ok()) {
    const int code = lib.status_code(st);
    const std::string text = lib.status_text(st);
    out = code == static_cast<int>(sentencepiece::util::StatusCode::kNotFound)
              ? NotFoundError(text)
              : InternalError(text);
  }
  lib.destroy_status(st);
  return out;
}

}  // namespace

LibSentencePiece::LibSentencePiece() = default;
LibSentencePiece::~LibSentencePiece() = default;

StatusOr<std::unique_ptr<LibSentencePiece>> LibSentencePiece::Load(const std::string& model_path) {
  const SentencePieceLibrary& lib = Library();
  if (!lib.error.empty()) return FailedPreconditionError(model_path + ": " + lib.error);
  std::unique_ptr<LibSentencePiece> model(new LibSentencePiece());
  void* memory = ::operator new(sizeof(sentencepiece::SentencePieceProcessor));
  lib.construct(memory);
  model->sp_.reset(static_cast<sentencepiece::SentencePieceProcessor*>(memory));
  sentencepiece::SentencePieceProcessor* sp = model->sp_.get();
  const Status st = Checked(lib, [&] { return sp->Load(model_path); });
  if (st.code() == StatusCode::kNotFound) {
    return NotFoundError(model_path + ": cannot read the SentencePiece model: " + st.message());
  }
  if (!st.ok()) {
    return InvalidArgumentError(model_path + ": SentencePiece rejects it: " + st.message());
  }
  return model;
}

std::vector<int> LibSentencePiece::Encode(const std::string& text) const {
  std::vector<int> ids;
  // Encoding only fails on an unloaded model, which Load() rules out.
  Checked(Library(), [&] { return sp_->Encode(text, &ids); }).IgnoreError();
  return ids;
}

int LibSentencePiece::size() const { return sp_->GetPieceSize(); }
int LibSentencePiece::unk_id() const { return sp_->unk_id(); }
int LibSentencePiece::bos_id() const { return sp_->bos_id(); }
int LibSentencePiece::eos_id() const { return sp_->eos_id(); }
int LibSentencePiece::pad_id() const { return sp_->pad_id(); }

Status TrainSentencePiece(const std::map<std::string, std::string>& args) {
  const SentencePieceLibrary& lib = TrainerLibrary();
  if (!lib.error.empty()) return FailedPreconditionError(lib.error);
  const TrainArgs train_args(args.begin(), args.end());
  const Status st = Checked(lib, [&] { return lib.train(train_args, nullptr, nullptr); });
  if (!st.ok()) {
    const auto input = args.find("input");
    return InvalidArgumentError("training a SentencePiece model from " +
                                (input != args.end() ? input->second : std::string("?")) + ": " +
                                st.message());
  }
  return OkStatus();
}

Status TrainSentencePieceModel(const std::string& corpus_file, const std::string& model_prefix,
                               int vocab_size) {
  if (vocab_size < 8) return InvalidArgumentError("vocab_size must be at least 8");
  return TrainSentencePiece({
      {"input", corpus_file},
      {"model_prefix", model_prefix},
      {"model_type", "unigram"},
      {"vocab_size", std::to_string(vocab_size)},
      {"character_coverage", "1.0"},
      {"pad_id", "0"},
      {"eos_id", "1"},
      {"unk_id", "2"},
      {"bos_id", "-1"},
      {"num_threads", "1"},
      // Every line is used, in file order: nothing is sampled.
      {"input_sentence_size", "0"},
      {"shuffle_input_sentence", "false"},
  });
}

}  // namespace rainserve
