#include "tools/cli_compare.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <set>
#include <sstream>

#include "attention/settings.h"
#include "media/ffmpeg_log.h"
#include "media/mp4_encoder.h"
#include "media/png_encoder.h"
#include "tools/cli_flags.h"
#include "tools/cli_output.h"
#include "tools/label_font.h"

namespace rainserve::cli {
namespace {

constexpr uint64_t kUint32Max = std::numeric_limits<uint32_t>::max();
const char* const kKeys = "mode, sparsity, kept_mass, sink, warmup, window, mask_refresh";

std::string Trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

std::vector<std::string> Split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream in(text);
  while (std::getline(in, part, sep)) parts.push_back(part);
  if (!text.empty() && text.back() == sep) parts.push_back("");
  return parts;
}

// The flag parsers' message without their "--".
Status KeyError(const Status& s) {
  const std::string& m = s.message();
  return InvalidArgumentError(m.rfind("--", 0) == 0 ? m.substr(2) : m);
}

StatusOr<uint32_t> KeyUint(const std::string& key, const std::string& value) {
  auto v = ParseUint(key, value, kUint32Max);
  if (!v.ok()) return KeyError(v.status());
  return static_cast<uint32_t>(*v);
}

Status SetWindow(const std::string& value, v1::Window* window) {
  const std::vector<std::string> parts = Split(value, 'x');
  const Status bad = InvalidArgumentError("window expects TxHxW (three integers), got '" +
                                          value + "'");
  if (parts.size() != 3) return bad;
  uint32_t side[3];
  for (int i = 0; i < 3; ++i) {
    auto v = ParseUint("window", parts[i], kUint32Max);
    if (!v.ok()) return bad;
    side[i] = static_cast<uint32_t>(*v);
  }
  window->set_t(side[0]);
  window->set_h(side[1]);
  window->set_w(side[2]);
  return OkStatus();
}

// Applies one key=value to `sa`.
Status SetKey(const std::string& key, const std::string& value, v1::SparseAttention* sa) {
  if (key == "mode") {
    auto mode = attention::ParseMode(value, "mode");
    if (!mode.ok()) return mode.status();
    sa->set_mode(*mode == attention::AttentionMode::kDense ? v1::ATTENTION_MODE_DENSE
                 : *mode == attention::AttentionMode::kRainFusionMass
                     ? v1::ATTENTION_MODE_RAINFUSION_MASS
                     : v1::ATTENTION_MODE_RAINFUSION);
  } else if (key == "sparsity" || key == "kept_mass") {
    auto v = ParseDouble(key, value);
    if (!v.ok()) return KeyError(v.status());
    key == "sparsity" ? sa->set_sparsity(*v) : sa->set_kept_mass(*v);
  } else if (key == "sink") {
    RAINSERVE_ASSIGN_OR_RETURN(const uint32_t v, KeyUint(key, value));
    sa->set_sink_frames(v);
  } else if (key == "warmup") {
    RAINSERVE_ASSIGN_OR_RETURN(const uint32_t v, KeyUint(key, value));
    sa->set_dense_warmup_steps(v);
  } else if (key == "window") {
    return SetWindow(value, sa->mutable_window());
  } else if (key == "mask_refresh") {
    auto refresh = attention::ParseMaskRefresh(value, "mask_refresh");
    if (!refresh.ok()) return refresh.status();
    sa->set_mask_refresh(*refresh == attention::MaskRefresh::kPerStep
                             ? v1::MASK_REFRESH_PER_STEP
                             : v1::MASK_REFRESH_EVERY_LAYER);
  } else {
    return InvalidArgumentError("unknown key '" + key + "' (keys: " + kKeys + ")");
  }
  return OkStatus();
}

StatusOr<CompareSetting> ParseSetting(const std::string& text) {
  CompareSetting setting;
  setting.label = text;
  if (text.empty()) return InvalidArgumentError("empty (expected key=value pairs)");
  std::set<std::string> seen;
  for (const std::string& raw : Split(text, ',')) {
    const std::string pair = Trim(raw);
    const size_t eq = pair.find('=');
    if (eq == std::string::npos) {
      return InvalidArgumentError("expected key=value, got '" + pair + "' (keys: " + kKeys + ")");
    }
    const std::string key = Trim(pair.substr(0, eq)), value = Trim(pair.substr(eq + 1));
    if (!seen.insert(key).second) return InvalidArgumentError(key + " given twice");
    RAINSERVE_RETURN_IF_ERROR(SetKey(key, value, &setting.sparse_attention));
  }
  if (setting.sparse_attention.mode() == v1::ATTENTION_MODE_UNSPECIFIED) {
    setting.sparse_attention.set_mode(v1::ATTENTION_MODE_RAINFUSION);
  }
  return setting;
}

std::string Fixed(double v, int decimals) {
  char buf[48];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  return buf;
}

// A JSON number (shortest text that round-trips).
std::string JsonNumber(double v) {
  char buf[48];
  for (const int digits : {15, 16, 17}) {
    std::snprintf(buf, sizeof(buf), "%.*g", digits, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}


}  // namespace

StatusOr<std::vector<CompareSetting>> ParseSettings(const std::string& text) {
  std::vector<CompareSetting> settings;
  const std::vector<std::string> parts = Split(text, ';');
  if (Trim(text).empty()) return InvalidArgumentError("--settings is empty");
  if (parts.size() > kMaxCompareSettings) {
    return InvalidArgumentError("--settings lists " + std::to_string(parts.size()) +
                                " settings, at most " + std::to_string(kMaxCompareSettings));
  }
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string t = Trim(parts[i]);
    auto setting = ParseSetting(t);
    if (!setting.ok()) {
      return InvalidArgumentError("--settings: setting " + std::to_string(i + 1) + " '" + t +
                                  "': " + setting.status().message());
    }
    settings.push_back(*std::move(setting));
  }
  return settings;
}

int LabelScale(int tile_width) { return tile_width >= 320 ? 2 : 1; }

std::vector<std::string> WrapLabel(const std::string& label, int tile_width, int scale) {
  // n glyphs take n * 6 - 1 columns; one column of margin on the left.
  const int fit = std::max(1, (tile_width / scale) / (quality::kGlyphWidth + 1));
  std::vector<std::string> lines;
  std::string rest = label;
  while (static_cast<int>(rest.size()) > fit) {
    // Break after the last ',' that fits, else mid-word.
    const size_t comma = rest.rfind(',', static_cast<size_t>(fit - 1));
    const size_t cut = comma == std::string::npos ? static_cast<size_t>(fit) : comma + 1;
    lines.push_back(rest.substr(0, cut));
    rest = rest.substr(cut);
  }
  if (!rest.empty() || lines.empty()) lines.push_back(rest);
  return lines;
}

int LabelStripHeight(const std::vector<std::string>& labels, int tile_width) {
  const int scale = LabelScale(tile_width);
  size_t lines = 1;
  for (const std::string& l : labels) lines = std::max(lines, WrapLabel(l, tile_width, scale).size());
  const int line_height = (quality::kGlyphHeight + 2) * scale;
  const int h = static_cast<int>(lines) * line_height + 2 * scale;
  return h + (h % 2);
}

Grid ComposeGrid(const std::vector<std::string>& labels, const std::vector<const Clip*>& clips) {
  const int tw = clips[0]->width, th = clips[0]->height;
  Grid g;
  g.frames = clips[0]->frames;
  g.strip_height = LabelStripHeight(labels, tw);
  g.width = tw * static_cast<int>(clips.size());
  g.height = th + g.strip_height;
  const size_t frame_bytes = static_cast<size_t>(g.width) * g.height * 3;
  g.rgb.assign(frame_bytes * g.frames, 0);  // black strip
  const size_t tile_row = static_cast<size_t>(tw) * 3;
  for (int f = 0; f < g.frames; ++f) {
    uint8_t* frame = g.rgb.data() + f * frame_bytes;
    for (size_t c = 0; c < clips.size(); ++c) {
      const uint8_t* src = reinterpret_cast<const uint8_t*>(clips[c]->rgb.data()) +
                           static_cast<size_t>(f) * th * tile_row;
      for (int y = 0; y < th; ++y) {
        std::memcpy(frame + (static_cast<size_t>(g.strip_height + y) * g.width + c * tw) * 3,
                    src + y * tile_row, tile_row);
      }
    }
  }
  // The labels, drawn once on the first frame and copied to the others.
  const int scale = LabelScale(tw);
  const uint8_t white[3] = {255, 255, 255};
  for (size_t c = 0; c < clips.size(); ++c) {
    const std::vector<std::string> lines = WrapLabel(labels[c], tw, scale);
    for (size_t i = 0; i < lines.size(); ++i) {
      // WrapLabel's lines fit the tile, so drawing never crosses into the next one.
      quality::DrawText(g.rgb.data(), g.width, g.strip_height,
                        static_cast<int>(c) * tw + scale,
                        scale + static_cast<int>(i) * (quality::kGlyphHeight + 2) * scale,
                        lines[i], scale, white);
    }
  }
  const size_t strip_bytes = static_cast<size_t>(g.width) * g.strip_height * 3;
  for (int f = 1; f < g.frames; ++f) {
    std::memcpy(g.rgb.data() + f * frame_bytes, g.rgb.data(), strip_bytes);
  }
  return g;
}

std::string PsnrText(double psnr_db) { return std::isinf(psnr_db) ? "inf" : Fixed(psnr_db, 2); }

std::string CompareTable(const std::vector<CompareRow>& rows) {
  std::vector<std::vector<std::string>> cells = {
      {"SETTING", "PSNR_DB", "SSIM", "SPARSITY", "REALIZED", "DENOISE", "TOTAL"}};
  for (const CompareRow& r : rows) {
    cells.push_back({r.label, PsnrText(r.quality.psnr_db), Fixed(r.quality.ssim, 4),
                     Fixed(r.requested_sparsity, 3), Fixed(r.realized_sparsity, 3),
                     FormatSeconds(r.denoise_seconds), FormatSeconds(r.total_seconds)});
  }
  std::vector<size_t> width(cells[0].size(), 0);
  for (const auto& row : cells) {
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  std::string out;
  for (const auto& row : cells) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      // The setting left-aligned, the numbers right-aligned.
      const std::string pad(width[c] - row[c].size(), ' ');
      line += c == 0 ? row[c] + pad : pad + row[c];
      if (c + 1 < row.size()) line += "  ";
    }
    out += line + "\n";
  }
  return out;
}

std::string CompareJson(const CompareInfo& info, const std::vector<CompareRow>& rows) {
  std::ostringstream s;
  s << "{\n  \"model\": " << JsonString(info.model) << ",\n  \"prompt\": " << JsonString(info.prompt)
    << ",\n  \"seed\": " << info.seed << ",\n  \"width\": " << info.width
    << ",\n  \"height\": " << info.height << ",\n  \"frames\": " << info.frames
    << ",\n  \"steps\": " << info.steps << ",\n  \"grid\": " << JsonString(info.grid_file)
    << ",\n  \"rows\": [";
  for (size_t i = 0; i < rows.size(); ++i) {
    const CompareRow& r = rows[i];
    const std::string psnr =
        std::isinf(r.quality.psnr_db) ? "\"inf\"" : JsonNumber(r.quality.psnr_db);
    s << (i ? "," : "") << "\n    {\"setting\": " << JsonString(r.label) << ", \"psnr_db\": " << psnr
      << ", \"ssim\": " << JsonNumber(r.quality.ssim)
      << ", \"identical_frames\": " << r.quality.identical_frames
      << ", \"requested_sparsity\": " << JsonNumber(r.requested_sparsity)
      << ", \"realized_sparsity\": " << JsonNumber(r.realized_sparsity)
      << ", \"denoise_seconds\": " << JsonNumber(r.denoise_seconds)
      << ", \"total_seconds\": " << JsonNumber(r.total_seconds) << "}";
  }
  s << "\n  ]\n}\n";
  return s.str();
}

StatusOr<std::vector<CompareRow>> CompareRuns(const std::vector<CompareRun>& runs) {
  const Clip& base = runs[0].clip;
  std::vector<CompareRow> rows;
  for (const CompareRun& run : runs) {
    const Clip& c = run.clip;
    if (c.width != base.width || c.height != base.height || c.frames != base.frames) {
      return InvalidArgumentError(
          "'" + run.label + "' returned " + std::to_string(c.width) + "x" +
          std::to_string(c.height) + "x" + std::to_string(c.frames) + ", the dense run " +
          std::to_string(base.width) + "x" + std::to_string(base.height) + "x" +
          std::to_string(base.frames));
    }
    CompareRow row;
    row.label = run.label;
    RAINSERVE_ASSIGN_OR_RETURN(
        row.quality,
        quality::CompareClips(reinterpret_cast<const uint8_t*>(base.rgb.data()),
                              reinterpret_cast<const uint8_t*>(c.rgb.data()), c.width, c.height,
                              c.frames));
    row.requested_sparsity = run.result.requested_sparsity();
    row.realized_sparsity = run.result.realized_sparsity();
    const auto seconds = [](const google::protobuf::Duration& d) {
      return static_cast<double>(d.seconds()) + d.nanos() * 1e-9;
    };
    row.denoise_seconds = seconds(run.result.timings().denoise());
    row.total_seconds = seconds(run.result.timings().total());
    rows.push_back(std::move(row));
  }
  return rows;
}

StatusOr<std::string> EncodeGrid(const Grid& grid, int fps, std::string* extension) {
  if (grid.frames == 1) {
    *extension = ".png";
    return media::EncodePng(grid.rgb.data(), grid.width, grid.height);
  }
  *extension = ".mp4";
  media::ForwardFfmpegLogs();  // libx264's banner goes to the debug log, not the terminal
  return media::EncodeMp4(grid.rgb.data(), grid.width, grid.height, grid.frames, fps);
}

void RawCollector::On(const v1::GenerateEvent& e) {
  switch (e.event_case()) {
    case v1::GenerateEvent::kAccepted:
      seed_ = e.accepted().seed();
      break;
    case v1::GenerateEvent::kArtifactHeader:
      // Compare asks for one raw artifact; the first one is the clip.
      if (!have_header_) {
        info_ = e.artifact_header().info();
        have_header_ = true;
      }
      break;
    case v1::GenerateEvent::kArtifactChunk:
      if (have_header_ && e.artifact_chunk().index() == info_.index() &&
          e.artifact_chunk().offset() == data_.size() &&
          data_.size() + e.artifact_chunk().data().size() <= info_.size_bytes()) {
        data_ += e.artifact_chunk().data();
      }
      break;
    case v1::GenerateEvent::kCompleted:
      completed_ = true;
      result_ = e.completed().result();
      break;
    case v1::GenerateEvent::kFailed:
      failure_ = Status(static_cast<StatusCode>(e.failed().code()), e.failed().message());
      break;
    default:
      break;
  }
}

StatusOr<Clip> RawCollector::TakeClip() {
  if (!failure_.ok()) return failure_;
  if (!completed_) return UnavailableError("the job's event stream ended before it completed");
  if (!have_header_) return InternalError("the job returned no artifact");
  const uint64_t expected =
      static_cast<uint64_t>(info_.width()) * info_.height() * info_.frames() * 3;
  if (info_.mime_type() != "application/octet-stream" || info_.dtype() == "float32" ||
      data_.size() != info_.size_bytes() || data_.size() != expected) {
    return InternalError("the job's artifact is not " + std::to_string(expected) +
                         " bytes of raw RGB (" + info_.mime_type() + ", " +
                         std::to_string(data_.size()) + " bytes received)");
  }
  Clip clip;
  clip.width = static_cast<int>(info_.width());
  clip.height = static_cast<int>(info_.height());
  clip.frames = static_cast<int>(info_.frames());
  clip.rgb = std::move(data_);
  return clip;
}

}  // namespace rainserve::cli
