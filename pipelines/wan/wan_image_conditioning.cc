#include "pipelines/wan/wan_image_conditioning.h"

#include <cstring>

#include "pipelines/core/image_ops.h"
#include "pipelines/text/clip_vision.h"
#include "pipelines/wan/wan_vae.h"

namespace rainserve {

StatusOr<at::Tensor> WanVideoFrame(const InputImage& image, int64_t width, int64_t height,
                                   const at::Device& device) {
  RAINSERVE_ASSIGN_OR_RETURN(const InputImage resized,
                             ResizeImage(image, width, height, ResampleFilter::kLanczos));
  at::Tensor rgb = at::empty({height, width, 3}, at::kByte);
  std::memcpy(rgb.data_ptr<uint8_t>(), resized.rgb.data(), resized.rgb.size());
  // [H, W, 3] uint8 -> [1, 3, 1, H, W] in [-1, 1], as x / 255 * 2 - 1.
  const at::Tensor x = rgb.to(at::kFloat).div(255.0).permute({2, 0, 1});
  return (x * 2.0 - 1.0).unsqueeze(0).unsqueeze(2).contiguous().to(device);
}

StatusOr<WanImageConditioning> WanImageConditioning::Prepare(
    WanImageMode mode, const InputImage& image, int64_t width, int64_t height,
    int64_t num_frames, const WanVAE& vae, const ClipVisionEncoder* clip,
    const ClipImageProcessor* processor) {
  WanImageConditioning c;
  c.mode_ = mode;
  if (mode == WanImageMode::kNone) return c;
  const at::Device device = vae.device();
  RAINSERVE_ASSIGN_OR_RETURN(const at::Tensor frame, WanVideoFrame(image, width, height, device));
  if (mode == WanImageMode::kFirstFrame) {
    RAINSERVE_ASSIGN_OR_RETURN(const at::Tensor first, vae.Encode(frame));  // [1, z, 1, h, w]
    const int64_t F = (num_frames - 1) / vae.temporal_scale() + 1;
    c.frame_mask_ = at::ones({1, 1, F, first.size(3), first.size(4)}, first.options());
    c.frame_mask_.narrow(2, 0, 1).zero_();
    // Frames past 0 stay zero (WithImageFrame adds the condition everywhere).
    c.condition_ = at::zeros({1, first.size(1), F, first.size(3), first.size(4)}, first.options());
    c.condition_.narrow(2, 0, 1).copy_(first);
    return c;
  }
  // kConcat: the image then black frames, encoded as one video.
  at::Tensor video = at::zeros({1, 3, num_frames, height, width}, frame.options());
  video.narrow(2, 0, 1).copy_(frame);
  RAINSERVE_ASSIGN_OR_RETURN(const at::Tensor latent, vae.Encode(video));  // [1, z, F, h, w]
  at::Tensor mask = at::zeros({1, vae.temporal_scale(), latent.size(2), latent.size(3),
                               latent.size(4)}, latent.options());
  mask.narrow(2, 0, 1).fill_(1.0);
  c.condition_ = at::cat({mask, latent}, 1);
  if (clip != nullptr && processor != nullptr) {
    RAINSERVE_ASSIGN_OR_RETURN(const at::Tensor pixels, processor->Preprocess(image));
    RAINSERVE_ASSIGN_OR_RETURN(c.clip_embeds_, clip->Forward(pixels));
  }
  return c;
}

at::Tensor WanImageConditioning::ModelInput(const at::Tensor& latents, int64_t batch,
                                            at::ScalarType dtype) const {
  at::Tensor x = latents;
  if (mode_ == WanImageMode::kConcat) {
    x = at::cat({latents, condition_}, 1);
  } else if (mode_ == WanImageMode::kFirstFrame) {
    x = WithImageFrame(latents);
  }
  return x.to(dtype).expand({batch, -1, -1, -1, -1});
}

at::Tensor WanImageConditioning::Timesteps(double t, int64_t batch, int64_t latent_frames,
                                           const at::Device& device) const {
  const auto opts = at::TensorOptions().dtype(at::kFloat).device(device);
  if (mode_ != WanImageMode::kFirstFrame) return at::full({batch}, t, opts);
  // mask * t per frame: 0 * t is 0 on frame 0, t elsewhere.
  at::Tensor ts = at::full({batch, latent_frames}, t, opts);
  ts.narrow(1, 0, 1).zero_();
  return ts;
}

at::Tensor WanImageConditioning::Finish(const at::Tensor& latents) const {
  if (mode_ != WanImageMode::kFirstFrame) return latents;
  return WithImageFrame(latents);
}

at::Tensor WanImageConditioning::WithImageFrame(const at::Tensor& latents) const {
  // The reference's (1 - mask) * condition + mask * latents: the condition is
  // zero wherever the mask is 1, so (1 - mask) * condition is the condition.
  return condition_ + frame_mask_ * latents;
}

at::Tensor WanImageConditioning::ImageEmbeds(int64_t batch) const {
  if (!clip_embeds_.defined()) return at::Tensor();
  return clip_embeds_.expand({batch, -1, -1});
}

}  // namespace rainserve
