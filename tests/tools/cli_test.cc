// rainserve-cli's parts that need no server: the command line (unknown,
// misspelled and misplaced flags, strict numbers), the request built from
// it, the --out rule, the progress text, the summary's sparsity clause, the
// job table and the event printer.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <vector>

#include "tools/cli_flags.h"
#include "tools/cli_output.h"
#include "tools/cli_request.h"

namespace rainserve::cli {
namespace {

StatusOr<Args> ParseArgs(std::vector<const char*> argv) {
  argv.insert(argv.begin(), "rainserve-cli");
  return Parse(static_cast<int>(argv.size()), argv.data());
}

// The error message of parsing `argv`, or "" when it parsed.
std::string ParseError(std::vector<const char*> argv) {
  const auto args = ParseArgs(std::move(argv));
  return args.ok() ? "" : args.status().message();
}

std::string BuildError(std::vector<const char*> argv) {
  const auto args = ParseArgs(std::move(argv));
  if (!args.ok()) return "parse: " + args.status().message();
  const auto request = BuildRequest(*args);
  return request.ok() ? "" : request.status().message();
}

TEST(CliFlagsTest, FlagsBeforeAndAfterTheCommandWithEitherSpelling) {
  const auto args = ParseArgs({"--target", "h:1", "generate", "--prompt=a cat", "--seed", "7",
                               "--json"});
  ASSERT_TRUE(args.ok()) << args.status().ToString();
  EXPECT_EQ(args->command, "generate");
  EXPECT_EQ(args->Get("target"), "h:1");
  EXPECT_EQ(args->Get("prompt"), "a cat");
  EXPECT_EQ(args->Get("seed"), "7");
  EXPECT_TRUE(args->Has("json"));
  // Nothing after "--" is a flag.
  const auto watch = ParseArgs({"watch", "--", "--odd-id"});
  ASSERT_TRUE(watch.ok()) << watch.status().ToString();
  EXPECT_EQ(watch->positional, std::vector<std::string>{"--odd-id"});
}

TEST(CliFlagsTest, MisspelledAndUnknownFlagsAreErrorsWithASuggestion) {
  EXPECT_EQ(ParseError({"generate", "--prompt", "x", "--sparsty", "0.95"}),
            "unknown flag --sparsty (did you mean --sparsity?)");
  EXPECT_EQ(ParseError({"generate", "--prompt", "x", "--no-such-thing", "1"}),
            "unknown flag --no-such-thing");
  EXPECT_NE(ParseError({"generate", "-s", "0.9"}).find("unknown flag -s"), std::string::npos);
  EXPECT_EQ(ParseError({"jobs", "--sparsity", "0.5"}),
            "--sparsity is not a flag of 'jobs' (see: rainserve-cli help jobs)");
  EXPECT_EQ(ParseError({"genrate"}).rfind("unknown command 'genrate' (did you mean 'generate'?)", 0),
            0u);
}

TEST(CliFlagsTest, MissingRepeatedAndStrayValuesAreErrors) {
  EXPECT_EQ(ParseError({"generate", "--prompt"}), "--prompt needs a value (TEXT)");
  EXPECT_EQ(ParseError({"generate", "--prompt", "--seed", "1"}), "--prompt needs a value (TEXT)");
  EXPECT_EQ(ParseError({"generate", "--seed", "1", "--seed", "2"}), "--seed given twice");
  EXPECT_EQ(ParseError({"jobs", "--all=yes"}), "--all takes no value");
  EXPECT_EQ(ParseError({"watch"}), "usage: rainserve-cli watch JOB_ID");
  EXPECT_NE(ParseError({"cancel", "a", "b"}).find("unexpected argument 'b'"), std::string::npos);
  EXPECT_NE(ParseError({}).find("no command"), std::string::npos);
  EXPECT_EQ(ParseError({"help", "nope"}), "no command 'nope'");
}

TEST(CliFlagsTest, HelpAndVersionNeedNothingElse) {
  for (auto argv : std::vector<std::vector<const char*>>{
           {"--help"}, {"-h"}, {"--version"}, {"generate", "--help"}, {"help", "watch"}}) {
    EXPECT_EQ(ParseError(argv), "") << argv[0];
  }
  const std::string help = MainHelp();
  for (const CommandSpec& c : Commands()) {
    EXPECT_NE(help.find("  " + c.name), std::string::npos) << c.name;
    const std::string command_help = CommandHelp(c);
    for (const std::string& flag : c.flags) {
      EXPECT_NE(command_help.find("--" + flag), std::string::npos) << c.name << " --" << flag;
    }
  }
}

TEST(CliFlagsTest, NumbersAreStrictAndRangeChecked) {
  EXPECT_EQ(BuildError({"generate", "--width", "4294967312"}),
            "--width expects an integer in [0, 4294967295], got '4294967312'");
  EXPECT_EQ(BuildError({"generate", "--steps", "8x"}),
            "--steps expects an integer in [0, 4294967295], got '8x'");
  EXPECT_EQ(BuildError({"generate", "--seed", "-1"}),
            "--seed expects an integer in [0, 18446744073709551615], got '-1'");
  EXPECT_EQ(BuildError({"generate", "--seed", "18446744073709551616"}),
            "--seed expects an integer in [0, 18446744073709551615], got '18446744073709551616'");
  EXPECT_EQ(BuildError({"generate", "--priority", "2147483648"}),
            "--priority expects an integer in [-2147483648, 2147483647], got '2147483648'");
  EXPECT_EQ(BuildError({"generate", "--sparsity", "0.9.5"}),
            "--sparsity expects a number, got '0.9.5'");
  EXPECT_EQ(BuildError({"generate", "--guidance", "nan"}), "--guidance expects a number, got 'nan'");
  EXPECT_EQ(BuildError({"generate", "--guidance", " 5"}), "--guidance expects a number, got ' 5'");
  EXPECT_NE(BuildError({"generate", "--window", "2,8"}).find("T,H,W"), std::string::npos);
  EXPECT_NE(BuildError({"generate", "--window", "2,8,x"}).find("T,H,W"), std::string::npos);
  EXPECT_EQ(BuildError({"generate", "--format", "gif"}),
            "--format expects latents|mp4|png|raw, got 'gif'");
}

TEST(CliFlagsTest, EveryRequestFlagReachesTheRequest) {
  const auto args = ParseArgs({"generate", "--prompt", "p", "--seed", "18446744073709551615",
                               "--width", "4294967295", "--priority", "-3", "--sparsity", "0.95",
                               "--window", "2,8,16", "--frames", "1", "--format", "latents",
                               "--attention", "rainfusion", "--dense-warmup-steps", "2"});
  ASSERT_TRUE(args.ok()) << args.status().ToString();
  const auto r = BuildRequest(*args);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->seed(), UINT64_MAX);
  EXPECT_EQ(r->width(), UINT32_MAX);
  EXPECT_EQ(r->priority(), -3);
  EXPECT_FALSE(r->has_height());
  EXPECT_DOUBLE_EQ(r->sparse_attention().sparsity(), 0.95);
  EXPECT_EQ(r->sparse_attention().window().w(), 16u);
  EXPECT_EQ(r->num_frames(), 1u);
  EXPECT_EQ(r->output_format(), v1::OUTPUT_FORMAT_LATENTS);
  EXPECT_EQ(r->sparse_attention().mode(), v1::ATTENTION_MODE_RAINFUSION);
  EXPECT_EQ(r->sparse_attention().dense_warmup_steps(), 2u);
}

TEST(CliFlagsTest, StepCacheFlagsReachTheRequest) {
  const auto args = ParseArgs({"generate", "--prompt", "p", "--step-cache", "teacache",
                               "--step-cache-threshold", "0.2", "--step-cache-warmup", "3"});
  ASSERT_TRUE(args.ok()) << args.status().ToString();
  const auto r = BuildRequest(*args);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->step_cache().mode(), v1::STEP_CACHE_MODE_TEACACHE);
  EXPECT_DOUBLE_EQ(r->step_cache().threshold(), 0.2);
  EXPECT_EQ(r->step_cache().warmup_steps(), 3u);
  EXPECT_EQ(BuildError({"generate", "--step-cache", "magcache"}),
            "--step-cache expects first_block|off|teacache, got 'magcache'");
}

TEST(CliFlagsTest, TimestepsFlagSetsTheExplicitSchedule) {
  const auto args = ParseArgs({"generate", "--prompt", "p", "--timesteps", "1000,750,500,250.5",
                               "--guidance", "1"});
  ASSERT_TRUE(args.ok()) << args.status().ToString();
  const auto r = BuildRequest(*args);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->timesteps_size(), 4);
  EXPECT_DOUBLE_EQ(r->timesteps(0), 1000);
  EXPECT_DOUBLE_EQ(r->timesteps(3), 250.5);
  EXPECT_FALSE(r->has_steps());  // the server takes the count from the list
  EXPECT_EQ(BuildError({"generate", "--timesteps", "1000,,500"}),
            "--timesteps expects a number, got ''");
  EXPECT_EQ(BuildError({"generate", "--timesteps", "1000,x"}),
            "--timesteps expects a number, got 'x'");
}

TEST(CliFlagsTest, ImageAndExpertFlagsReachTheRequest) {
  char path[] = "/tmp/rainserve-cli-image-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  const std::string bytes("\x89PNG\r\n\x1a\n\0any bytes", 18);
  { std::ofstream(path, std::ios::binary) << bytes; }
  const auto args = ParseArgs({"generate", "--prompt", "p", "--image", path,
                               "--guidance-scale-2", "3.5", "--max-area", "399360"});
  ASSERT_TRUE(args.ok()) << args.status().ToString();
  const auto r = BuildRequest(*args);
  std::remove(path);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->image(), bytes);  // as read: the server decodes and checks it
  EXPECT_DOUBLE_EQ(r->guidance_scale_2(), 3.5);
  EXPECT_EQ(r->max_area(), 399360u);
  EXPECT_FALSE(r->has_width());
  EXPECT_EQ(BuildError({"generate", "--image", "/no/such/image.png"}).rfind("--image: ", 0), 0u);
  EXPECT_EQ(BuildError({"generate", "--max-area", "-1"}).rfind("--max-area", 0), 0u);
  EXPECT_EQ(BuildError({"generate", "--guidance-scale-2", "x"}),
            "--guidance-scale-2 expects a number, got 'x'");
}

TEST(CliOutTest, ExtensionIsAddedOnlyWhenMissing) {
  EXPECT_EQ(ArtifactPath("named.mp4", ".mp4", 0, 1), "named.mp4");
  EXPECT_EQ(ArtifactPath("named", ".mp4", 0, 1), "named.mp4");
  EXPECT_EQ(ArtifactPath("dir/a.b", ".png", 0, 1), "dir/a.b.png");
  EXPECT_EQ(ArtifactPath("frames.png", ".png", 2, 3), "frames-2.png");
  EXPECT_EQ(ArtifactPath("frames", ".png", 0, 3), "frames-0.png");
  EXPECT_EQ(ArtifactPath(".mp4", ".mp4", 0, 1), ".mp4.mp4");  // a name, not only an extension
}

v1::Progress Step(const std::string& stage, uint32_t step, uint32_t total, double elapsed,
                  double eta) {
  v1::Progress p;
  p.set_stage(stage);
  p.set_step(step);
  p.set_total_steps(total);
  p.mutable_elapsed()->set_nanos(static_cast<int32_t>(elapsed * 1e9));
  p.mutable_eta()->set_seconds(static_cast<int64_t>(eta));
  return p;
}

TEST(CliProgressTest, BarOnATerminalAndPlainStepsOtherwise) {
  const v1::Progress p = Step("denoise", 3, 8, 0.5, 75);
  EXPECT_EQ(ProgressText(p, true),
            "denoise [###########...................] 3/8  elapsed 0.50s  eta 1m15s");
  EXPECT_EQ(ProgressText(p, false), "denoise 3/8  elapsed 0.50s  eta 1m15s");
  EXPECT_EQ(ProgressText(Step("denoise", 8, 8, 0.5, 0), false), "denoise 8/8  elapsed 0.50s");
  EXPECT_EQ(ProgressText(Step("decode", 8, 8, 0.5, 0), true), "decode...");
}

v1::GenerateEvent ProgressEvent(uint32_t step) {
  v1::GenerateEvent e;
  *e.mutable_progress() = Step("denoise", step, 2, 0.1 * step, 1);
  return e;
}

TEST(CliProgressTest, OneLinePerEventWhenNotATerminal) {
  std::ostringstream out, err;
  EventPrinter printer("unused", false, /*tty=*/false, out, err);
  for (uint32_t s = 1; s <= 2; ++s) printer.On(ProgressEvent(s));
  EXPECT_EQ(err.str(), "denoise 1/2  elapsed 0.10s  eta 1.00s\ndenoise 2/2  elapsed 0.20s\n");
}

TEST(CliProgressTest, OneRewrittenLineOnATerminal) {
  std::ostringstream out, err;
  EventPrinter printer("unused", false, /*tty=*/true, out, err);
  for (uint32_t s = 1; s <= 2; ++s) printer.On(ProgressEvent(s));
  v1::GenerateEvent failed;
  failed.mutable_failed()->set_code(8);
  failed.mutable_failed()->set_message("queue full");
  printer.On(failed);
  const std::string bar1 = ProgressText(Step("denoise", 1, 2, 0.1, 1), true);
  const std::string bar2 = ProgressText(Step("denoise", 2, 2, 0.2, 1), true);
  EXPECT_EQ(err.str(), "\r\033[K" + bar1 + "\r\033[K" + bar2 +
                           "\njob failed: RESOURCE_EXHAUSTED: queue full\n");
  EXPECT_FALSE(printer.succeeded());
}

TEST(CliOutputTest, CodesPrintByName) {
  EXPECT_EQ(StatusText(5, "job 'x' not found"), "NOT_FOUND: job 'x' not found");
  EXPECT_EQ(StatusText(16, "no token"), "UNAUTHENTICATED: no token");
  EXPECT_EQ(StatusText(99, "?"), "CODE_99: ?");
}

v1::GenerateResult Result(double requested, double realized, uint32_t warmup,
                          std::vector<bool> sparse) {
  v1::GenerateResult r;
  r.set_requested_sparsity(requested);
  r.set_realized_sparsity(realized);
  r.mutable_applied()->mutable_sparse_attention()->set_mode(
      requested > 0 ? v1::ATTENTION_MODE_RAINFUSION : v1::ATTENTION_MODE_DENSE);
  r.mutable_applied()->mutable_sparse_attention()->set_dense_warmup_steps(warmup);
  for (size_t i = 0; i < sparse.size(); ++i) {
    v1::StepStats* s = r.add_steps();
    s->set_step(static_cast<uint32_t>(i + 1));
    s->set_sparse(sparse[i]);
  }
  return r;
}

TEST(CliFlagsTest, QualityProbeFlagSetsTheRate) {
  const auto args = ParseArgs({"generate", "--prompt", "p", "--quality-probe", "0.25"});
  ASSERT_TRUE(args.ok()) << args.status().ToString();
  const auto r = BuildRequest(*args);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_DOUBLE_EQ(r->sparse_attention().quality_probe().rate(), 0.25);
  const auto plain = BuildRequest(*ParseArgs({"generate", "--prompt", "p"}));
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->sparse_attention().quality_probe().has_rate());
}

TEST(CliOutputTest, ProbeSummaryAveragesTheRecordsAndIsEmptyWithout) {
  v1::GenerateResult r;
  EXPECT_EQ(ProbeText(r), "");
  const double rows[][4] = {{2, 0.25, 0.98, 0.75}, {2, 0.5, 0.96, 0.5}, {3, 0.75, 0.94, 0.25}};
  for (const auto& row : rows) {
    v1::QualityProbeStats* p = r.add_quality_probes();
    p->set_step(static_cast<uint32_t>(row[0]));
    p->set_rel_l2(row[1]);
    p->set_cosine(row[2]);
    p->set_kept_mass(row[3]);
  }
  EXPECT_EQ(ProbeText(r),
            "quality probe: 3 layers of 2 steps, cosine mean 0.96 (min 0.94), rel L2 mean 0.5 "
            "(max 0.75), kept mass mean 0.5 (min 0.25)");
}

TEST(CliOutputTest, ZeroRealizedSparsityIsExplained) {
  EXPECT_EQ(SparsityText(Result(0, 0, 0, {false, false})),
            "sparsity requested 0, realized 0 (dense attention requested)");
  EXPECT_EQ(SparsityText(Result(0.5, 0, 2, {false, false})),
            "sparsity requested 0.5, realized 0 (all 2 steps were dense warm-up steps: "
            "dense_warmup_steps 2)");
  EXPECT_EQ(SparsityText(Result(0.8, 0, 1, {false, false, false})),
            "sparsity requested 0.8, realized 0 (every step ran dense: the sequence is too short "
            "for sparse attention)");
  EXPECT_EQ(SparsityText(Result(0.8, 0.61, 1, {false, true, true})),
            "sparsity requested 0.8, realized 0.61 over 2 of 3 steps (1 dense warm-up)");
}

TEST(CliOutputTest, ModelTextShowsTasksExpertsAndImageLimits) {
  v1::ModelInfo m;
  m.set_name("a14b");
  m.set_pipeline("wan");
  m.add_tasks("i2v");
  m.set_experts(2);
  m.set_boundary_timestep(900);
  m.set_state(v1::MODEL_STATE_READY);
  m.mutable_defaults()->set_guidance_scale(3.5);
  m.mutable_defaults()->set_guidance_scale_2(2);
  m.mutable_limits()->set_max_image_bytes(1 << 20);
  m.mutable_limits()->set_max_image_pixels(1000);
  const std::string text = ModelText(m);
  EXPECT_NE(text.find("a14b  READY  wan/i2v  "), std::string::npos) << text;
  EXPECT_NE(text.find("2 experts (switch at timestep 900)"), std::string::npos) << text;
  EXPECT_NE(text.find("guidance 3.5 / 2, "), std::string::npos) << text;
  EXPECT_NE(text.find("images up to 1048576 bytes and 1000 pixels"), std::string::npos) << text;
  // A one-expert text-to-video model says neither.
  v1::ModelInfo t2v;
  t2v.set_name("wan-tiny");
  t2v.set_pipeline("wan");
  t2v.add_tasks("t2v");
  t2v.add_tasks("t2i");
  t2v.set_experts(1);
  t2v.set_state(v1::MODEL_STATE_READY);
  const std::string plain = ModelText(t2v);
  EXPECT_NE(plain.find("wan/t2v,t2i  "), std::string::npos) << plain;
  EXPECT_EQ(plain.find("experts"), std::string::npos) << plain;
  EXPECT_EQ(plain.find(" / "), std::string::npos) << plain;
  EXPECT_EQ(plain.find("images"), std::string::npos) << plain;
}

TEST(CliOutputTest, JobTableHasAHeaderOrSaysItIsEmpty) {
  EXPECT_EQ(JobTable({}, false), "no queued or running jobs\n");
  EXPECT_EQ(JobTable({}, true), "no jobs\n");
  v1::Job queued;
  queued.set_job_id("job-1");
  queued.set_state(v1::JOB_STATE_QUEUED);
  queued.set_queue_position(3);
  queued.mutable_request()->set_model("wan-tiny");
  queued.mutable_request()->set_prompt("a cat");
  queued.set_prompt_truncated(true);
  v1::Job failed = queued;
  failed.set_job_id("job-22");
  failed.set_state(v1::JOB_STATE_FAILED);
  failed.set_prompt_truncated(false);
  failed.mutable_failure()->set_code(4);
  failed.mutable_failure()->set_message("deadline passed");
  EXPECT_EQ(JobTable({queued, failed}, true),
            "JOB_ID  STATE   MODEL     PROMPT      DETAIL\n"
            "job-1   QUEUED  wan-tiny  \"a cat...\"  position 3\n"
            "job-22  FAILED  wan-tiny  \"a cat\"     DEADLINE_EXCEEDED: deadline passed\n");
}

}  // namespace
}  // namespace rainserve::cli
