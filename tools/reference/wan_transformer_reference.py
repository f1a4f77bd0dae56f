"""One forward of diffusers' WanTransformer3DModel on given inputs, in fp32.

    PYTHONPATH=<diffusers>/src python3 tools/reference/wan_transformer_reference.py \
        --transformer MODEL_DIR/transformer --inputs inputs.safetensors \
        --out reference.safetensors [--device cuda] [--dtype float32|float64]

The reference RainServe's WanTransformer (pipelines/wan/wan_transformer.h) is
compared with for text-to-video, image-to-video (Wan2.1 I2V image
cross-attention, FLF2V position-embedded image tokens) and Wan2.2 TI2V
per-frame timesteps. Reads from --inputs (safetensors):

  latents       [B, in_channels, F, H, W]
  timestep      [B]; or [B, N] one per token (diffusers' form, N = tokens
                after patching); or [B, F / p_t] one per latent frame
                (RainServe's form), expanded here to [B, N]
  text          [B, L, text_dim] encoder hidden states
  image_embeds  [B, S, image_dim] (optional; required by image_dim models).
                For a model with pos_embed_seq_len (FLF2V), S equals it and
                holds the first frame's tokens then the last frame's; it is
                passed to diffusers as [2B, S / 2, image_dim], the layout its
                pipeline builds.

Writes --out (safetensors): "output" [B, out_channels, F, H, W] float32 (the
forward in --dtype, stored as float32), and "timestep_per_token" when the
timestep was expanded; prints a JSON line with the library versions. The
model runs with TF32 off. diffusers splits the cross-attention context of an
image model at 512 text tokens from the end, so such a model needs L = 512
(the pipelines' text length); the script refuses other lengths.
"""
import argparse
import json
import sys

import torch
from safetensors.torch import load_file, save_file

import diffusers
from diffusers import WanTransformer3DModel

TEXT_TOKENS_OF_IMAGE_MODELS = 512  # WanAttnProcessor's fixed text length


def per_token_timestep(timestep, config, latents):
    """[B], [B, N] as they are; [B, F'] (per latent frame) -> [B, N]."""
    if timestep.dim() == 1:
        return timestep, False
    p_t, p_h, p_w = config.patch_size
    _, _, f, h, w = latents.shape
    frames, per_frame = f // p_t, (h // p_h) * (w // p_w)
    if timestep.shape[1] == frames * per_frame:
        return timestep, False
    if timestep.shape[1] != frames:
        sys.exit(f"timestep {list(timestep.shape)}: expected [B], [B, {frames}] or "
                 f"[B, {frames * per_frame}]")
    return timestep.repeat_interleave(per_frame, dim=1), True


def image_input(image, config, batch):
    """Our [B, S, D] image tokens in the layout diffusers' forward reads."""
    if config.image_dim is None:
        if image is not None:
            sys.exit("image_embeds given, but the model has no image_dim")
        return None
    if image is None:
        sys.exit("the model has image_dim set: image_embeds is required")
    if image.shape[0] != batch or image.shape[2] != config.image_dim:
        sys.exit(f"image_embeds {list(image.shape)}: expected [{batch}, S, {config.image_dim}]")
    if config.pos_embed_seq_len is not None:
        if image.shape[1] != config.pos_embed_seq_len or image.shape[1] % 2:
            sys.exit(f"image_embeds: S must equal pos_embed_seq_len {config.pos_embed_seq_len}")
        return image.reshape(2 * batch, image.shape[1] // 2, image.shape[2])
    return image


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transformer", required=True, help="diffusers transformer folder")
    parser.add_argument("--inputs", required=True, help="safetensors file with the inputs")
    parser.add_argument("--out", required=True, help="safetensors file to write")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)

    model = WanTransformer3DModel.from_pretrained(args.transformer, torch_dtype=torch.float32)
    model = model.to(device=device, dtype=dtype).eval()
    config = model.config

    inputs = load_file(args.inputs)
    for key in ("latents", "timestep", "text"):
        if key not in inputs:
            sys.exit(f"{args.inputs}: missing tensor '{key}'")
    latents = inputs["latents"]
    text = inputs["text"]
    timestep, expanded = per_token_timestep(inputs["timestep"], config, latents)
    image = image_input(inputs.get("image_embeds"), config, latents.shape[0])
    if image is not None and text.shape[1] != TEXT_TOKENS_OF_IMAGE_MODELS:
        sys.exit(f"text has {text.shape[1]} tokens: diffusers' image cross-attention takes "
                 f"exactly {TEXT_TOKENS_OF_IMAGE_MODELS}")

    def on_device(t):
        return None if t is None else t.to(device=device, dtype=dtype)

    with torch.no_grad():
        output = model(hidden_states=on_device(latents),
                       timestep=timestep.to(device=device, dtype=dtype),
                       encoder_hidden_states=on_device(text),
                       encoder_hidden_states_image=on_device(image),
                       return_dict=False)[0]

    tensors = {"output": output.float().cpu().contiguous()}
    if expanded:
        tensors["timestep_per_token"] = timestep.float().contiguous()
    save_file(tensors, args.out)
    print(json.dumps({"out": args.out, "output_shape": list(output.shape), "dtype": args.dtype,
                      "device": args.device, "diffusers": diffusers.__version__,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
