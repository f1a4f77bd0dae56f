// rainserve-cli compare: the --settings list, the labelled side-by-side grid
// of the clips, and the table (terminal and JSON) of each setting's quality
// against the dense run. No gRPC calls here (rainserve_cli.cc runs the jobs).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "rainserve/v1/generation.pb.h"
#include "tools/quality_metrics.h"

namespace rainserve::cli {

// Settings one compare run accepts (besides the dense baseline).
inline constexpr size_t kMaxCompareSettings = 8;

// One setting to compare with dense: its label (the text as given) and the
// request's sparse-attention field.
struct CompareSetting {
  std::string label;
  v1::SparseAttention sparse_attention;
};

// Parses --settings: settings separated by ';', each a ','-separated list of
// key=value with the keys
//   mode (dense|rainfusion|rainfusion_mass), sparsity (X), kept_mass (X),
//   sink (N), warmup (N), window (TxHxW), mask_refresh (every_layer|per_step).
// A setting that names no mode runs rainfusion. Errors name the setting (its
// number and text) and the key, e.g.
//   "--settings: setting 2 'sparsity=lots': sparsity expects a number, got 'lots'".
StatusOr<std::vector<CompareSetting>> ParseSettings(const std::string& text);

// One clip's pixels: rgb [frames, height, width, 3].
struct Clip {
  int width = 0, height = 0, frames = 0;
  std::string rgb;
};

// Tiles side by side, left to right, each with its label in a black strip
// above it (white 5x7 text, wrapped to the tile's width).
struct Grid {
  int width = 0, height = 0, frames = 0;
  int strip_height = 0;  // rows of the label strip on top
  std::vector<uint8_t> rgb;  // [frames, height, width, 3]
};

// The label strip's height for `labels` over tiles `tile_width` wide (even,
// so that the grid's MP4 needs no padding row).
int LabelStripHeight(const std::vector<std::string>& labels, int tile_width);
// `label` cut into lines that fit `tile_width` at `scale`, broken after a
// ',' where one fits.
std::vector<std::string> WrapLabel(const std::string& label, int tile_width, int scale);
// Glyph scale for tiles `tile_width` wide: 2 from 320 pixels on, else 1.
int LabelScale(int tile_width);

// `clips` all have one size (checked by the caller); labels.size() == clips.size().
Grid ComposeGrid(const std::vector<std::string>& labels, const std::vector<const Clip*>& clips);

// One row of the table.
struct CompareRow {
  std::string label;
  quality::ClipQuality quality;
  double requested_sparsity = 0;
  double realized_sparsity = 0;
  double denoise_seconds = 0;
  double total_seconds = 0;
};

// "inf" for +inf, else two decimals.
std::string PsnrText(double psnr_db);
// A fixed-width table with a header row.
std::string CompareTable(const std::vector<CompareRow>& rows);

// What compare.json records besides the rows.
struct CompareInfo {
  std::string model, prompt;
  uint64_t seed = 0;
  int width = 0, height = 0, frames = 0;
  uint32_t steps = 0;
  std::string grid_file;  // "compare.mp4" or "compare.png"
};
// One JSON object: the info and "rows" (PSNR +inf as the string "inf").
std::string CompareJson(const CompareInfo& info, const std::vector<CompareRow>& rows);

// One run of the comparison: its label, clip and result. runs[0] is the
// dense baseline.
struct CompareRun {
  std::string label;
  Clip clip;
  v1::GenerateResult result;
};

// The table's rows: each run's quality against runs[0], its sparsity and
// stage timings. INVALID_ARGUMENT when a clip's size differs from the baseline's.
StatusOr<std::vector<CompareRow>> CompareRuns(const std::vector<CompareRun>& runs);

// The grid of every run as a file: PNG for one frame, MP4 at `fps` for
// several. Sets *extension to ".png" or ".mp4".
StatusOr<std::string> EncodeGrid(const Grid& grid, int fps, std::string* extension);

// Gathers one job's raw-RGB artifact and its result from the job's events.
class RawCollector {
 public:
  void On(const v1::GenerateEvent& e);
  // The clip and result once the job completed, or the job's failure, or
  // an error when it returned no complete raw artifact.
  StatusOr<Clip> TakeClip();
  const v1::GenerateResult& result() const { return result_; }
  uint64_t seed() const { return seed_; }

 private:
  bool completed_ = false;
  Status failure_;
  v1::ArtifactInfo info_;
  bool have_header_ = false;
  std::string data_;
  v1::GenerateResult result_;
  uint64_t seed_ = 0;
};

}  // namespace rainserve::cli
