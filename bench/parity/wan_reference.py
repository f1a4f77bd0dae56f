"""Reference outputs of the Wan pipeline components from diffusers + transformers.

    PYTHONPATH=<diffusers>/src python3 bench/parity/wan_reference.py \
        --model models/wan-tiny --out OUT_DIR [--diffusers-commit SHA]

Runs every component of the reference on fixed inputs, on the CPU:
tokenizer ids (transformers), UMT5 encoder (prompt embeddings as WanPipeline
builds them), one WanTransformer3DModel forward, AutoencoderKLWan decode
and encode, the UniPC and FlowMatch Euler schedules and full step sequences
on fixed model outputs, the initial noise of a seed, and whole WanPipeline
generations (frames as output_type "np" and the final latents) for both
schedulers. Writes into OUT_DIR:

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
import sys
import traceback
import types

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

import diffusers
from diffusers import (AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler,
                       WanPipeline, WanTransformer3DModel)
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from transformers import AutoTokenizer, UMT5EncoderModel

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


def transformer_part(rec, transformer):
    text = rec.f32["umt5.prompt_embeds"]  # [2, 512, d]
    hidden = randn((2, 16, 2, 8, 8), 1)
    timestep = torch.tensor([999.0, 602.15], dtype=torch.float32)
    with torch.no_grad():
        out = transformer(hidden_states=hidden, timestep=timestep, encoder_hidden_states=text,
                          return_dict=False)[0]
        t64 = copy.deepcopy(transformer).double()
        out64 = t64(hidden_states=hidden.double(), timestep=timestep.double(),
                    encoder_hidden_states=text.double(), return_dict=False)[0]
    rec.put("transformer.hidden_states", hidden)
    rec.put("transformer.timestep", timestep)
    rec.put("transformer.output", out, out64)
    return {"encoder_hidden_states": "umt5.prompt_embeds"}


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


def pipeline_part(rec, pipe, unipc_config):
    p = PIPELINE
    runs = []
    for kind in ("unipc", "euler"):
        pipe.scheduler = make_scheduler(kind, unipc_config, shift=p["flow_shift"])
        outputs = {}
        for output_type in ("np", "latent"):
            gen = torch.Generator("cpu").manual_seed(p["seed"])
            with torch.no_grad():
                out = pipe(prompt=p["prompt"], negative_prompt=p["negative_prompt"],
                           height=p["height"], width=p["width"], num_frames=p["num_frames"],
                           num_inference_steps=p["steps"], guidance_scale=p["guidance_scale"],
                           generator=gen, output_type=output_type,
                           max_sequence_length=MAX_TOKENS).frames
            outputs[output_type] = torch.as_tensor(np.asarray(out)) if output_type == "np" else out
        key = f"pipeline.{kind}"
        rec.put(key + ".frames", outputs["np"])  # [1, F, H, W, 3] in [0, 1]
        rec.put(key + ".latents", outputs["latent"])  # [1, z, f, h, w]
        runs.append({"name": key, "scheduler": kind})
    latent_shape = tuple(rec.f32["pipeline.unipc.latents"].shape)
    rec.put("pipeline.noise", randn(latent_shape, p["seed"]))  # prepare_latents' draw
    return dict(p, runs=runs, max_sequence_length=MAX_TOKENS)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="diffusers-format Wan folder")
    parser.add_argument("--out", required=True)
    parser.add_argument("--diffusers-commit", default="")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    m = args.model
    tok = AutoTokenizer.from_pretrained(os.path.join(m, "tokenizer"))
    encoder = UMT5EncoderModel.from_pretrained(os.path.join(m, "text_encoder")).float().eval()
    transformer = WanTransformer3DModel.from_pretrained(os.path.join(m, "transformer")).float()
    vae = AutoencoderKLWan.from_pretrained(os.path.join(m, "vae")).float().eval()
    unipc_config = UniPCMultistepScheduler.load_config(os.path.join(m, "scheduler"))
    transformer.eval()
    pipe = WanPipeline(tokenizer=tok, text_encoder=encoder, vae=vae,
                       scheduler=make_scheduler("unipc", unipc_config), transformer=transformer)
    pipe.set_progress_bar_config(disable=True)

    rec = Recorder()
    rec.run("tokenizer", lambda: tokenizer_part(rec, tok))
    rec.run("umt5", lambda: umt5_part(rec, pipe, encoder))
    rec.run("transformer", lambda: transformer_part(rec, transformer))
    rec.run("vae", lambda: vae_part(rec, vae))
    rec.run("scheduler", lambda: scheduler_part(rec, unipc_config))
    rec.run("pipeline", lambda: pipeline_part(rec, pipe, unipc_config))

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
