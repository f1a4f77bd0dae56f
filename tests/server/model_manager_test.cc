// ModelManager: background loading, failures, and taking a model out of
// service after a device fault.
#include "server/model_manager.h"

#include <gtest/gtest.h>

#include <atomic>

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

}  // namespace
}  // namespace rainserve
