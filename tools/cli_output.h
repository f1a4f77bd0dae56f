// rainserve-cli's output: gRPC codes by name, the progress display (a bar on
// a terminal, one line per event otherwise), the artifacts and the summary of
// a finished job, the job table and model descriptions.
//
// Results and tables go to stdout; progress and errors to stderr.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "rainserve/v1/generation.pb.h"
#include "rainserve/v1/models.pb.h"

namespace rainserve::cli {

// "NOT_FOUND: job 'x' not found" (`code` is a gRPC status code number).
std::string StatusText(int code, const std::string& message);

// "0.42s", "12.3s", "2m05s".
std::string FormatSeconds(double seconds);

// `text` as a JSON string literal (quotes, backslashes and control
// characters escaped).
std::string JsonString(const std::string& text);

// One progress event: "denoise [######......] 3/8  elapsed 1.2s  eta 2.0s"
// with a bar (terminal), or "denoise 3/8  elapsed 1.2s  eta 2.0s"; other
// stages as "decode...".
std::string ProgressText(const v1::Progress& p, bool bar);

// The summary's sparsity clause; a realized sparsity of 0 says why
// (dense mode, every step a dense warm-up step, a sequence too short for
// sparse attention).
std::string SparsityText(const v1::GenerateResult& r);
// The quality probe's summary ("quality probe: 4 layers of 2 steps, cosine
// mean 0.97 (min 0.95), rel L2 mean ..., kept mass mean ..."); empty without
// records.
std::string ProbeText(const v1::GenerateResult& r);

// The job list with a header row, or a sentence saying it is empty.
std::string JobTable(const std::vector<v1::Job>& jobs, bool include_finished);
std::string JobLine(const v1::Job& job);
std::string ModelText(const v1::ModelInfo& m);

// Follows one job's event stream: draws progress on `err`, reassembles the
// artifacts, writes them under --out when the job completes and prints where
// and the summary (or, with `json`, one JSON object) on `out`.
class EventPrinter {
 public:
  EventPrinter(std::string out_path, bool json, bool tty, std::ostream& out, std::ostream& err);

  void On(const v1::GenerateEvent& e);
  // True once the job completed and its artifacts were written.
  bool succeeded() const { return completed_ && !failed_; }

 private:
  void Progress(const v1::Progress& p);
  void Note(const std::string& line);  // a permanent line on `err`
  void Completed(const v1::GenerateResult& r);
  // Writes every artifact; the paths written (empty with an error printed on failure).
  std::vector<std::string> WriteArtifacts();

  std::string out_path_;
  bool json_;
  bool tty_;
  std::ostream& out_;
  std::ostream& err_;
  std::chrono::steady_clock::time_point start_;
  std::string bar_stage_;  // the stage whose transient line is showing ("" none)
  bool completed_ = false, failed_ = false;
  std::map<uint32_t, v1::ArtifactInfo> headers_;
  std::map<uint32_t, std::string> data_;
};

}  // namespace rainserve::cli
