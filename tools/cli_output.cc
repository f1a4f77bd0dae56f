#include "tools/cli_output.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "common/status.h"
#include "tools/cli_request.h"

namespace rainserve::cli {
namespace {

double Seconds(const google::protobuf::Duration& d) {
  return static_cast<double>(d.seconds()) + d.nanos() * 1e-9;
}

std::string Number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3g", v);
  return buf;
}

const char* JobStateName(v1::JobState s) {
  switch (s) {
    case v1::JOB_STATE_QUEUED: return "QUEUED";
    case v1::JOB_STATE_RUNNING: return "RUNNING";
    case v1::JOB_STATE_SUCCEEDED: return "SUCCEEDED";
    case v1::JOB_STATE_FAILED: return "FAILED";
    case v1::JOB_STATE_CANCELLED: return "CANCELLED";
    default: return "?";
  }
}

// What the job's state column leaves out: queue position, step, failure.
std::string JobDetail(const v1::Job& j) {
  if (j.state() == v1::JOB_STATE_QUEUED) return "position " + std::to_string(j.queue_position());
  if (j.state() == v1::JOB_STATE_RUNNING) {
    return "step " + std::to_string(j.step()) + "/" + std::to_string(j.total_steps());
  }
  if (j.has_failure() && !j.failure().message().empty()) {
    return StatusText(j.failure().code(), j.failure().message());
  }
  return "";
}


std::string PromptPrefix(const v1::Job& j) {
  constexpr size_t kShown = 32;
  std::string p = j.request().prompt();
  const bool cut = j.prompt_truncated() || p.size() > kShown;
  if (p.size() > kShown) p.resize(kShown);
  return "\"" + p + (cut ? "...\"" : "\"");
}

}  // namespace

std::string JsonString(const std::string& text) {
  std::string s = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      s += '\\';
      s += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      s += buf;
    } else {
      s += c;
    }
  }
  return s + "\"";
}

std::string StatusText(int code, const std::string& message) {
  const std::string name = code >= 0 && code <= 16
                               ? std::string(StatusCodeName(static_cast<StatusCode>(code)))
                               : "CODE_" + std::to_string(code);
  return name + ": " + message;
}

std::string FormatSeconds(double seconds) {
  char buf[32];
  if (seconds < 10) {
    std::snprintf(buf, sizeof(buf), "%.2fs", seconds);
  } else if (seconds < 60) {
    std::snprintf(buf, sizeof(buf), "%.1fs", seconds);
  } else {
    const long total = static_cast<long>(seconds + 0.5);
    std::snprintf(buf, sizeof(buf), "%ldm%02lds", total / 60, total % 60);
  }
  return buf;
}

std::string ProgressText(const v1::Progress& p, bool bar) {
  std::ostringstream s;
  s << p.stage();
  // Only denoising counts steps; the other stages are one piece of work each.
  if (p.stage() != "denoise" || p.total_steps() == 0) return s.str() + "...";
  if (bar) {
    constexpr uint32_t kWidth = 30;
    const uint32_t done = std::min(kWidth, kWidth * p.step() / p.total_steps());
    s << " [" << std::string(done, '#') << std::string(kWidth - done, '.') << "]";
  }
  s << " " << p.step() << "/" << p.total_steps() << "  elapsed " << FormatSeconds(Seconds(p.elapsed()));
  if (p.step() < p.total_steps()) s << "  eta " << FormatSeconds(Seconds(p.eta()));
  return s.str();
}

std::string SparsityText(const v1::GenerateResult& r) {
  const v1::SparseAttention& sa = r.applied().sparse_attention();
  std::string s = "sparsity requested " + Number(r.requested_sparsity()) + ", realized ";
  int sparse_steps = 0, warmup_steps = 0;
  for (const v1::StepStats& step : r.steps()) {
    if (step.sparse()) {
      ++sparse_steps;
    } else if (step.step() <= sa.dense_warmup_steps()) {
      ++warmup_steps;
    }
  }
  const int steps = r.steps_size();
  const int short_steps = steps - sparse_steps - warmup_steps;
  if (sa.mode() == v1::ATTENTION_MODE_DENSE || r.requested_sparsity() <= 0) {
    return s + "0 (dense attention requested)";
  }
  if (sparse_steps == 0) {
    if (short_steps == 0) {
      return s + "0 (all " + std::to_string(steps) + " steps were dense warm-up steps: " +
             "dense_warmup_steps " + std::to_string(sa.dense_warmup_steps()) + ")";
    }
    return s + "0 (every step ran dense: the sequence is too short for sparse attention)";
  }
  s += Number(r.realized_sparsity());
  if (r.realized_sparsity() <= 0) {
    return s + " (no block pair could be skipped: the sink and forced blocks cover the sequence)";
  }
  s += " over " + std::to_string(sparse_steps) + " of " + std::to_string(steps) + " steps";
  if (warmup_steps > 0) s += " (" + std::to_string(warmup_steps) + " dense warm-up)";
  return s;
}

std::string ProbeText(const v1::GenerateResult& r) {
  const int n = r.quality_probes_size();
  if (n == 0) return "";
  double cosine = 0, min_cosine = 1, rel_l2 = 0, max_rel_l2 = 0, mass = 0, min_mass = 1;
  std::vector<uint32_t> steps;
  for (const v1::QualityProbeStats& p : r.quality_probes()) {
    cosine += p.cosine() / n;
    rel_l2 += p.rel_l2() / n;
    mass += p.kept_mass() / n;
    min_cosine = std::min(min_cosine, p.cosine());
    max_rel_l2 = std::max(max_rel_l2, p.rel_l2());
    min_mass = std::min(min_mass, p.kept_mass());
    if (steps.empty() || steps.back() != p.step()) steps.push_back(p.step());
  }
  return "quality probe: " + std::to_string(n) + " layers of " + std::to_string(steps.size()) +
         " steps, cosine mean " + Number(cosine) + " (min " + Number(min_cosine) +
         "), rel L2 mean " + Number(rel_l2) + " (max " + Number(max_rel_l2) +
         "), kept mass mean " + Number(mass) + " (min " + Number(min_mass) + ")";
}

std::string JobLine(const v1::Job& j) {
  std::string line = j.job_id() + "  " + JobStateName(j.state()) + "  " + j.request().model();
  const std::string detail = JobDetail(j);
  return detail.empty() ? line : line + "  " + detail;
}

std::string JobTable(const std::vector<v1::Job>& jobs, bool include_finished) {
  if (jobs.empty()) return include_finished ? "no jobs\n" : "no queued or running jobs\n";
  std::vector<std::vector<std::string>> rows = {{"JOB_ID", "STATE", "MODEL", "PROMPT", "DETAIL"}};
  for (const v1::Job& j : jobs) {
    rows.push_back({j.job_id(), JobStateName(j.state()), j.request().model(), PromptPrefix(j),
                    JobDetail(j)});
  }
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      line += row[c];
      if (c + 1 < row.size()) line += std::string(width[c] - row[c].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  return out;
}

std::string ModelText(const v1::ModelInfo& m) {
  static const char* kStates[] = {"?", "NOT_LOADED", "LOADING", "READY", "FAILED"};
  const int st = m.state();
  std::ostringstream s;
  std::string tasks;
  for (const std::string& t : m.tasks()) tasks += (tasks.empty() ? "" : ",") + t;
  s << m.name() << "  " << (st >= 0 && st <= 4 ? kStates[st] : "?") << "  " << m.pipeline()
    << (tasks.empty() ? "" : "/" + tasks) << "  " << m.device() << " " << m.dtype();
  if (m.experts() >= 2) {
    s << "  " << m.experts() << " experts (switch at timestep " << Number(m.boundary_timestep())
      << ")";
  }
  if (!m.state_reason().empty()) s << "  (" << m.state_reason() << ")";
  s << "\n";
  if (m.state() != v1::MODEL_STATE_READY) return s.str();
  const auto& d = m.defaults();
  const auto& l = m.limits();
  s << "  defaults: " << d.width() << "x" << d.height() << "x" << d.num_frames() << " @" << d.fps()
    << "fps, " << d.steps() << " steps, guidance " << d.guidance_scale()
    << (d.has_guidance_scale_2() ? " / " + Number(d.guidance_scale_2()) : "") << ", shift "
    << d.flow_shift() << ", " << d.scheduler() << ", sparsity " << d.sparse_attention().sparsity()
    << ", sink " << d.sparse_attention().sink_frames() << "\n  limits: sizes multiple of "
    << l.size_multiple() << " up to " << l.max_width() << "x" << l.max_height() << ", frames "
    << l.frame_multiple() << "k+1 up to " << l.max_frames() << ", steps up to " << l.max_steps();
  if (tasks.find("i2v") != std::string::npos) {  // "i2v" or "ti2v"
    s << ", images up to " << l.max_image_bytes() << " bytes and " << l.max_image_pixels()
      << " pixels";
  }
  s << "\n";
  return s.str();
}

EventPrinter::EventPrinter(std::string out_path, bool json, bool tty, std::ostream& out,
                           std::ostream& err)
    : out_path_(std::move(out_path)), json_(json), tty_(tty), out_(out), err_(err),
      start_(std::chrono::steady_clock::now()) {}

void EventPrinter::Note(const std::string& line) {
  if (!bar_stage_.empty()) err_ << "\n";  // keep the last bar on screen
  bar_stage_.clear();
  err_ << line << "\n" << std::flush;
}

void EventPrinter::Progress(const v1::Progress& p) {
  const std::string text = ProgressText(p, tty_);
  if (!tty_) {
    err_ << text << "\n" << std::flush;
    return;
  }
  // One transient line per stage; a new stage keeps the previous one's last state.
  if (!bar_stage_.empty() && bar_stage_ != p.stage()) err_ << "\n";
  err_ << "\r\033[K" << text << std::flush;
  bar_stage_ = p.stage();
}

void EventPrinter::On(const v1::GenerateEvent& e) {
  switch (e.event_case()) {
    case v1::GenerateEvent::kAccepted:
      Note("job " + e.job_id() + " accepted (seed " + std::to_string(e.accepted().seed()) + ")");
      break;
    case v1::GenerateEvent::kQueued:
      Note("queued at position " + std::to_string(e.queued().position()) + " of " +
           std::to_string(e.queued().depth()));
      break;
    case v1::GenerateEvent::kStarted:
      Note("started on " + e.started().device());
      break;
    case v1::GenerateEvent::kProgress:
      Progress(e.progress());
      break;
    case v1::GenerateEvent::kArtifactHeader: {
      const v1::ArtifactInfo& info = e.artifact_header().info();
      headers_[info.index()] = info;
      data_[info.index()].reserve(info.size_bytes());
      break;
    }
    case v1::GenerateEvent::kArtifactChunk: {
      const v1::ArtifactChunk& c = e.artifact_chunk();
      std::string& d = data_[c.index()];
      if (c.offset() != d.size()) d.resize(c.offset());
      d += c.data();
      break;
    }
    case v1::GenerateEvent::kCompleted:
      if (!bar_stage_.empty()) err_ << "\n";
      bar_stage_.clear();
      Completed(e.completed().result());
      break;
    case v1::GenerateEvent::kFailed:
      Note("job failed: " + StatusText(e.failed().code(), e.failed().message()) +
           (e.failed().retryable() ? " (retryable)" : ""));
      failed_ = true;
      break;
    default:
      break;
  }
}

std::vector<std::string> EventPrinter::WriteArtifacts() {
  std::vector<std::string> paths;
  for (const auto& [index, info] : headers_) {
    const std::string path = ArtifactPath(out_path_, Extension(info), index, headers_.size());
    const std::string& data = data_[index];
    if (data.size() != info.size_bytes()) {
      err_ << "artifact " << index << " is incomplete: " << data.size() << " of "
           << info.size_bytes() << " bytes\n";
      failed_ = true;
      return {};
    }
    std::ofstream file(path, std::ios::binary);
    file << data;
    file.close();
    if (!file) {
      err_ << "cannot write " << path << "\n";
      failed_ = true;
      return {};
    }
    paths.push_back(path);
    if (json_) continue;
    out_ << "wrote " << path << "  (" << info.mime_type() << ", " << info.width() << "x"
         << info.height() << "x" << info.frames() << ", " << data.size() << " bytes, sha256 "
         << info.sha256() << ")\n";
  }
  if (headers_.empty() && !json_) out_ << "the job returned no artifacts: nothing written\n";
  return paths;
}

void EventPrinter::Completed(const v1::GenerateResult& r) {
  completed_ = true;
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const std::vector<std::string> paths = WriteArtifacts();
  if (failed_) return;
  if (json_) {
    std::string text;
    google::protobuf::util::JsonPrintOptions options;
    options.preserve_proto_field_names = true;
    (void)google::protobuf::util::MessageToJsonString(r, &text, options);
    std::string files;
    for (const std::string& p : paths) files += (files.empty() ? "" : ", ") + JsonString(p);
    out_ << "{\"result\": " << text << ", \"files\": [" << files
         << "], \"client_seconds\": " << seconds << "}\n";
    return;
  }
  const auto& t = r.timings();
  if (r.applied().has_input_image()) {
    const v1::InputImageInfo& image = r.applied().input_image();
    out_ << "input image: " << image.mime_type() << ", " << image.width() << "x"
         << image.height() << ", " << image.size_bytes() << " bytes -> " << r.applied().width()
         << "x" << r.applied().height() << "\n";
  }
  out_ << "model " << r.applied().model() << " on " << r.device() << ": seed "
       << r.applied().seed() << ", " << r.applied().steps() << " steps, " << SparsityText(r)
       << "\n";
  if (r.quality_probes_size() > 0) out_ << ProbeText(r) << "\n";
  out_
       << "timings: queue " << FormatSeconds(Seconds(t.queue())) << ", text "
       << FormatSeconds(Seconds(t.text_encode()))
       << (r.applied().has_input_image() ? ", image " + FormatSeconds(Seconds(t.image_encode()))
                                         : "")
       << ", denoise "
       << FormatSeconds(Seconds(t.denoise())) << ", decode " << FormatSeconds(Seconds(t.decode()))
       << ", encode " << FormatSeconds(Seconds(t.encode())) << ", total "
       << FormatSeconds(Seconds(t.total())) << "; peak memory "
       << r.peak_memory_bytes() / (1 << 20) << " MiB\n";
}

}  // namespace rainserve::cli
