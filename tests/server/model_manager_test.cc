// ModelManager: background loading, failures, and taking a model out of
// service after a device fault.
#include "server/model_manager.h"

#include <gtest/gtest.h>

#include <atomic>

#include "server/services.h"
#include "tests/server/fake_pipeline.h"

namespace rainserve {
namespace {

ModelEntry Entry(const std::string& name) {
  ModelEntry e;
  e.name = name;
  e.path = "unused";
  return e;
}

TEST(ModelManagerTest, DeviceFaultTakesTheModelOutOfServiceUntilUnloadedAndLoaded) {
  std::atomic<int> ready_calls{0}, unload_calls{0}, changes{0};
  ModelManager::Hooks hooks;
  hooks.on_ready = [&](const std::string&, std::shared_ptr<Pipeline>) { ++ready_calls; };
  hooks.on_unload = [&](const std::string&) { ++unload_calls; };
  hooks.on_change = [&] { ++changes; };
  ModelManager models(
      {Entry("fake")},
      [](const ModelOptions&) -> StatusOr<std::unique_ptr<Pipeline>> {
        return std::unique_ptr<Pipeline>(new testing::FakePipeline());
      },
      hooks);
  models.LoadAtStartup();
  models.WaitIdle();
  ASSERT_TRUE(models.Ready("fake").ok());
  EXPECT_EQ(ready_calls, 1);

  models.MarkFailed("fake", "UNAVAILABLE: device cuda:0 has a sticky CUDA error");
  auto view = models.Get("fake");
  ASSERT_TRUE(view.ok());
  EXPECT_EQ(view->state, ModelState::kFailed);
  EXPECT_NE(view->reason.find("sticky"), std::string::npos);
  EXPECT_EQ(models.Ready("fake").status().code(), StatusCode::kUnavailable);
  EXPECT_FALSE(models.AnyReady());
  // Loading again first needs the faulted pipeline gone.
  EXPECT_EQ(models.Load("fake", nullptr).code(), StatusCode::kFailedPrecondition);
  auto unloaded = models.Unload("fake");
  ASSERT_TRUE(unloaded.ok()) << unloaded.status().ToString();
  EXPECT_EQ(unloaded->state, ModelState::kNotLoaded);
  EXPECT_EQ(unload_calls, 1);
  ASSERT_TRUE(models.Load("fake", nullptr).ok());
  models.WaitIdle();
  EXPECT_TRUE(models.Ready("fake").ok());
  EXPECT_EQ(ready_calls, 2);
  EXPECT_GE(changes, 4);
  // Unknown names are NOT_FOUND; marking one is a no-op.
  models.MarkFailed("nope", "x");
  EXPECT_EQ(models.Ready("nope").status().code(), StatusCode::kNotFound);
}

TEST(ModelManagerTest, DescribeListsSeveralDevicesAndTheLoadError) {
  ModelEntry multi = Entry("multi");
  multi.devices = {"cuda:0", "cuda:1"};
  multi.device = "cuda:0";
  ModelManager models(
      {multi, Entry("single")},
      [](const ModelOptions& o) -> StatusOr<std::unique_ptr<Pipeline>> {
        if (o.DeviceCount() > 1) {
          return FailedPreconditionError("devices: 'cuda:1' is not available");
        }
        return std::unique_ptr<Pipeline>(new testing::FakePipeline());
      },
      {});
  models.LoadAtStartup();
  models.WaitIdle();
  auto view = models.Get("multi");
  ASSERT_TRUE(view.ok());
  v1::ModelInfo info;
  FillModelView(*view, &info);
  EXPECT_EQ(info.device(), "cuda:0");
  ASSERT_EQ(info.devices_size(), 2);
  EXPECT_EQ(info.devices(1), "cuda:1");
  EXPECT_EQ(info.state(), v1::MODEL_STATE_FAILED);
  EXPECT_NE(info.state_reason().find("devices: 'cuda:1'"), std::string::npos)
      << info.state_reason();
  // One device: the list stays empty.
  auto single = models.Get("single");
  ASSERT_TRUE(single.ok());
  v1::ModelInfo one;
  FillModelView(*single, &one);
  EXPECT_EQ(one.devices_size(), 0);
}

}  // namespace
}  // namespace rainserve
