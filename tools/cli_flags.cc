#include "tools/cli_flags.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <set>
#include <sstream>

#include "attention/settings.h"

namespace rainserve::cli {
namespace {

const std::vector<std::string> kConnectionFlags = {"target", "token",  "tls-ca",
                                                   "tls-cert", "tls-key", "timeout"};
const std::vector<std::string> kGlobalSwitches = {"help", "version"};

const std::vector<FlagSpec>& Flags() {
  static const auto* flags = new std::vector<FlagSpec>{
      // Connection.
      {"target", "HOST:PORT", "server address (default 127.0.0.1:50051)"},
      {"token", "T", "bearer token (security.tokens_file on the server)"},
      {"tls-ca", "FILE", "PEM CA that signed the server's certificate: connect with TLS"},
      {"tls-cert", "FILE", "PEM client certificate (mutual TLS; with --tls-key)"},
      {"tls-key", "FILE", "PEM client key (mutual TLS; with --tls-cert)"},
      {"timeout", "SECONDS", "deadline for the whole call (default: none)"},
      // The request.
      {"model", "NAME", "model to run (default wan-tiny)"},
      {"prompt", "TEXT", "what to generate (required)"},
      {"negative-prompt", "TEXT", "what to steer away from"},
      {"seed", "N", "random seed, 0..2^64-1 (default: the server picks one and reports it)"},
      {"steps", "N", "denoising steps"},
      {"timesteps", "T1,T2,...", "explicit schedule, strictly decreasing, e.g. 1000,750,500,250 "
                                 "(few-step distilled checkpoints; sets the step count)"},
      {"guidance", "X", "classifier-free guidance scale (two-expert models: the high-noise "
                        "expert's)"},
      {"guidance-scale-2", "X", "two-expert models: the low-noise expert's guidance scale"},
      {"image", "FILE", "input image, PNG or JPEG (image-to-video models)"},
      {"max-area", "N", "with --image and no --width/--height: the output's area in pixels "
                        "(the image's aspect ratio is kept)"},
      {"flow-shift", "X", "flow-matching timestep shift"},
      {"scheduler", "unipc|euler", "sampler"},
      {"width", "N", "width in pixels (a multiple of the model's size multiple)"},
      {"height", "N", "height in pixels"},
      {"frames", "N", "frames (4k+1 for Wan; 1 gives an image)"},
      {"fps", "N", "frames per second of the MP4"},
      {"format", "png|mp4|raw|latents", "output (default: png for one frame, mp4 for several)"},
      {"priority", "N", "higher runs first (-2^31..2^31-1, default 0)"},
      {"request-id", "ID", "idempotency key: the same id attaches to the same job"},
      {"detached", "", "the job keeps running if this client goes away"},
      {"attention", attention::ModeNames(), "attention mode"},
      {"sparsity", "X", "fraction of attention blocks to skip, in [0, 1)"},
      {"kept-mass", "X", "rainfusion_mass: pooled-softmax mass each query block keeps, in (0, 1]"},
      {"sink-frames", "N", "first latent frames every query attends to (0 disables)"},
      {"window", "T,H,W", "permutation window in latent frames, rows, columns"},
      {"dense-warmup-steps", "N", "first denoising steps that run dense"},
      {"mask-refresh", attention::MaskRefreshNames(), "how often the block mask is predicted"},
      {"quality-probe", "RATE", "fraction of sparse steps whose attention is compared with "
                                "dense, in [0, 1] (up to the model's cap)"},
      {"step-cache", "off|first_block|teacache", "reuse of the transformer's residual on steps "
                                                 "whose input barely changed"},
      {"step-cache-threshold", "X", "step-cache threshold, in [0, 10] (0 never skips)"},
      {"step-cache-warmup", "N", "first denoising steps that always compute"},
      {"settings", "LIST", "compare: settings separated by ';', each key=value pairs "
                           "separated by ',' (keys: mode, sparsity, kept_mass, sink, warmup, "
                           "window TxHxW, mask_refresh), e.g. "
                           "\"sparsity=0.8,sink=1;sparsity=0.9\""},
      // Output and listing.
      {"out", "PATH", "where to write the artifact (default \"output\"); the format's "
                      "extension is added when PATH lacks it, \"-<index>\" before it when "
                      "there are several"},
      {"json", "", "print the result as one JSON object instead of the summary"},
      {"from-seq", "N", "replay events after this sequence number (default 0: all)"},
      {"all", "", "finished jobs too"},
      {"help", "", "show help and exit"},
      {"version", "", "show the version and exit"},
  };
  return *flags;
}

std::vector<std::string> RequestFlags() {
  return {"model",    "prompt",     "negative-prompt", "seed",        "steps", "timesteps",
          "guidance", "guidance-scale-2", "image",     "max-area",
          "flow-shift", "scheduler",       "width",       "height",
          "frames",   "fps",        "format",          "priority",    "request-id",
          "attention", "sparsity",  "sink-frames",     "window",      "dense-warmup-steps",
          "mask-refresh", "quality-probe", "step-cache", "step-cache-threshold",
          "step-cache-warmup"};
}

// The request flags compare takes: it sets the attention and the format itself.
std::vector<std::string> CompareFlags() {
  const std::set<std::string> own = {"attention", "sparsity", "sink-frames", "window",
                                     "dense-warmup-steps", "mask-refresh", "format",
                                     "request-id"};
  std::vector<std::string> flags;
  for (const std::string& f : RequestFlags()) {
    if (own.count(f) == 0) flags.push_back(f);
  }
  flags.insert(flags.end(), {"settings", "out"});
  return flags;
}

std::vector<std::string> Concat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

bool IsSwitch(const FlagSpec& f) { return f.value.empty(); }

// "  --name VALUE   help", the help wrapped at 80 columns under itself.
std::string FlagLine(const FlagSpec& f) {
  constexpr size_t kIndent = 28, kWidth = 80;
  std::string out = "  --" + f.name + (IsSwitch(f) ? "" : " " + f.value);
  std::string line;
  auto flush = [&] {
    out += (out.size() < kIndent && out.find('\n') == std::string::npos)
               ? std::string(kIndent - out.size(), ' ')
               : "\n" + std::string(kIndent, ' ');
    out += line;
    line.clear();
  };
  std::istringstream words(f.help);
  for (std::string word; words >> word;) {
    if (!line.empty() && kIndent + line.size() + 1 + word.size() > kWidth) flush();
    line += (line.empty() ? "" : " ") + word;
  }
  if (!line.empty()) flush();
  return out + "\n";
}

std::string FlagLines(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += FlagLine(*FindFlag(n));
  return out;
}

std::vector<std::string> AllFlagNames() {
  std::vector<std::string> names;
  for (const FlagSpec& f : Flags()) names.push_back(f.name);
  return names;
}

std::vector<std::string> CommandNames() {
  std::vector<std::string> names;
  for (const CommandSpec& c : Commands()) names.push_back(c.name);
  return names;
}

// Checks what the command accepts; `args.command` is known.
Status CheckForCommand(const Args& args) {
  const CommandSpec& command = *FindCommand(args.command);
  const std::set<std::string> allowed(command.flags.begin(), command.flags.end());
  for (const auto& [name, value] : args.flags) {
    const bool global = std::count(kConnectionFlags.begin(), kConnectionFlags.end(), name) ||
                        std::count(kGlobalSwitches.begin(), kGlobalSwitches.end(), name);
    if (!global && allowed.count(name) == 0) {
      return InvalidArgumentError("--" + name + " is not a flag of '" + command.name +
                                  "' (see: rainserve-cli help " + command.name + ")");
    }
  }
  const int n = static_cast<int>(args.positional.size());
  if (n < command.min_args || n > command.max_args) {
    std::string usage = "usage: rainserve-cli " + command.name;
    if (!command.args.empty()) usage += " " + command.args;
    if (n > command.max_args) {
      return InvalidArgumentError("unexpected argument '" + args.positional[command.max_args] +
                                  "' (" + usage + ")");
    }
    return InvalidArgumentError(usage);
  }
  return OkStatus();
}

// One "--name[=value]" at argv[*i]; advances *i past a separate value.
Status ParseFlag(int argc, const char* const* argv, int* i, Args* args) {
  std::string name = std::string(argv[*i]).substr(2);
  std::string value;
  bool has_value = false;
  if (const auto eq = name.find('='); eq != std::string::npos) {
    value = name.substr(eq + 1);
    name = name.substr(0, eq);
    has_value = true;
  }
  const FlagSpec* spec = FindFlag(name);
  if (spec == nullptr) {
    const std::string near = Closest(name, AllFlagNames());
    return InvalidArgumentError("unknown flag --" + name +
                                (near.empty() ? "" : " (did you mean --" + near + "?)"));
  }
  if (IsSwitch(*spec) && has_value) {
    return InvalidArgumentError("--" + name + " takes no value");
  }
  if (!IsSwitch(*spec) && !has_value) {
    if (*i + 1 >= argc || std::string(argv[*i + 1]).rfind("--", 0) == 0) {
      return InvalidArgumentError("--" + name + " needs a value (" + spec->value + ")");
    }
    value = argv[++*i];
  }
  if (!args->flags.emplace(name, value).second) {
    return InvalidArgumentError("--" + name + " given twice");
  }
  return OkStatus();
}

}  // namespace

const std::vector<CommandSpec>& Commands() {
  static const auto* commands = new std::vector<CommandSpec>{
      {"generate", "", 0, 0, "run a job and wait for it, with progress; write its artifact",
       "Streams the job's events: acceptance, queue position, a progress bar (one line per\n"
       "event when stderr is not a terminal), then writes the artifact to --out and prints\n"
       "a summary. Closing the call (Ctrl-C) cancels the job unless --detached.",
       Concat(RequestFlags(), {"detached", "out", "json"})},
      {"compare", "", 0, 0,
       "run one prompt and seed at dense and at each --settings; table of PSNR/SSIM",
       "Runs the prompt at dense attention (the baseline) and once per setting of\n"
       "--settings, with one seed (--seed, else the one the server picks for the dense\n"
       "run), as raw RGB frames. Prints a table of each setting's PSNR and SSIM against\n"
       "dense (mean over frames; SSIM on luma), requested and realized sparsity and\n"
       "stage times, and writes it to OUT/compare.json with a labelled side-by-side grid\n"
       "(OUT/compare.mp4, or OUT/compare.png for one frame). --out is a folder here\n"
       "(default \"compare\"). docs/quality.md explains the numbers.",
       CompareFlags()},
      {"submit", "", 0, 0, "queue a detached job and print its id",
       "The job runs whether or not anyone watches; follow it with `watch JOB_ID`.",
       RequestFlags()},
      {"watch", "JOB_ID", 1, 1, "follow a job (or replay it once finished); write its artifact",
       "Prints the job's events like generate and writes the artifact to --out.",
       {"from-seq", "out", "json"}},
      {"cancel", "JOB_ID", 1, 1, "cancel a job (it stops at the next denoising step)", "", {}},
      {"jobs", "", 0, 0, "list queued and running jobs (--all: finished ones too)",
       "Pages through the server's job list; prompts are shown as a prefix.", {"all"}},
      {"models", "[NAME]", 0, 1, "list the models, or describe one (limits and defaults)", "",
       {}},
      {"load", "NAME", 1, 1, "load a configured model (admin token)", "", {}},
      {"unload", "NAME", 1, 1, "unload a model (admin token)", "", {}},
      {"help", "[COMMAND]", 0, 1, "show help for a command", "", {}},
  };
  return *commands;
}

const CommandSpec* FindCommand(const std::string& name) {
  for (const CommandSpec& c : Commands()) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

const FlagSpec* FindFlag(const std::string& name) {
  for (const FlagSpec& f : Flags()) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

std::string MainHelp() {
  std::ostringstream s;
  s << "usage: rainserve-cli [connection flags] COMMAND [flags] [arguments]\n\n"
    << "Client for a RainServe server (gRPC): generate videos and images, follow and\n"
    << "cancel jobs, list and manage models.\n\nCommands:\n";
  for (const CommandSpec& c : Commands()) {
    const std::string left = "  " + c.name + (c.args.empty() ? "" : " " + c.args);
    s << left << std::string(left.size() < 20 ? 20 - left.size() : 1, ' ') << c.summary << "\n";
  }
  s << "\nConnection flags (every command):\n"
    << FlagLines(kConnectionFlags) << FlagLines(kGlobalSwitches)
    << "\n`rainserve-cli help COMMAND` lists a command's flags.\n"
    << "Exit codes: 0 success; 1 the call or the job failed (the gRPC status is printed\n"
    << "as CODE: message); 2 bad usage (unknown flag, malformed number, ...).\n";
  return s.str();
}

std::string CommandHelp(const CommandSpec& command) {
  std::ostringstream s;
  s << "usage: rainserve-cli " << command.name << (command.args.empty() ? "" : " " + command.args)
    << (command.flags.empty() ? "" : " [flags]") << "\n\n"
    << static_cast<char>(std::toupper(static_cast<unsigned char>(command.summary[0])))
    << command.summary.substr(1) << ".\n";
  if (!command.details.empty()) s << command.details << "\n";
  if (!command.flags.empty()) s << "\nFlags:\n" << FlagLines(command.flags);
  s << "\nConnection flags: --target --token --tls-ca --tls-cert --tls-key --timeout\n"
    << "(see rainserve-cli --help).\n";
  return s.str();
}

std::string Args::Get(const std::string& name, const std::string& fallback) const {
  const auto it = flags.find(name);
  return it == flags.end() ? fallback : it->second;
}

StatusOr<Args> Parse(int argc, const char* const* argv) {
  Args args;
  bool flags_done = false;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    if (!flags_done && s == "--") {
      flags_done = true;
    } else if (!flags_done && (s == "-h" || s == "--help")) {
      args.flags["help"] = "";
    } else if (!flags_done && s.rfind("--", 0) == 0) {
      RAINSERVE_RETURN_IF_ERROR(ParseFlag(argc, argv, &i, &args));
    } else if (!flags_done && s.size() > 1 && s[0] == '-') {
      return InvalidArgumentError("unknown flag " + s + " (flags start with --)");
    } else if (args.command.empty()) {
      args.command = s;
    } else {
      args.positional.push_back(s);
    }
  }
  if (args.command.empty()) {
    if (args.Has("help") || args.Has("version")) return args;
    return InvalidArgumentError("no command (rainserve-cli --help lists them)");
  }
  if (FindCommand(args.command) == nullptr) {
    const std::string near = Closest(args.command, CommandNames());
    return InvalidArgumentError("unknown command '" + args.command + "'" +
                                (near.empty() ? "" : " (did you mean '" + near + "'?)") +
                                "; rainserve-cli --help lists them");
  }
  if (args.command == "help" && args.positional.size() == 1 &&
      FindCommand(args.positional[0]) == nullptr) {
    return InvalidArgumentError("no command '" + args.positional[0] + "'");
  }
  if (args.Has("help")) return args;  // `COMMAND --help` ignores the rest
  RAINSERVE_RETURN_IF_ERROR(CheckForCommand(args));
  return args;
}

StatusOr<uint64_t> ParseUint(const std::string& flag, const std::string& text, uint64_t max) {
  const bool digits = !text.empty() && text.size() <= 20 &&
                      std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
  errno = 0;
  const unsigned long long v = digits ? std::strtoull(text.c_str(), nullptr, 10) : 0;
  if (!digits || errno == ERANGE || v > max) {
    return InvalidArgumentError("--" + flag + " expects an integer in [0, " + std::to_string(max) +
                                "], got '" + text + "'");
  }
  return static_cast<uint64_t>(v);
}

StatusOr<int64_t> ParseInt(const std::string& flag, const std::string& text, int64_t min,
                           int64_t max) {
  const std::string body = !text.empty() && (text[0] == '-' || text[0] == '+') ? text.substr(1) : text;
  const bool digits = !body.empty() && body.size() <= 19 &&
                      std::all_of(body.begin(), body.end(), [](char c) { return c >= '0' && c <= '9'; });
  errno = 0;
  const long long v = digits ? std::strtoll(text.c_str(), nullptr, 10) : 0;
  if (!digits || errno == ERANGE || v < min || v > max) {
    return InvalidArgumentError("--" + flag + " expects an integer in [" + std::to_string(min) +
                                ", " + std::to_string(max) + "], got '" + text + "'");
  }
  return static_cast<int64_t>(v);
}

StatusOr<double> ParseDouble(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const double v = text.empty() ? 0 : std::strtod(text.c_str(), &end);
  const bool space = !text.empty() && std::isspace(static_cast<unsigned char>(text[0]));
  if (text.empty() || space || end != text.c_str() + text.size() || errno == ERANGE ||
      !std::isfinite(v)) {
    return InvalidArgumentError("--" + flag + " expects a number, got '" + text + "'");
  }
  return v;
}

std::string Closest(const std::string& word, const std::vector<std::string>& names) {
  std::string best;
  size_t best_distance = 3;
  for (const std::string& name : names) {
    // Levenshtein distance, one row at a time.
    std::vector<size_t> row(name.size() + 1);
    for (size_t j = 0; j <= name.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= word.size(); ++i) {
      size_t diagonal = row[0];
      row[0] = i;
      for (size_t j = 1; j <= name.size(); ++j) {
        const size_t up = row[j];
        row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (word[i - 1] != name[j - 1])});
        diagonal = up;
      }
    }
    if (row[name.size()] < best_distance) {
      best_distance = row[name.size()];
      best = name;
    }
  }
  return best;
}

}  // namespace rainserve::cli
