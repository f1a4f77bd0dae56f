"""Reference encode and decode of a Wan VAE folder with diffusers' AutoencoderKLWan.

    PYTHONPATH=<diffusers>/src python3 tools/reference/wan22_vae_reference.py \
        --vae <folder with config.json + safetensors> --out OUT.safetensors \
        [--inputs IN.safetensors] [--frames 5 --height 32 --width 32 --latent-frames 2] \
        [--seed 0] [--device cpu|cuda] [--float64]

Made for the Wan2.2 TI2V-5B VAE (z_dim 48, patch_size 2, 16x spatial), it
works for any AutoencoderKLWan folder (Wan2.1 too). The folder is loaded with
AutoencoderKLWan.from_pretrained, unchanged, in float32 (and, with
--float64, a float64 copy to tell round-off from real differences).

Inputs: with --inputs, the tensors "video" [B, 3, 1 + 4k, H, W] in [-1, 1]
and "latents" [B, z_dim, F, h, w] (normalised, as the transformer produces
them) are read from that file; otherwise they are drawn from
torch.Generator("cpu").manual_seed(seed): video = 2 * rand - 1, latents =
randn. The script uses the same contracts as RainServe's WanVAE:

  encoded  = (posterior.mode() - latents_mean) / latents_std   (WanVAE::Encode)
  decoded  = vae.decode(latents * latents_std + latents_mean)   (WanVAE::Decode,
             clamped to [-1, 1] inside diffusers)

Writes OUT (safetensors, float32; float64 copies under "<name>.f64"):
  video, latents         the inputs
  encoded_raw            the posterior mode before normalisation
  encoded                the normalised encoding of video
  decoded                the decoding of latents
  roundtrip              the decoding of encoded
and in the file's metadata: the diffusers and torch versions, the VAE config
(JSON) and the settings.
"""
import argparse
import copy
import json

import torch
from safetensors.torch import load_file, save_file

import diffusers
from diffusers import AutoencoderKLWan


def latent_stats(vae, dtype, device):
    """latents_mean and latents_std as [1, z_dim, 1, 1, 1] tensors."""
    z_dim = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean, dtype=dtype, device=device).view(1, z_dim, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=dtype, device=device).view(1, z_dim, 1, 1, 1)
    return mean, std


@torch.no_grad()
def encode_decode(vae, video, latents):
    """The reference outputs of one VAE (its own dtype and device) as a dict."""
    p = next(vae.parameters())
    mean, std = latent_stats(vae, p.dtype, p.device)
    video = video.to(p.device, p.dtype)
    latents = latents.to(p.device, p.dtype)
    encoded_raw = vae.encode(video).latent_dist.mode()
    encoded = (encoded_raw - mean) / std
    decoded = vae.decode(latents * std + mean, return_dict=False)[0]
    roundtrip = vae.decode(encoded * std + mean, return_dict=False)[0]
    return {"encoded_raw": encoded_raw, "encoded": encoded, "decoded": decoded,
            "roundtrip": roundtrip}


def make_inputs(vae, args):
    """video and latents: read from --inputs or drawn from the seed."""
    if args.inputs:
        tensors = load_file(args.inputs)
        return tensors["video"].float(), tensors["latents"].float()
    gen = torch.Generator("cpu").manual_seed(args.seed)
    video = torch.rand((1, 3, args.frames, args.height, args.width), generator=gen) * 2 - 1
    # The config's spatial scale (diffusers' default 8 where a folder leaves it null).
    scale = vae.config.scale_factor_spatial or 8
    latents = torch.randn((1, vae.config.z_dim, args.latent_frames, args.height // scale,
                           args.width // scale), generator=gen)
    return video, latents


def run(args):
    """Loads the VAE, runs it on the inputs and writes args.out."""
    vae = AutoencoderKLWan.from_pretrained(args.vae, torch_dtype=torch.float32)
    vae = vae.to(args.device).eval()
    video, latents = make_inputs(vae, args)
    out = {"video": video, "latents": latents}
    out.update(encode_decode(vae, video, latents))
    if args.float64:
        vae64 = copy.deepcopy(vae).double()
        for name, t in encode_decode(vae64, video.double(), latents.double()).items():
            out[name + ".f64"] = t
    tensors = {name: t.detach().cpu().contiguous() for name, t in out.items()}
    tensors = {name: t if name.endswith(".f64") else t.float() for name, t in tensors.items()}
    metadata = {
        "diffusers_version": diffusers.__version__,
        "torch_version": torch.__version__,
        "vae_config": json.dumps(dict(vae.config), default=str),
        "settings": json.dumps(vars(args)),
    }
    save_file(tensors, args.out, metadata=metadata)
    for name, t in tensors.items():
        print(f"{name}: {tuple(t.shape)} {t.dtype}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vae", required=True, help="VAE folder (config.json + safetensors)")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--inputs", help="safetensors file with 'video' and 'latents'")
    parser.add_argument("--frames", type=int, default=5, help="video frames (1 + 4k)")
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--latent-frames", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--float64", action="store_true", help="also run a float64 copy")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
