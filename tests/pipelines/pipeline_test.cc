// pipelines/core/pipeline: the image sizing rule of the reference pipelines
// (SizeForImage), the task a request asks for (RequestTask), and the model
// overrides of the image and expert fields.
//   build/tests/pipelines/pipeline_test
#include "pipelines/core/pipeline.h"

#include <gtest/gtest.h>

namespace rainserve {
namespace {

void ExpectSize(int64_t image_width, int64_t image_height, int64_t max_area, int64_t multiple,
                int64_t width, int64_t height) {
  const ImageSize size = SizeForImage(image_width, image_height, max_area, multiple);
  EXPECT_EQ(size.width, width) << image_width << "x" << image_height << " at " << max_area;
  EXPECT_EQ(size.height, height) << image_width << "x" << image_height << " at " << max_area;
}

TEST(SizeForImageTest, TheReferenceSizeOfItsOwnAspectIsKept) {
  // Wan2.1-I2V-480P: max_area 480 * 832 = 399360, 16 = VAE 8 x patch 2.
  ExpectSize(832, 480, 399360, 16, 832, 480);
  ExpectSize(480, 832, 399360, 16, 480, 832);   // portrait
  ExpectSize(1664, 960, 399360, 16, 832, 480);  // same aspect, any size
}

TEST(SizeForImageTest, SidesAreRoundedThenFlooredToTheMultiple) {
  // Square at 409216: sqrt = 639.70, rounds to 640 (a multiple): 640, where
  // flooring the square root first would give 624.
  ExpectSize(512, 512, 409216, 16, 640, 640);
  // Square at 399360: sqrt = 631.95 -> 632 -> floor to 16: 624.
  ExpectSize(1000, 1000, 399360, 16, 624, 624);
  // 4:3 photo at 720p area (921600): height sqrt(691200) = 831.38 -> 831 -> 816,
  // width sqrt(1228800) = 1108.51 -> 1109 -> 1104.
  ExpectSize(4000, 3000, 921600, 16, 1104, 816);
}

TEST(SizeForImageTest, HalvesRoundToEvenAsPythonDoes) {
  // 4x1 (aspect 1/4) at max_area 25: height sqrt(6.25) = 2.5 -> 2 (half-up
  // would give 3), width sqrt(100) = 10.
  ExpectSize(4, 1, 25, 1, 10, 2);
  // At 49: height sqrt(12.25) = 3.5 -> 4, width sqrt(196) = 14.
  ExpectSize(4, 1, 49, 1, 14, 4);
}

TEST(SizeForImageTest, ExtremeAspectsKeepAtLeastOneMultiple) {
  // 1000x1: height sqrt(399.36) = 19.98 -> 20 -> 16; width 19984.
  ExpectSize(1000, 1, 399360, 16, 19984, 16);
  ExpectSize(1, 4000, 399360, 16, 16, 39968);  // width sqrt(99.84) = 9.99 -> 10 -> at least 16
}

PipelineDescription Model(std::vector<Task> tasks) {
  PipelineDescription d;
  d.name = "m";
  d.tasks = std::move(tasks);
  return d;
}

TEST(RequestTaskTest, ImageFramesAndTheModelsTasksDecide) {
  GenerationRequest text;
  text.num_frames = 81;
  GenerationRequest still = text;
  still.num_frames = 1;
  GenerationRequest image = text;
  image.image = {2, 1, {1, 2, 3, 4, 5, 6}};
  const PipelineDescription t2v = Model({Task::kTextToVideo, Task::kTextToImage});
  const PipelineDescription i2v = Model({Task::kImageToVideo});
  const PipelineDescription ti2v = Model({Task::kTextToVideo, Task::kTextImageToVideo});
  EXPECT_EQ(RequestTask(t2v, text), Task::kTextToVideo);
  EXPECT_EQ(RequestTask(t2v, still), Task::kTextToImage);
  EXPECT_EQ(RequestTask(i2v, image), Task::kImageToVideo);
  EXPECT_EQ(RequestTask(ti2v, image), Task::kTextImageToVideo);
  EXPECT_EQ(RequestTask(ti2v, text), Task::kTextToVideo);
  // What the request's task is, not whether the model serves it.
  EXPECT_EQ(RequestTask(t2v, image), Task::kImageToVideo);
  EXPECT_STREQ(TaskName(Task::kTextImageToVideo), "ti2v");
}

TEST(ApplyImageAndExpertOverridesTest, LimitsApplyAndGuidanceScale2NeedsTwoExperts) {
  ModelOptions entry;
  entry.name = "m";
  entry.limits.max_image_bytes = 1 << 20;
  entry.limits.max_image_pixels = 1000;
  PipelineDescription d;
  ASSERT_TRUE(ApplyImageAndExpertOverrides(entry, &d).ok());
  EXPECT_EQ(d.limits.max_image_bytes, 1 << 20);
  EXPECT_EQ(d.limits.max_image_pixels, 1000);
  EXPECT_FALSE(d.defaults.guidance_scale_2.has_value());

  entry.defaults.guidance_scale_2 = 3.0;
  const Status one = ApplyImageAndExpertOverrides(entry, &d);
  EXPECT_EQ(one.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(one.message(),
            "defaults.guidance_scale_2: model 'm' has one transformer (only two-expert models "
            "take it)");
  d.experts = 2;
  ASSERT_TRUE(ApplyImageAndExpertOverrides(entry, &d).ok());
  EXPECT_EQ(d.defaults.guidance_scale_2, 3.0);
}

}  // namespace
}  // namespace rainserve
