// rainserve-cli's command line: the table of commands and flags (the help
// text is generated from it), parsing with errors that name the flag, and
// strict number parsing. No gRPC here.
//
// Every error is a usage error (the CLI exits 2 with the message).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/status.h"

namespace rainserve::cli {

struct FlagSpec {
  std::string name;   // without "--"
  std::string value;  // placeholder in help ("N", "TEXT"); empty for a switch
  std::string help;
};

struct CommandSpec {
  std::string name;
  std::string args;     // positional synopsis ("JOB_ID"), or ""
  int min_args = 0;     // positional arguments accepted
  int max_args = 0;
  std::string summary;  // one line
  std::string details;  // a paragraph for `help COMMAND`
  std::vector<std::string> flags;  // its own flags; the connection flags apply to all
};

const std::vector<CommandSpec>& Commands();
const CommandSpec* FindCommand(const std::string& name);
const FlagSpec* FindFlag(const std::string& name);

// The main help (`--help`) and one command's (`help COMMAND`, `COMMAND --help`).
std::string MainHelp();
std::string CommandHelp(const CommandSpec& command);

struct Args {
  std::string command;  // "" with --help or --version alone
  std::vector<std::string> positional;
  std::map<std::string, std::string> flags;  // name -> value ("" for switches)

  bool Has(const std::string& name) const { return flags.count(name) != 0; }
  std::string Get(const std::string& name, const std::string& fallback = "") const;
};

// Parses argv (flags may come before or after the command; `--name=value` or
// `--name value`; `--` ends the flags). Unknown, misplaced, repeated or
// value-less flags, unknown commands and wrong argument counts are errors.
StatusOr<Args> Parse(int argc, const char* const* argv);

// Strict numbers: the whole text, in range; errors name the flag and quote the text.
StatusOr<uint64_t> ParseUint(const std::string& flag, const std::string& text, uint64_t max);
StatusOr<int64_t> ParseInt(const std::string& flag, const std::string& text, int64_t min,
                           int64_t max);
StatusOr<double> ParseDouble(const std::string& flag, const std::string& text);

// The closest name to `word` among `names` (edit distance at most 2), or "".
std::string Closest(const std::string& word, const std::vector<std::string>& names);

}  // namespace rainserve::cli
