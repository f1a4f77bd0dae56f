// The rainserve-cli binary as a person runs it: against the real
// rainserve-server serving wan-tiny (help, usage errors and their exit code,
// codes by name, --out, progress on a pipe and on a terminal, watch, jobs,
// the summary), and against an in-process Generation service that pages
// ListJobs (jobs --all).
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/files.h"
#include "media/image_decoder.h"
#include "rainserve/v1/generation.grpc.pb.h"
#include "tests/media/test_frames.h"
#include "tests/server/test_server.h"
#include "tools/cli_compare.h"

namespace rainserve {
namespace {

struct CliRun {
  int exit_code = -1;
  std::string out, err;
};

// Reads every fd until all are closed (EOF, or EIO from a pty whose other side closed).
void Drain(std::vector<int> fds, std::vector<std::string*> texts) {
  std::vector<pollfd> p;
  for (int fd : fds) p.push_back(pollfd{fd, POLLIN, 0});
  size_t open = fds.size();
  while (open > 0 && poll(p.data(), p.size(), 60000) > 0) {
    for (size_t i = 0; i < p.size(); ++i) {
      if (p[i].fd < 0 || p[i].revents == 0) continue;
      char buf[4096];
      const ssize_t n = read(p[i].fd, buf, sizeof(buf));
      if (n > 0) {
        texts[i]->append(buf, static_cast<size_t>(n));
      } else {
        close(p[i].fd);
        p[i].fd = -1;
        --open;
      }
    }
  }
}

// Runs rainserve-cli with `args`; stderr goes to a pseudo-terminal when `tty`.
CliRun RunCli(const std::vector<std::string>& args, bool tty = false) {
  int out_pipe[2], err_pipe[2];
  EXPECT_EQ(pipe(out_pipe), 0);
  EXPECT_EQ(pipe(err_pipe), 0);
  int pty_master = -1;
  std::string pty_slave;
  if (tty) {
    pty_master = posix_openpt(O_RDWR | O_NOCTTY);
    EXPECT_GE(pty_master, 0);
    EXPECT_EQ(grantpt(pty_master), 0);
    EXPECT_EQ(unlockpt(pty_master), 0);
    pty_slave = ptsname(pty_master);
  }
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(out_pipe[1], 1);
    const int err_fd = tty ? open(pty_slave.c_str(), O_RDWR | O_NOCTTY) : err_pipe[1];
    dup2(err_fd, 2);
    std::vector<char*> argv = {const_cast<char*>(RAINSERVE_CLI_BINARY)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(out_pipe[1]);
  close(err_pipe[1]);
  CliRun run;
  if (tty) {
    close(err_pipe[0]);
    Drain({out_pipe[0], pty_master}, {&run.out, &run.err});
  } else {
    Drain({out_pipe[0], err_pipe[0]}, {&run.out, &run.err});
  }
  int status = 0;
  waitpid(pid, &status, 0);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// The first line of `text` that starts with `prefix`, or "".
std::string LineStartingWith(const std::string& text, const std::string& prefix) {
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(prefix, 0) == 0) return line;
  }
  return "";
}

std::string Describe(const CliRun& r) {
  return "exit " + std::to_string(r.exit_code) + "\nstdout:\n" + r.out + "\nstderr:\n" + r.err;
}

// ------------------------------------------------------------ without a server

TEST(CliBinaryTest, HelpVersionAndCommandHelpExitZero) {
  const CliRun help = RunCli({"--help"});
  EXPECT_EQ(help.exit_code, 0);
  for (const char* command : {"generate", "submit", "watch", "cancel", "jobs", "models", "load"}) {
    EXPECT_NE(help.out.find(std::string("  ") + command), std::string::npos) << command;
  }
  const CliRun generate = RunCli({"help", "generate"});
  EXPECT_EQ(generate.exit_code, 0);
  EXPECT_NE(generate.out.find("--sparsity X"), std::string::npos) << generate.out;
  EXPECT_EQ(RunCli({"generate", "--help"}).out, generate.out);
  const CliRun version = RunCli({"--version"});
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_EQ(version.out.rfind("rainserve-cli 0.1.0 (", 0), 0u) << version.out;
}

TEST(CliBinaryTest, UsageErrorsExitTwoWithAMessageAndSendNothing) {
  // The target is unreachable: an error here comes from the command line, not the call.
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"generate", "--prompt", "x", "--sparsty", "0.95"}, "did you mean --sparsity?"},
      {{"generate", "--prompt", "x", "--width", "4294967312"},
       "--width expects an integer in [0, 4294967295], got '4294967312'"},
      {{"generate", "--prompt", "x", "--sparsity", "lots"}, "--sparsity expects a number"},
      {{"generate", "--prompt", "x", "--timeout", "0"}, "--timeout expects a number of seconds > 0"},
      {{"generate"}, "generate needs --prompt"},
      {{"jobs", "--all", "extra"}, "unexpected argument 'extra'"},
      {{"nonsense"}, "unknown command 'nonsense'"},
      {{"compare", "--prompt", "x", "--settings", "sparsity=0.8;spars=0.9"},
       "--settings: setting 2 'spars=0.9': unknown key 'spars'"},
      {{"compare", "--prompt", "x", "--settings", "sparsity=0.8,sink=x"},
       "--settings: setting 1 'sparsity=0.8,sink=x': sink expects an integer"},
      {{"compare", "--prompt", "x"}, "compare needs --settings"},
      {{"compare", "--prompt", "x", "--settings", "sparsity=0.8", "--sparsity", "0.5"},
       "--sparsity is not a flag of 'compare'"},
  };
  for (const auto& [args, message] : cases) {
    std::vector<std::string> argv = {"--target", "127.0.0.1:1"};
    argv.insert(argv.end(), args.begin(), args.end());
    const CliRun r = RunCli(argv);
    EXPECT_EQ(r.exit_code, 2) << Describe(r);
    EXPECT_NE(r.err.find(message), std::string::npos) << Describe(r);
  }
}

TEST(ServerBinaryTest, HelpExplainsEveryFlagAndVersionPrintsIt) {
  std::string out;
  EXPECT_EQ(testing::RunServerToExit("", "--help", &out), 0) << out;
  for (const char* flag : {"--config FILE", "--listen HOST:PORT", "--metrics-listen HOST:PORT",
                           "--port-file FILE", "--log-level LEVEL", "--help", "--version"}) {
    EXPECT_NE(out.find(std::string("  ") + flag), std::string::npos) << flag << "\n" << out;
  }
  EXPECT_NE(out.find("SIGTERM"), std::string::npos) << out;
  EXPECT_EQ(testing::RunServerToExit("", "--version", &out), 0) << out;
  EXPECT_EQ(out.rfind("rainserve-server 0.1.0 (", 0), 0u) << out;
  EXPECT_EQ(testing::RunServerToExit("", "--verison", &out), 2) << out;
  EXPECT_NE(out.find("bad argument '--verison'"), std::string::npos) << out;
}

// ------------------------------------------------------------ against wan-tiny

class CliServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new testing::ServerProcess(R"(
server:
  drain_timeout_seconds: 30
models:
  - name: wan-tiny
    path: )" + testing::SourceDir() + R"(/models/wan-tiny
    threads: 2
    defaults: {width: 64, height: 64, num_frames: 5, steps: 2}
)");
    ASSERT_TRUE(server_->Start()) << server_->error();
    for (int i = 0; i < 600; ++i) {
      const CliRun models = RunCli({"--target", server_->grpc_target(), "models"});
      if (models.out.find("READY") != std::string::npos) return;
      if (models.out.find("FAILED") != std::string::npos) break;
      usleep(100000);
    }
    FAIL() << "wan-tiny did not become READY:\n" << server_->Stderr();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  void SetUp() override { dir_ = testing::MakeTempDir("rainserve-cli"); }

  CliRun Cli(std::vector<std::string> args, bool tty = false) {
    args.insert(args.begin(), {"--target", server_->grpc_target()});
    return RunCli(args, tty);
  }

  static testing::ServerProcess* server_;
  std::string dir_;
};

testing::ServerProcess* CliServerTest::server_ = nullptr;

TEST_F(CliServerTest, ErrorsPrintTheGrpcCodeByName) {
  const CliRun watch = Cli({"watch", "no-such-job"});
  EXPECT_EQ(watch.exit_code, 1);
  EXPECT_NE(watch.err.find("NOT_FOUND: job 'no-such-job' not found"), std::string::npos)
      << Describe(watch);
  const CliRun bad = Cli({"generate", "--prompt", "x", "--width", "8"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("INVALID_ARGUMENT: width must be"), std::string::npos) << Describe(bad);
}

TEST_F(CliServerTest, OutIsAPathAndGetsTheExtensionOnlyWhenMissing) {
  const CliRun named = Cli({"generate", "--prompt", "a boat", "--out", dir_ + "/named.mp4"});
  ASSERT_EQ(named.exit_code, 0) << Describe(named);
  EXPECT_TRUE(Exists(dir_ + "/named.mp4"));
  EXPECT_FALSE(Exists(dir_ + "/named.mp4.mp4"));
  EXPECT_NE(named.out.find("wrote " + dir_ + "/named.mp4  (video/mp4"), std::string::npos)
      << named.out;

  const CliRun image = Cli({"generate", "--prompt", "a boat", "--frames", "1", "--out",
                            dir_ + "/still"});
  ASSERT_EQ(image.exit_code, 0) << Describe(image);
  EXPECT_TRUE(Exists(dir_ + "/still.png"));
}

TEST_F(CliServerTest, ProgressIsOneLinePerEventOnAPipe) {
  const CliRun r = Cli({"generate", "--prompt", "a boat", "--steps", "2", "--out", dir_ + "/p"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(r.err.find('\r'), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("\ndenoise 1/2  elapsed "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("\ndenoise 2/2  elapsed "), std::string::npos) << r.err;
}

TEST_F(CliServerTest, ProgressIsABarWithStepElapsedAndEtaOnATerminal) {
  const CliRun r = Cli({"generate", "--prompt", "a boat", "--steps", "2", "--out", dir_ + "/t"},
                       /*tty=*/true);
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_NE(r.err.find("\r\033[Kdenoise [###############...............] 1/2  elapsed "),
            std::string::npos) << r.err;
  EXPECT_NE(r.err.find(" eta "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("\r\033[Kdenoise [##############################] 2/2  elapsed "),
            std::string::npos) << r.err;
}

TEST_F(CliServerTest, SubmitThenWatchSaysWhereItWroteTheFile) {
  const CliRun submit = Cli({"submit", "--prompt", "waves", "--steps", "2"});
  ASSERT_EQ(submit.exit_code, 0) << Describe(submit);
  const std::string job = submit.out.substr(0, submit.out.find('\n'));
  const CliRun watch = Cli({"watch", job, "--out", dir_ + "/watched"});
  ASSERT_EQ(watch.exit_code, 0) << Describe(watch);
  EXPECT_NE(watch.out.find("wrote " + dir_ + "/watched.mp4"), std::string::npos) << watch.out;
  EXPECT_TRUE(Exists(dir_ + "/watched.mp4"));

  const CliRun all = Cli({"jobs", "--all"});
  ASSERT_EQ(all.exit_code, 0) << Describe(all);
  EXPECT_EQ(all.out.rfind("JOB_ID", 0), 0u) << all.out;
  EXPECT_NE(LineStartingWith(all.out, job + " ").find(" SUCCEEDED "), std::string::npos)
      << all.out;
  const CliRun queue = Cli({"jobs"});
  EXPECT_EQ(queue.out, "no queued or running jobs\n") << Describe(queue);
}

TEST_F(CliServerTest, SummaryExplainsARealizedSparsityOfZero) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--attention", "dense"}, "realized 0 (dense attention requested)"},
      {{"--sparsity", "0.5", "--dense-warmup-steps", "2"},
       "realized 0 (all 2 steps were dense warm-up steps: dense_warmup_steps 2)"},
      // 64x64x5 is 2 blocks of tokens, under the sparse minimum.
      {{"--sparsity", "0.5"}, "realized 0 (every step ran dense: the sequence is too short"},
  };
  for (const auto& [flags, summary] : cases) {
    std::vector<std::string> args = {"generate", "--prompt", "a boat", "--steps", "2",
                                     "--out", dir_ + "/s"};
    args.insert(args.end(), flags.begin(), flags.end());
    const CliRun r = Cli(args);
    ASSERT_EQ(r.exit_code, 0) << Describe(r);
    EXPECT_NE(r.out.find(summary), std::string::npos) << r.out;
  }
}

// compare.json of `dir`, parsed.
nlohmann::json ReadCompareJson(const std::string& dir) {
  std::string text;
  EXPECT_TRUE(ReadFile(dir + "/compare.json", &text).ok());
  return nlohmann::json::parse(text);
}

TEST_F(CliServerTest, CompareWritesOneRowPerSettingAndALabelledSideBySideVideo) {
  // 256x256x5 is 4 blocks of tokens: enough for sparse attention without a sink.
  const std::string settings = "sparsity=0.8,sink=0;sparsity=0.5,sink=0,warmup=1;mode=dense";
  const CliRun r = Cli({"compare", "--prompt", "a boat", "--seed", "7", "--steps", "2",
                        "--width", "256", "--height", "256", "--frames", "5", "--settings",
                        settings, "--out", dir_ + "/cmp"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(r.out.rfind("SETTING ", 0), 0u) << r.out;
  const nlohmann::json j = ReadCompareJson(dir_ + "/cmp");
  EXPECT_EQ(j["seed"], 7);
  EXPECT_EQ(j["grid"], "compare.mp4");
  const nlohmann::json& rows = j["rows"];
  ASSERT_EQ(rows.size(), 4u) << j.dump();
  const std::vector<std::string> labels = {"dense", "sparsity=0.8,sink=0",
                                           "sparsity=0.5,sink=0,warmup=1", "mode=dense"};
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i]["setting"], labels[i]);
    EXPECT_GT(rows[i]["total_seconds"].get<double>(), 0);
    EXPECT_GT(rows[i]["denoise_seconds"].get<double>(), 0);
  }
  // Dense against itself, and the second dense run (same seed) reproduces it.
  for (const size_t i : {0u, 3u}) {
    EXPECT_EQ(rows[i]["psnr_db"], "inf") << rows[i];
    EXPECT_EQ(rows[i]["ssim"].get<double>(), 1.0) << rows[i];
    EXPECT_EQ(rows[i]["realized_sparsity"].get<double>(), 0.0) << rows[i];
  }
  // The sparse runs skip blocks and change the pixels.
  for (const size_t i : {1u, 2u}) {
    ASSERT_TRUE(rows[i]["psnr_db"].is_number()) << rows[i];
    EXPECT_GT(rows[i]["psnr_db"].get<double>(), 0) << rows[i];
    EXPECT_LT(rows[i]["ssim"].get<double>(), 1.0) << rows[i];
    EXPECT_GT(rows[i]["ssim"].get<double>(), -1.0) << rows[i];
    EXPECT_GT(rows[i]["realized_sparsity"].get<double>(), 0) << rows[i];
  }
  EXPECT_NEAR(rows[1]["requested_sparsity"].get<double>(), 0.8, 1e-12);

  std::string mp4;
  ASSERT_TRUE(ReadFile(dir_ + "/cmp/compare.mp4", &mp4).ok());
  const auto video = media::testing::DecodeMp4(mp4);
  ASSERT_TRUE(video.ok()) << video.status().ToString();
  EXPECT_EQ(video->width, 4 * 256);
  EXPECT_EQ(video->height, 256 + cli::LabelStripHeight(labels, 256));
  EXPECT_EQ(video->rgb_frames.size(), 5u);
}

TEST_F(CliServerTest, CompareOfOneFrameWritesAPngGrid) {
  const CliRun r = Cli({"compare", "--prompt", "a boat", "--steps", "2", "--frames", "1",
                        "--settings", "sparsity=0.9", "--out", dir_ + "/still"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  const nlohmann::json j = ReadCompareJson(dir_ + "/still");
  ASSERT_EQ(j["rows"].size(), 2u);
  EXPECT_EQ(j["grid"], "compare.png");
  EXPECT_EQ(j["rows"][0]["psnr_db"], "inf");
  std::string png;
  ASSERT_TRUE(ReadFile(dir_ + "/still/compare.png", &png).ok());
  const auto image = media::DecodeImage(png, {});
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  EXPECT_EQ(image->width, 2 * 64);
  EXPECT_EQ(image->height, 64 + cli::LabelStripHeight({"dense", "sparsity=0.9"}, 64));
}

// ------------------------------------------------------------ ListJobs pages

// Five jobs, two per page; remembers the page tokens it was sent.
class PagingGeneration final : public v1::Generation::Service {
 public:
  grpc::Status ListJobs(grpc::ServerContext*, const v1::ListJobsRequest* req,
                        v1::ListJobsResponse* resp) override {
    std::lock_guard<std::mutex> lock(mu_);
    tokens_.push_back(req->page_token());
    const size_t start = req->page_token().empty() ? 0 : std::stoul(req->page_token());
    for (size_t i = start; i < std::min<size_t>(start + 2, 5); ++i) {
      v1::Job* job = resp->add_jobs();
      job->set_job_id("job-" + std::to_string(i));
      job->set_state(v1::JOB_STATE_SUCCEEDED);
      job->mutable_request()->set_prompt("prompt " + std::to_string(i));
    }
    if (start + 2 < 5) resp->set_next_page_token(std::to_string(start + 2));
    return grpc::Status::OK;
  }
  std::vector<std::string> tokens() {
    std::lock_guard<std::mutex> lock(mu_);
    return tokens_;
  }

 private:
  std::mutex mu_;
  std::vector<std::string> tokens_;
};

TEST(CliPagingTest, JobsAllFollowsNextPageTokenToTheLastPage) {
  PagingGeneration service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(port, 0);
  const CliRun r = RunCli({"--target", "127.0.0.1:" + std::to_string(port), "jobs", "--all"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  for (int i = 0; i < 5; ++i) {
    const std::string line = LineStartingWith(r.out, "job-" + std::to_string(i) + " ");
    EXPECT_NE(line.find(" SUCCEEDED "), std::string::npos) << r.out;
    EXPECT_NE(line.find("\"prompt " + std::to_string(i) + "\""), std::string::npos) << r.out;
  }
  EXPECT_EQ(service.tokens(), (std::vector<std::string>{"", "2", "4"}));
  server->Shutdown();
}

}  // namespace
}  // namespace rainserve
