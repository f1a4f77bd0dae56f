#include "server/config.h"
#include "tests/test_files.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

namespace rainserve {
namespace {

// Parses `yaml` and expects INVALID_ARGUMENT whose message starts with `prefix`.
void ExpectRejected(const std::string& yaml, const std::string& prefix) {
  auto cfg = ParseServerConfig(yaml, "test.yaml", "/base");
  ASSERT_FALSE(cfg.ok()) << "accepted:\n" << yaml;
  EXPECT_EQ(cfg.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(cfg.status().message().rfind(prefix, 0), 0u)
      << "message: " << cfg.status().message() << "\nexpected prefix: " << prefix;
}

TEST(ConfigTest, ShippedServerYamlLoads) {
  auto cfg = LoadServerConfig(testing::SourceDir() + "/configs/server.yaml");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_EQ(cfg->server.listen_address, "127.0.0.1:50051");
  EXPECT_EQ(cfg->server.metrics_address, "127.0.0.1:9464");
  EXPECT_EQ(cfg->server.queue.max_pending, 64);
  EXPECT_EQ(cfg->server.max_concurrent_streams, 100);
  // Prompts are encoded at the reference pipeline's length (WanPipeline's
  // max_sequence_length): a shorter one gives a different video.
  ASSERT_FALSE(cfg->models.empty());
  for (const ModelEntry& m : cfg->models) {
    ASSERT_TRUE(m.limits.max_prompt_tokens.has_value()) << m.name;
    EXPECT_EQ(*m.limits.max_prompt_tokens, 512) << m.name;
  }
}

TEST(ConfigTest, MultiGpuOverlayYamlLoads) {
  auto cfg = LoadServerConfig(testing::SourceDir() + "/deploy/k8s/overlays/gpu-multi/server.yaml");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  int multi = 0;
  for (const ModelEntry& m : cfg->models) {
    if (m.DeviceCount() > 1) {
      ++multi;
      EXPECT_EQ(m.DeviceCount(), 8) << m.name;
      EXPECT_EQ(m.device, "cuda:0") << m.name;
    }
  }
  EXPECT_EQ(multi, 1);
}

TEST(ConfigTest, EmptyDocumentGivesDefaults) {
  auto cfg = ParseServerConfig("", "empty.yaml", "");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_EQ(cfg->server.queue.max_pending, 64);
  EXPECT_DOUBLE_EQ(cfg->server.queue.timeout_seconds, 600);
  EXPECT_EQ(cfg->server.max_concurrent_streams, 100);
  EXPECT_TRUE(cfg->models.empty());
}

TEST(ConfigTest, ValuesAndModelsAreRead) {
  auto cfg = ParseServerConfig(R"(
server:
  listen_address: "0.0.0.0:7000"
  log_level: debug
  max_concurrent_streams: 8
  queue: {max_pending: 3, timeout_seconds: 2.5}
models:
  - name: wan-tiny
    path: models/wan-tiny
    threads: 2
  - name: wan-1.3b
    path: /srv/wan
    device: "cuda:1"
    dtype: bf16
    load_at_startup: false
)", "t.yaml", "/etc/rainserve");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_EQ(cfg->server.listen_address, "0.0.0.0:7000");
  EXPECT_EQ(cfg->server.log_level, "debug");
  EXPECT_EQ(cfg->server.max_concurrent_streams, 8);
  EXPECT_EQ(cfg->server.queue.max_pending, 3);
  EXPECT_DOUBLE_EQ(cfg->server.queue.timeout_seconds, 2.5);
  ASSERT_EQ(cfg->models.size(), 2u);
  EXPECT_EQ(cfg->models[0].path, "/etc/rainserve/models/wan-tiny");  // relative -> config dir
  EXPECT_EQ(cfg->models[0].threads, 2);
  EXPECT_EQ(cfg->models[1].path, "/srv/wan");
  EXPECT_EQ(cfg->models[1].device, "cuda:1");
  EXPECT_EQ(cfg->models[1].dtype, "bf16");
  EXPECT_FALSE(cfg->models[1].load_at_startup);
}

TEST(ConfigTest, UnknownKeysAreRejectedWithTheirPath) {
  ExpectRejected("servr: {}\n", "servr: unknown key");
  ExpectRejected("server: {listen_adress: 'a:1'}\n", "server.listen_adress: unknown key");
  ExpectRejected("server: {queue: {max_pendng: 1}}\n", "server.queue.max_pendng: unknown key");
  ExpectRejected("models: [{name: a, path: p, gpu: 1}]\n", "models[0].gpu: unknown key");
}

TEST(ConfigTest, WrongTypesAreRejectedWithTheirPath) {
  ExpectRejected("server: {queue: {max_pending: many}}\n",
                 "server.queue.max_pending: expected integer >= 1, got 'many'");
  ExpectRejected("server: {queue: {max_pending: 2.5}}\n",
                 "server.queue.max_pending: expected integer >= 1");
  ExpectRejected("server: {queue: [1, 2]}\n", "server.queue: expected a mapping, got a list");
  ExpectRejected("server: {drain_timeout_seconds: soon}\n",
                 "server.drain_timeout_seconds: expected number in [0, 86400]");
  ExpectRejected("models: {name: a}\n", "models: expected a list");
  ExpectRejected("models: [{name: a, path: p, load_at_startup: maybe}]\n",
                 "models[0].load_at_startup: expected true or false");
  ExpectRejected("server: {log_level: loud}\n",
                 "server.log_level: expected one of debug, info, warning, error, got 'loud'");
}

TEST(ConfigTest, OutOfRangeValuesAreRejectedWithTheirPath) {
  ExpectRejected("server: {queue: {max_pending: 0}}\n",
                 "server.queue.max_pending: expected integer >= 1, got '0'");
  ExpectRejected("server: {queue: {timeout_seconds: -1}}\n", "server.queue.timeout_seconds:");
  ExpectRejected("server: {drain_timeout_seconds: 1e9}\n", "server.drain_timeout_seconds:");
  ExpectRejected("server: {max_concurrent_streams: 0}\n",
                 "server.max_concurrent_streams: expected integer in [1, 1000000], got '0'");
  ExpectRejected("server: {listen_address: 'localhost:70000'}\n",
                 "server.listen_address: expected \"host:port\"");
  ExpectRejected("server: {metrics_address: 'nohost'}\n", "server.metrics_address:");
  ExpectRejected("models: [{name: a, path: p, threads: -1}]\n",
                 "models[0].threads: expected integer in [0, 1024]");
}

TEST(ConfigTest, DevicesListSetsTheModelsGpus) {
  auto cfg = ParseServerConfig(
      "models: [{name: a, path: p, devices: [cuda:0, 'cuda:3']},\n"
      "         {name: b, path: p, device: 'cuda:2', devices: ['cuda:2', 'cuda:1']},\n"
      "         {name: c, path: p, device: 'cuda:1'}]\n",
      "t.yaml", "");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_EQ(cfg->models[0].devices, (std::vector<std::string>{"cuda:0", "cuda:3"}));
  EXPECT_EQ(cfg->models[0].device, "cuda:0");  // devices[0]
  EXPECT_EQ(cfg->models[0].DeviceCount(), 2);
  EXPECT_EQ(cfg->models[1].device, "cuda:2");
  EXPECT_EQ(cfg->models[1].DeviceCount(), 2);
  EXPECT_TRUE(cfg->models[2].devices.empty());  // one device: unchanged
  EXPECT_EQ(cfg->models[2].DeviceCount(), 1);
}

TEST(ConfigTest, DevicesListIsValidated) {
  ExpectRejected("models: [{name: a, path: p, devices: []}]\n",
                 "models[0].devices: expected 1 to 16 devices, got 0");
  ExpectRejected("models: [{name: a, path: p, devices: [cuda:0, cpu]}]\n",
                 "models[0].devices[1]: expected \"cuda:N\" (several devices are GPUs), got 'cpu'");
  ExpectRejected("models: [{name: a, path: p, devices: [cuda:0, gpu1]}]\n",
                 "models[0].devices[1]: expected \"cpu\" or \"cuda:N\", got 'gpu1'");
  ExpectRejected("models: [{name: a, path: p, devices: [cuda:0, cuda:1, cuda:0]}]\n",
                 "models[0].devices[2]: 'cuda:0' is listed twice");
  ExpectRejected("models: [{name: a, path: p, device: 'cuda:1', devices: [cuda:0, cuda:1]}]\n",
                 "models[0].device: must be devices[0] ('cuda:0') when both are given");
  ExpectRejected("models: [{name: a, path: p, devices: cuda:0}]\n", "models[0].devices:");
  std::string many = "models: [{name: a, path: p, devices: [";
  for (int i = 0; i < 17; ++i) many += (i ? ", cuda:" : "cuda:") + std::to_string(i);
  ExpectRejected(many + "]}]\n", "models[0].devices: expected 1 to 16 devices, got 17");
}

TEST(ConfigTest, ModelEntriesAreValidated) {
  ExpectRejected("models: [{path: p}]\n", "models[0].name: required");
  ExpectRejected("models: [{name: a}]\n", "models[0].path: required");
  ExpectRejected("models: [{name: 'a b', path: p}]\n", "models[0].name: expected letters");
  ExpectRejected("models: [{name: a, path: p, device: gpu0}]\n",
                 "models[0].device: expected \"cpu\" or \"cuda:N\"");
  ExpectRejected("models: [{name: a, path: p, dtype: int8}]\n", "models[0].dtype: expected one of");
  ExpectRejected("models: [{name: a, path: p, pipeline: sd3}]\n",
                 "models[0].pipeline: expected one of wan");
  ExpectRejected("models: [{name: a, path: p}, {name: a, path: q}]\n",
                 "models[1].name: duplicate model name 'a'");
}

TEST(ConfigTest, RetentionMaxBytesHasADefaultIsReadAndIsValidated) {
  auto defaults = ParseServerConfig("", "empty.yaml", "");
  ASSERT_TRUE(defaults.ok()) << defaults.status().ToString();
  EXPECT_EQ(defaults->server.retention.max_bytes, int64_t{1} << 30);
  auto cfg = ParseServerConfig("server: {retention: {max_bytes: 5000000}}\n", "t.yaml", "");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_EQ(cfg->server.retention.max_bytes, 5000000);
  ExpectRejected("server: {retention: {max_bytes: -1}}\n", "server.retention.max_bytes: expected");
  ExpectRejected("server: {retention: {max_bytes: lots}}\n",
                 "server.retention.max_bytes: expected");
  ExpectRejected("server: {retention: {max_jobs: 1}}\n",
                 "server.retention.max_jobs: unknown key");
}

TEST(ConfigTest, ModelNamesAreAtMost128Bytes) {
  const std::string ok = "models: [{name: " + std::string(128, 'a') + ", path: p}]\n";
  EXPECT_TRUE(ParseServerConfig(ok, "t.yaml", "").ok());
  ExpectRejected("models: [{name: " + std::string(129, 'a') + ", path: p}]\n",
                 "models[0].name: expected 1 to 128 bytes, got 129");
}

TEST(ConfigTest, SyntaxErrorsNameFileAndLine) {
  ExpectRejected("server:\n  queue: {max_pending: 1\n", "test.yaml:");
  ExpectRejected("- just\n- a list\n", "(top level): expected a mapping");
}

TEST(ConfigTest, MissingFileIsNotFound) {
  auto cfg = LoadServerConfig("/nonexistent/rainserve.yaml");
  ASSERT_FALSE(cfg.ok());
  EXPECT_EQ(cfg.status().code(), StatusCode::kNotFound);
  EXPECT_NE(cfg.status().message().find("/nonexistent/rainserve.yaml"), std::string::npos);
}

TEST(ConfigTest, ModelDefaultsAndLimitsOverridesAreRead) {
  auto cfg = ParseServerConfig(R"(
models:
  - name: m
    path: ckpt
    defaults:
      width: 256
      steps: 8
      guidance_scale: 4.5
      scheduler: euler
      sparse_attention: {mode: dense, sparsity: 0.75, sink_frames: 0, window: [2, 4, 4],
                         mask_refresh: per_step, dense_warmup_steps: 2}
      step_cache: {mode: first_block, threshold: 0.08, warmup_steps: 3}
    limits: {max_width: 512, max_frames: 33, max_prompt_tokens: 64}
)", "test.yaml", "/base");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  const ModelEntry& e = cfg->models.at(0);
  EXPECT_EQ(e.defaults.width, 256);
  EXPECT_FALSE(e.defaults.height.has_value());
  EXPECT_EQ(e.defaults.steps, 8);
  EXPECT_EQ(e.defaults.guidance_scale, 4.5);
  EXPECT_EQ(e.defaults.scheduler, "euler");
  EXPECT_EQ(e.defaults.attention_mode, attention::AttentionMode::kDense);
  EXPECT_EQ(e.defaults.sparsity, 0.75);
  EXPECT_EQ(e.defaults.sink_frames, 0);
  EXPECT_EQ(e.defaults.window, (std::vector<int64_t>{2, 4, 4}));
  EXPECT_EQ(e.defaults.mask_refresh, attention::MaskRefresh::kPerStep);
  EXPECT_EQ(e.defaults.dense_warmup_steps, 2);
  EXPECT_EQ(e.defaults.step_cache_mode, StepCacheMode::kFirstBlock);
  EXPECT_EQ(e.defaults.step_cache_threshold, 0.08);
  EXPECT_EQ(e.defaults.step_cache_warmup_steps, 3);
  EXPECT_EQ(e.limits.max_width, 512);
  EXPECT_EQ(e.limits.max_frames, 33);
  EXPECT_EQ(e.limits.max_prompt_tokens, 64);
  EXPECT_FALSE(e.limits.max_steps.has_value());

  ExpectRejected("models: [{name: m, path: p, defaults: {sparse_attention: {sparsity: 1.0}}}]",
                 "models[0].defaults.sparse_attention.sparsity");
  ExpectRejected("models: [{name: m, path: p, defaults: {sparse_attention: {kept_mass: 1.5}}}]",
                 "models[0].defaults.sparse_attention.kept_mass");
  auto mass = ParseServerConfig(
      "models: [{name: m, path: p, defaults: {sparse_attention: "
      "{mode: rainfusion_mass, kept_mass: 0.8}}}]",
      "test.yaml", "/base");
  ASSERT_TRUE(mass.ok()) << mass.status().ToString();
  EXPECT_EQ(mass->models.at(0).defaults.attention_mode, attention::AttentionMode::kRainFusionMass);
  EXPECT_EQ(mass->models.at(0).defaults.kept_mass, 0.8);
  ExpectRejected("models: [{name: m, path: p, defaults: {sparse_attention: {window: [1, 2]}}}]",
                 "models[0].defaults.sparse_attention.window");
  ExpectRejected("models: [{name: m, path: p, defaults: {step_cache: {mode: magcache}}}]",
                 "models[0].defaults.step_cache.mode");
  ExpectRejected("models: [{name: m, path: p, defaults: {step_cache: {threshold: 11}}}]",
                 "models[0].defaults.step_cache.threshold");
  ExpectRejected("models: [{name: m, path: p, defaults: {scheduler: ddim}}]",
                 "models[0].defaults.scheduler");
  ExpectRejected("models: [{name: m, path: p, limits: {max_height: 8}}]",
                 "models[0].limits.max_height");
}

TEST(ConfigTest, QualityProbeDefaultAndCapAreReadAndBounded) {
  auto cfg = ParseServerConfig(R"(
models:
  - name: m
    path: ckpt
    defaults: {sparse_attention: {quality_probe: {rate: 0.1}}}
    limits: {max_quality_probe_rate: 0.25}
  - name: plain
    path: ckpt
)", "test.yaml", "/base");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_EQ(cfg->models.at(0).defaults.quality_probe_rate, 0.1);
  EXPECT_EQ(cfg->models.at(0).limits.max_quality_probe_rate, 0.25);
  EXPECT_FALSE(cfg->models.at(1).defaults.quality_probe_rate.has_value());
  EXPECT_FALSE(cfg->models.at(1).limits.max_quality_probe_rate.has_value());
  ExpectRejected(
      "models: [{name: m, path: p, defaults: {sparse_attention: {quality_probe: {rate: 1.5}}}}]",
      "models[0].defaults.sparse_attention.quality_probe.rate");
  ExpectRejected("models: [{name: m, path: p, limits: {max_quality_probe_rate: -1}}]",
                 "models[0].limits.max_quality_probe_rate");
}

TEST(ConfigTest, ExplicitTimestepsDefaultsAreReadAndValidated) {
  auto cfg = ParseServerConfig(R"(
models:
  - name: lightning
    path: ckpt
    defaults: {timesteps: [1000, 750, 500, 250], guidance_scale: 1, flow_shift: 5,
               scheduler: euler}
  - name: plain
    path: ckpt
)", "test.yaml", "/base");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  ASSERT_TRUE(cfg->models.at(0).defaults.timesteps.has_value());
  EXPECT_EQ(*cfg->models.at(0).defaults.timesteps, (std::vector<double>{1000, 750, 500, 250}));
  EXPECT_EQ(cfg->models.at(0).defaults.guidance_scale, 1.0);
  EXPECT_FALSE(cfg->models.at(1).defaults.timesteps.has_value());

  ExpectRejected("models: [{name: m, path: p, defaults: {timesteps: [1000, -1]}}]",
                 "models[0].defaults.timesteps[1]");
  ExpectRejected("models: [{name: m, path: p, defaults: {timesteps: [1000, x]}}]",
                 "models[0].defaults.timesteps[1]");
  ExpectRejected("models: [{name: m, path: p, defaults: {timesteps: []}}]",
                 "models[0].defaults.timesteps");
  ExpectRejected("models: [{name: m, path: p, defaults: {timesteps: 1000}}]",
                 "models[0].defaults.timesteps");
  ExpectRejected("models: [{name: m, path: p, defaults: {steps: 8, timesteps: [1000, 500]}}]",
                 "models[0].defaults.steps");
}

TEST(ConfigTest, DenseAttentionKernelIsReadAndChecked) {
  auto cfg = ParseServerConfig(
      "models: [{name: a, path: p, dense_attention: sdpa}, {name: b, path: p}]", "test.yaml",
      "/base");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_EQ(cfg->models.at(0).dense_attention, "sdpa");
  EXPECT_EQ(cfg->models.at(1).dense_attention, "auto");
  ExpectRejected("models: [{name: m, path: p, dense_attention: flash}]",
                 "models[0].dense_attention");
}

TEST(ConfigTest, ImageAndExpertKeysAreReadAndBounded) {
  auto cfg = ParseServerConfig(R"(
models:
  - name: a14b
    path: ckpt
    offload_idle_expert: true
    defaults: {guidance_scale: 4, guidance_scale_2: 3}
    limits: {max_image_bytes: 8388608, max_image_pixels: 1000000}
  - name: plain
    path: ckpt
)", "test.yaml", "/base");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  const ModelEntry& e = cfg->models.at(0);
  EXPECT_TRUE(e.offload_idle_expert);
  EXPECT_EQ(e.defaults.guidance_scale_2, 3.0);
  EXPECT_EQ(e.limits.max_image_bytes, 8388608);
  EXPECT_EQ(e.limits.max_image_pixels, 1000000);
  const ModelEntry& plain = cfg->models.at(1);
  EXPECT_FALSE(plain.offload_idle_expert);
  EXPECT_FALSE(plain.defaults.guidance_scale_2.has_value());
  EXPECT_FALSE(plain.limits.max_image_bytes.has_value());

  ExpectRejected("models: [{name: m, path: p, defaults: {guidance_scale_2: -1}}]",
                 "models[0].defaults.guidance_scale_2");
  ExpectRejected("models: [{name: m, path: p, limits: {max_image_bytes: 10}}]",
                 "models[0].limits.max_image_bytes: expected integer in [1024, 1073741824]");
  ExpectRejected("models: [{name: m, path: p, limits: {max_image_pixels: 0}}]",
                 "models[0].limits.max_image_pixels");
  ExpectRejected("models: [{name: m, path: p, offload_idle_expert: sometimes}]",
                 "models[0].offload_idle_expert");
}

TEST(ConfigTest, LinearPrecisionIsReadAndUnknownValuesNameTheKey) {
  auto cfg = ParseServerConfig(R"(
models:
  - {name: fast, path: ckpt, device: "cuda:0", dtype: bf16, linear_precision: fp8}
  - {name: plain, path: ckpt}
)", "test.yaml", "/base");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_EQ(cfg->models.at(0).linear_precision, "fp8");
  EXPECT_EQ(cfg->models.at(1).linear_precision, "bf16");
  ExpectRejected("models: [{name: m, path: p, linear_precision: int8}]",
                 "models[0].linear_precision");
  ExpectRejected("models: [{name: m, path: p, linear_precision: FP8}]",
                 "models[0].linear_precision");
}

TEST(ConfigTest, ReceiveLimitAdmitsEveryModelsLargestImageRequest) {
  // No models: server.max_message_bytes as configured.
  auto none = ParseServerConfig("server: {max_message_bytes: 2048}\n", "test.yaml", "");
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(ReceiveMessageBytes(*none), 2048);
  // A model with the pipeline's default image limit (16 MiB) raises it.
  auto dflt = ParseServerConfig("models: [{name: m, path: p}]\n", "test.yaml", "");
  ASSERT_TRUE(dflt.ok());
  EXPECT_EQ(ReceiveMessageBytes(*dflt), (16 << 20) + kRequestBytesBesideImage);
  // The largest model limit wins; a larger max_message_bytes stays.
  auto two = ParseServerConfig(R"(
models:
  - {name: a, path: p, limits: {max_image_bytes: 1048576}}
  - {name: b, path: p, limits: {max_image_bytes: 33554432}}
)", "test.yaml", "");
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(ReceiveMessageBytes(*two), (32 << 20) + kRequestBytesBesideImage);
  auto big = ParseServerConfig(
      "server: {max_message_bytes: 104857600}\nmodels: [{name: m, path: p}]\n", "test.yaml", "");
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(ReceiveMessageBytes(*big), 100 << 20);
}

TEST(ConfigTest, LorasAreReadWithPathsResolvedAndStrengthsDefaultingToOne) {
  auto cfg = ParseServerConfig(R"(
models:
  - name: m
    path: ckpt
    loras:
      - {path: loras/style.safetensors, strength: 0.75}
      - {path: /abs/speed.safetensors}
  - name: plain
    path: ckpt
)", "test.yaml", "/base");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  ASSERT_EQ(cfg->models[0].loras.size(), 2u);
  EXPECT_EQ(cfg->models[0].loras[0].path, "/base/loras/style.safetensors");
  EXPECT_DOUBLE_EQ(cfg->models[0].loras[0].strength, 0.75);
  EXPECT_EQ(cfg->models[0].loras[1].path, "/abs/speed.safetensors");
  EXPECT_DOUBLE_EQ(cfg->models[0].loras[1].strength, 1.0);
  EXPECT_TRUE(cfg->models[1].loras.empty());
}

TEST(ConfigTest, LorasAreValidated) {
  ExpectRejected("models: [{name: m, path: p, loras: [{strength: 1}]}]",
                 "models[0].loras[0].path: required");
  ExpectRejected("models: [{name: m, path: p, loras: [{path: a, strength: 101}]}]",
                 "models[0].loras[0].strength: expected number in [-100, 100]");
  ExpectRejected("models: [{name: m, path: p, loras: [{path: a, strength: .nan}]}]",
                 "models[0].loras[0].strength");
  ExpectRejected("models: [{name: m, path: p, loras: [{path: a, scale: 1}]}]",
                 "models[0].loras[0].scale: unknown key");
  ExpectRejected("models: [{name: m, path: p, loras: {path: a}}]", "models[0].loras");
  std::string many = "models: [{name: m, path: p, loras: [";
  for (int i = 0; i < 17; ++i) many += std::string(i ? ", " : "") + "{path: a}";
  ExpectRejected(many + "]}]", "models[0].loras: at most 16 files");
}

TEST(ConfigTest, SecuritySectionResolvesPathsAndChecksPairs) {
  auto cfg = ParseServerConfig(R"(
security:
  tls: {cert_file: tls/server.crt, key_file: /abs/server.key, client_ca_file: tls/ca.crt}
  auth: {tokens_file: tokens.txt, admin_tokens_file: admin.txt}
  model_management: false
)", "test.yaml", "/base");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_EQ(cfg->security.tls_cert_file, "/base/tls/server.crt");
  EXPECT_EQ(cfg->security.tls_key_file, "/abs/server.key");
  EXPECT_EQ(cfg->security.tls_client_ca_file, "/base/tls/ca.crt");
  EXPECT_EQ(cfg->security.tokens_file, "/base/tokens.txt");
  EXPECT_EQ(cfg->security.admin_tokens_file, "/base/admin.txt");
  EXPECT_FALSE(cfg->security.model_management);

  auto plain = ParseServerConfig("", "empty.yaml", "");
  ASSERT_TRUE(plain.ok());
  EXPECT_TRUE(plain->security.tls_cert_file.empty());
  EXPECT_TRUE(plain->security.tokens_file.empty());
  EXPECT_TRUE(plain->security.model_management);

  ExpectRejected("security: {tls: {cert_file: a.crt}}", "security.tls.cert_file");
  ExpectRejected("security: {tls: {client_ca_file: ca.crt}}", "security.tls.client_ca_file");
  ExpectRejected("security: {auth: {token: x}}", "security.auth");
}

}  // namespace
}  // namespace rainserve
