"""Reference outputs of the Wan pipeline components from diffusers + transformers.

    PYTHONPATH=<diffusers>/src python3 bench/parity/wan_reference.py \
        --model models/wan-tiny --out OUT_DIR [--diffusers-commit SHA]

Runs every component of the reference on fixed inputs, on the CPU:
tokenizer ids (transformers), UMT5 encoder (prompt embeddings as WanPipeline
builds them), one WanTransformer3DModel forward, AutoencoderKLWan decode
and encode, the UniPC and FlowMatch Euler schedules and full step sequences
on fixed model outputs, the initial noise of a seed, and whole WanPipeline
generations (frames as output_type "np" and the final latents) for both
schedulers. Two-expert folders (model_index.json with transformer_2 and
boundary_ratio, Wan2.2 A14B) also get the second expert's forward, and their
generations switch experts with their own guidance scales. --parts picks
components; --write-checkpoint DIR first writes a randomly initialised
two-expert checkpoint with diffusers' and transformers' own save_pretrained
(sizes unlike the embedded models) and then uses it as --model. Writes into
OUT_DIR:

  wan_reference.json             settings (prompts, sizes, seeds, steps), the
                                 tensor names per component, library versions
  wan_reference.safetensors      inputs and float32 outputs
  wan_reference_f64.safetensors  the same components run in float64 (where
                                 they run), to tell round-off from real
                                 differences

tools/wan_parity reads these and compares RainServe's components
(docs/wan.md, "Parity with diffusers"). Inputs come from torch.Generator
seeds; the reference library is used unchanged. A component that fails is
recorded under "errors" and the others still run.
"""
import argparse
import copy
import json
import os
import shutil
import sys
import traceback
import types

import numpy as np
import PIL.Image
import torch
import transformers
from safetensors.torch import save_file

import diffusers
from diffusers import (AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler,
                       WanImageToVideoPipeline, WanPipeline, WanTransformer3DModel)
from diffusers.pipelines.wan import pipeline_wan_i2v
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionModel, UMT5EncoderModel

# WanImageToVideoPipeline's prompt cleaning calls ftfy unconditionally, while
# WanPipeline skips it when ftfy is not installed; without ftfy both clean
# prompts the same way (RainServe's tokenizer does what WanPipeline does).
if not hasattr(pipeline_wan_i2v, "ftfy"):
    pipeline_wan_i2v.ftfy = types.SimpleNamespace(fix_text=lambda text: text)

MAX_TOKENS = 512  # WanPipeline's max_sequence_length default
PROMPTS = [
    "a red fox running through fresh snow, cinematic lighting",
    "blurry, low quality, distorted",
]
TOKENIZER_PROMPTS = PROMPTS + [
    "  Two   cats &amp; a dog\tplaying   chess  ",
    "Numbers 1234567890, UPPER case, punctuation!?;:",
    "caf\u00e9 na\u00efve \u00fcber \u65e5\u672c\u8a9e",
    "a very long prompt " * 200,
]
SPECIAL_PROMPT = "a cat </s> a dog <pad> and <unk>"
PIPELINE = {"prompt": PROMPTS[0], "negative_prompt": PROMPTS[1], "seed": 42, "steps": 8,
            "guidance_scale": 5.0, "flow_shift": 3.0, "width": 64, "height": 64,
            "num_frames": 5}
SCHEDULES = [(kind, steps, shift) for kind in ("unipc", "euler") for steps in (1, 4, 8, 20, 50)
             for shift in (1.0, 3.0, 5.0)]
# Step sequences: name, kind, solver_order (UniPC), steps, shift.
SEQUENCES = [("unipc", "unipc", 2, 8, 3.0), ("unipc_order3", "unipc", 3, 8, 3.0),
             ("euler", "euler", 0, 8, 3.0)]
SEQUENCE_SHAPE = (1, 4, 2, 4, 4)


def randn(shape, seed, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=dtype)


class Recorder:
    """Collects tensors (float32 and float64 files) and per-component notes."""

    def __init__(self):
        self.f32, self.f64, self.components, self.errors = {}, {}, {}, {}

    def put(self, name, tensor, f64=None):
        self.f32[name] = tensor.detach().to(torch.float32 if tensor.is_floating_point()
                                            else torch.int64).contiguous()
        if f64 is not None:
            self.f64[name] = f64.detach().to(torch.float64).contiguous()

    def run(self, component, fn):
        try:
            self.components[component] = fn() or {}
            print(f"{component}: ok", flush=True)
        except Exception:  # record and go on with the other components
            self.errors[component] = traceback.format_exc()
            print(f"{component}: FAILED\n{self.errors[component]}", flush=True)


def tokenizer_part(rec, tok):
    def ids_of(texts):
        enc = tok([prompt_clean(t) for t in texts], padding="max_length", max_length=MAX_TOKENS,
                  truncation=True, add_special_tokens=True, return_attention_mask=True,
                  return_tensors="pt")
        return enc.input_ids, enc.attention_mask

    ids, mask = ids_of(TOKENIZER_PROMPTS)
    rec.put("tokenizer.ids", ids)
    rec.put("tokenizer.mask", mask)
    special_ids, special_mask = ids_of([SPECIAL_PROMPT])
    rec.put("tokenizer.special.ids", special_ids)
    rec.put("tokenizer.special.mask", special_mask)
    return {"prompts": TOKENIZER_PROMPTS, "special_prompt": SPECIAL_PROMPT,
            "max_length": MAX_TOKENS, "class": type(tok).__name__}


def umt5_part(rec, pipe, encoder):
    # _get_t5_prompt_embeds: tokenize, encode, zero past each prompt's length.
    embeds = pipe._get_t5_prompt_embeds(PROMPTS, max_sequence_length=MAX_TOKENS,
                                        device=torch.device("cpu"), dtype=torch.float32)
    # The same method on a float64 copy of the encoder (it reads only these two).
    pipe64 = types.SimpleNamespace(tokenizer=pipe.tokenizer,
                                   text_encoder=copy.deepcopy(encoder).double())
    embeds64 = WanPipeline._get_t5_prompt_embeds(pipe64, PROMPTS, max_sequence_length=MAX_TOKENS,
                                                 device=torch.device("cpu"), dtype=torch.float64)
    rec.put("umt5.prompt_embeds", embeds, embeds64)
    return {"prompts": PROMPTS, "max_length": MAX_TOKENS}


def transformer_part(rec, transformer, name="transformer", expand_timesteps=False):
    text = rec.f32["umt5.prompt_embeds"]  # [2, 512, d]
    hidden = randn((2, transformer.config.in_channels, 2, 8, 8), 1)
    timestep = torch.tensor([999.0, 602.15], dtype=torch.float32)
    image = None
    if transformer.config.image_dim is not None:
        image = randn((2, 257, transformer.config.image_dim), 3)
        rec.put(name + ".image_embeds", image)
    t64 = copy.deepcopy(transformer).double()

    def run(model, ts, dtype):
        return model(hidden_states=hidden.to(dtype), timestep=ts.to(dtype),
                     encoder_hidden_states=text.to(dtype),
                     encoder_hidden_states_image=None if image is None else image.to(dtype),
                     return_dict=False)[0]

    with torch.no_grad():
        out, out64 = run(transformer, timestep, torch.float32), run(t64, timestep, torch.float64)
    rec.put(name + ".hidden_states", hidden)
    rec.put(name + ".timestep", timestep)
    rec.put(name + ".output", out, out64)
    info = {"encoder_hidden_states": "umt5.prompt_embeds", "folder": name}
    if expand_timesteps:
        # Wan2.2 TI2V image mode: per-token timesteps, 0 on latent frame 0.
        frames, tokens = hidden.shape[2], hidden.shape[2] * 4 * 4  # patch (1, 2, 2) of 8 x 8
        per_frame = timestep[:, None].expand(2, frames).clone()
        per_frame[:, 0] = 0
        per_token = per_frame.repeat_interleave(tokens // frames, dim=1)
        with torch.no_grad():
            out, out64 = run(transformer, per_token, torch.float32), run(t64, per_token, torch.float64)
        rec.put(name + ".frame_timesteps", per_frame)
        rec.put(name + ".expanded_output", out, out64)
        info["expanded"] = True
    return info


def vae_part(rec, vae):
    # The pipeline's de-normalisation, then decode; encode the decoded video
    # back and normalise its latent means as the image-to-video pipelines do.
    z_dim = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z_dim, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z_dim, 1, 1, 1)
    latents = randn((1, z_dim, 2, 8, 8), 2)
    vae64 = copy.deepcopy(vae).double()
    with torch.no_grad():
        video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
        video64 = vae64.decode(latents.double() / inv_std.double() + mean.double(),
                               return_dict=False)[0]
        enc = vae.encode(video).latent_dist.mean
        enc64 = vae64.encode(video.double()).latent_dist.mean
    rec.put("vae.latents", latents)
    rec.put("vae.decoded", video, video64)
    rec.put("vae.encoded", (enc - mean) * inv_std, (enc64 - mean.double()) * inv_std.double())
    return {"encode_input": "vae.decoded"}


def make_scheduler(kind, unipc_config, solver_order=2, shift=3.0):
    if kind == "unipc":
        return UniPCMultistepScheduler.from_config(unipc_config, solver_order=solver_order,
                                                   flow_shift=shift)
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def scheduler_part(rec, unipc_config):
    schedules = []
    for kind, steps, shift in SCHEDULES:
        s = make_scheduler(kind, unipc_config, shift=shift)
        s.set_timesteps(steps, device="cpu")
        name = f"scheduler.{kind}.n{steps}.shift{shift:g}"
        rec.put(name + ".sigmas", s.sigmas)
        rec.put(name + ".timesteps", s.timesteps.to(torch.float32))  # exact: < 2^24
        schedules.append({"name": name, "kind": kind, "steps": steps, "shift": shift})
    sequences = []
    for name, kind, order, steps, shift in SEQUENCES:
        x0 = randn(SEQUENCE_SHAPE, 3)
        v = randn((steps,) + SEQUENCE_SHAPE, 4)
        outs = {}
        for dtype in (torch.float32, torch.float64):
            s = make_scheduler(kind, unipc_config, solver_order=order, shift=shift)
            s.set_timesteps(steps, device="cpu")
            s.set_begin_index(0)
            x, xs = x0.to(dtype), []
            for i, t in enumerate(s.timesteps):
                x = s.step(v[i].to(dtype), t, x, return_dict=False)[0]
                xs.append(x)
            outs[dtype] = torch.stack(xs)
        key = f"sequence.{name}"
        rec.put(key + ".x0", x0)
        rec.put(key + ".v", v)
        rec.put(key + ".samples", outs[torch.float32], outs[torch.float64])
        sequences.append({"name": key, "kind": kind, "solver_order": order, "steps": steps,
                          "shift": shift})
    return {"schedules": schedules, "sequences": sequences}


def test_image(width=72, height=56):
    """A deterministic RGB image (gradients and a checker) unlike the output size."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, ((x // 5 + y // 3) % 2) * 200], axis=-1)
    return rgb.astype(np.uint8)


def pipeline_part(rec, pipes, unipc_config):
    """Whole generations: `pipes` maps "text" / "image" to the pipeline of each mode."""
    p = dict(PIPELINE)
    text_pipe = pipes.get("text")
    any_pipe = text_pipe or pipes["image"]
    if any_pipe.transformer_2 is not None:
        p.update(guidance_scale=4.0, guidance_scale_2=3.0)
    image = test_image()
    rec.put("pipeline.image", torch.from_numpy(image))
    runs = []
    for mode, pipe in pipes.items():
        for kind in ("unipc", "euler"):
            pipe.scheduler = make_scheduler(kind, unipc_config, shift=p["flow_shift"])
            extra = {"image": PIL.Image.fromarray(image)} if mode == "image" else {}
            outputs = {}
            for output_type in ("np", "latent"):
                gen = torch.Generator("cpu").manual_seed(p["seed"])
                with torch.no_grad():
                    out = pipe(prompt=p["prompt"], negative_prompt=p["negative_prompt"],
                               height=p["height"], width=p["width"], num_frames=p["num_frames"],
                               num_inference_steps=p["steps"], guidance_scale=p["guidance_scale"],
                               guidance_scale_2=p.get("guidance_scale_2"), generator=gen,
                               output_type=output_type, max_sequence_length=MAX_TOKENS,
                               **extra).frames
                outputs[output_type] = torch.as_tensor(np.asarray(out)) if output_type == "np" else out
            key = f"pipeline.{kind}" + (".image" if mode == "image" else "")
            rec.put(key + ".frames", outputs["np"])  # [1, F, H, W, 3] in [0, 1]
            rec.put(key + ".latents", outputs["latent"])  # [1, z, f, h, w]
            runs.append({"name": key, "scheduler": kind, "image": mode == "image"})
    latent_shape = tuple(rec.f32[runs[0]["name"] + ".latents"].shape)
    rec.put("pipeline.noise", randn(latent_shape, p["seed"]))  # prepare_latents' draw
    return dict(p, runs=runs, max_sequence_length=MAX_TOKENS)


def image_encoder_part(rec, pipe):
    """CLIP hidden_states[-2] of the test image, as WanImageToVideoPipeline.encode_image."""
    image = PIL.Image.fromarray(test_image())
    pixels = pipe.image_processor(images=image, return_tensors="pt").pixel_values
    with torch.no_grad():
        embeds = pipe.encode_image(image, torch.device("cpu"))
    rec.put("image_encoder.image", torch.from_numpy(test_image()))
    rec.put("image_encoder.pixel_values", pixels)
    rec.put("image_encoder.hidden_states", embeds)
    return {"processor_class": type(pipe.image_processor).__name__}


def write_checkpoint(out, tokenizer_dir):
    """A two-expert Wan checkpoint in diffusers' own layout, random weights."""
    from transformers import UMT5Config
    torch.manual_seed(1234)
    shutil.copytree(tokenizer_dir, os.path.join(out, "tokenizer"), dirs_exist_ok=True)
    UMT5EncoderModel(UMT5Config(vocab_size=1000, d_model=48, d_kv=12, d_ff=96, num_layers=3,
                                num_heads=4, relative_attention_num_buckets=32,
                                feed_forward_proj="gated-gelu")).save_pretrained(
        os.path.join(out, "text_encoder"))
    for name in ("transformer", "transformer_2"):
        WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=3, attention_head_dim=32,
                              in_channels=16, out_channels=16, text_dim=48, freq_dim=32,
                              ffn_dim=160, num_layers=3, cross_attn_norm=True,
                              qk_norm="rms_norm_across_heads", eps=1e-6,
                              rope_max_seq_len=1024).save_pretrained(os.path.join(out, name))
    AutoencoderKLWan(base_dim=12, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                     attn_scales=[], temperal_downsample=[False, True, True]).save_pretrained(
        os.path.join(out, "vae"))
    UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                            flow_shift=5.0, num_train_timesteps=1000).save_pretrained(
        os.path.join(out, "scheduler"))
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump({"_class_name": "WanPipeline", "_diffusers_version": diffusers.__version__,
                   "boundary_ratio": 0.9,
                   "scheduler": ["diffusers", "UniPCMultistepScheduler"],
                   "text_encoder": ["transformers", "UMT5EncoderModel"],
                   "tokenizer": ["transformers", "T5TokenizerFast"],
                   "transformer": ["diffusers", "WanTransformer3DModel"],
                   "transformer_2": ["diffusers", "WanTransformer3DModel"],
                   "vae": ["diffusers", "AutoencoderKLWan"]}, f, indent=2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="diffusers-format Wan folder")
    parser.add_argument("--out", required=True)
    parser.add_argument("--diffusers-commit", default="")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--parts", default="tokenizer,umt5,transformer,vae,scheduler,pipeline")
    parser.add_argument("--write-checkpoint", default="",
                        help="write a diffusers-initialised checkpoint here (tokenizer from "
                             "--model) and compare against it")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.write_checkpoint:
        write_checkpoint(args.write_checkpoint, os.path.join(args.model, "tokenizer"))
        args.model = args.write_checkpoint
    torch.manual_seed(0)

    m = args.model
    index = {}
    if os.path.exists(os.path.join(m, "model_index.json")):
        with open(os.path.join(m, "model_index.json")) as f:
            index = json.load(f)
    two_experts = (index.get("transformer_2") or [None])[0] is not None
    tok = AutoTokenizer.from_pretrained(os.path.join(m, "tokenizer"))
    encoder = UMT5EncoderModel.from_pretrained(os.path.join(m, "text_encoder")).float().eval()
    transformer = WanTransformer3DModel.from_pretrained(os.path.join(m, "transformer")).float()
    transformer_2 = None
    if two_experts:
        transformer_2 = WanTransformer3DModel.from_pretrained(
            os.path.join(m, "transformer_2")).float().eval()
    vae = AutoencoderKLWan.from_pretrained(os.path.join(m, "vae")).float().eval()
    unipc_config = UniPCMultistepScheduler.load_config(os.path.join(m, "scheduler"))
    transformer.eval()
    expand = bool(index.get("expand_timesteps", False))
    common = dict(tokenizer=tok, text_encoder=encoder, vae=vae,
                  scheduler=make_scheduler("unipc", unipc_config), transformer=transformer,
                  transformer_2=transformer_2, boundary_ratio=index.get("boundary_ratio"),
                  expand_timesteps=expand)
    pipes = {}
    if index.get("_class_name", "WanPipeline") == "WanPipeline":
        pipes["text"] = WanPipeline(**common)
    if expand or index.get("_class_name") == "WanImageToVideoPipeline":
        image_encoder = image_processor = None
        if (index.get("image_encoder") or [None])[0] is not None:
            image_encoder = CLIPVisionModel.from_pretrained(
                os.path.join(m, "image_encoder")).float().eval()
            image_processor = CLIPImageProcessor.from_pretrained(os.path.join(m, "image_processor"))
        pipes["image"] = WanImageToVideoPipeline(image_encoder=image_encoder,
                                                 image_processor=image_processor, **common)
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    pipe = pipes.get("text") or pipes["image"]

    parts = set(args.parts.split(","))
    rec = Recorder()
    steps = [("tokenizer", lambda: tokenizer_part(rec, tok)),
             ("umt5", lambda: umt5_part(rec, pipe, encoder)),
             ("transformer", lambda: transformer_part(rec, transformer, expand_timesteps=expand)),
             ("transformer_2", lambda: transformer_part(rec, transformer_2, "transformer_2")),
             ("vae", lambda: vae_part(rec, vae)),
             ("scheduler", lambda: scheduler_part(rec, unipc_config)),
             ("image_encoder", lambda: image_encoder_part(rec, pipes["image"])),
             ("pipeline", lambda: pipeline_part(rec, pipes, unipc_config))]
    for name, fn in steps:
        if name == "transformer_2":
            if two_experts and "transformer" in parts:
                rec.run(name, fn)
        elif name == "image_encoder":
            if "image" in pipes and pipes["image"].image_encoder is not None and "pipeline" in parts:
                rec.run(name, fn)
        elif name in parts or (name == "umt5" and ("transformer" in parts)):
            rec.run(name, fn)

    save_file(rec.f32, os.path.join(args.out, "wan_reference.safetensors"))
    save_file(rec.f64, os.path.join(args.out, "wan_reference_f64.safetensors"))
    info = {
        "reference": {"diffusers": diffusers.__version__, "diffusers_commit": args.diffusers_commit,
                      "transformers": transformers.__version__, "torch": torch.__version__,
                      "numpy": np.__version__, "python": sys.version.split()[0],
                      "device": "cpu", "threads": torch.get_num_threads()},
        "model": os.path.basename(os.path.normpath(m)),
        "components": rec.components,
        "errors": rec.errors,
    }
    with open(os.path.join(args.out, "wan_reference.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    sys.exit(1 if rec.errors else 0)


if __name__ == "__main__":
    main()
