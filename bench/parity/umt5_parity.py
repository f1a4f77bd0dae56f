"""Parity of our UMT5 text encoder with transformers' UMT5EncoderModel.

    build/tools/umt5_dump OUT_DIR [--device cpu|cuda]
    python3 bench/parity/umt5_parity.py OUT_DIR [--device cpu|cuda] [--json OUT.json]

umt5_dump (tools/umt5_dump.cc) writes a random tiny UMT5 encoder with our
Save() (OUT_DIR/model: config.json + model.safetensors, the published
layout) and OUT_DIR/io.safetensors with fixed ids/mask [3, 40] (rows padded
after 40, 23 and 1 tokens), our fp32 last_hidden_state and our relative
position buckets. This script loads the folder with
UMT5EncoderModel.from_pretrained(..., torch_dtype=float32) unchanged, runs
the same ids/mask and compares.

Pass/fail: max |ours - transformers| over real (mask 1) positions must be
<= 1e-4 * max(1, max |transformers|) in fp32 (observed error is float32
rounding, ~1e-6 relative). Padded positions are reported but not judged (the
Wan pipeline zeroes them). Bucket tables must match exactly; a mismatch is
printed with the distances involved (a 1-ulp difference of fp32 log() at the
exact boundaries 16/32/64 between LibTorch builds would show there).

Writes the numbers to OUT_DIR/parity.json (or --json) and exits 1 on failure.
Needs python3 with torch, transformers and safetensors. Use the same device
for both sides when comparing buckets (log() may differ by an ulp across
devices). Our writer stores the {"format": "pt"} metadata entry that
transformers before 4.48.2 requires.
"""
import argparse
import json
import os
import sys

import torch
import transformers
from safetensors.torch import load_file
from transformers import UMT5EncoderModel

REL_TOL = 1e-4


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    io = load_file(os.path.join(args.out_dir, "io.safetensors"))
    ids = io["input_ids"].round().long().to(args.device)
    mask = io["attention_mask"].round().long().to(args.device)
    ours = io["last_hidden_state"].float().to(args.device)

    model, info = UMT5EncoderModel.from_pretrained(
        os.path.join(args.out_dir, "model"), torch_dtype=torch.float32, output_loading_info=True)
    model = model.to(args.device).eval()
    # The tied alias is filled from shared.weight; anything else is a layout bug.
    missing = [k for k in info.get("missing_keys", []) if k != "encoder.embed_tokens.weight"]
    unexpected = list(info.get("unexpected_keys", []))
    mismatched = [str(k) for k in info.get("mismatched_keys", [])]
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()

    real = mask.bool().unsqueeze(-1).expand_as(ref)
    diff = (ours - ref).abs()
    scale = max(1.0, ref[real].abs().max().item())
    max_real = diff[real].max().item()
    max_padded = diff[~real].max().item() if (~real).any() else 0.0

    # Buckets of key - query, as transformers computes them.
    L = ids.shape[1]
    pos = torch.arange(L, device=args.device)
    rel = pos[None, :] - pos[:, None]
    attn = model.encoder.block[0].layer[0].SelfAttention
    bucket_mismatch = []
    if hasattr(attn, "_relative_position_bucket"):
        theirs = attn._relative_position_bucket(rel).cpu()
        mine = io["buckets"].round().long().cpu()
        bad = (theirs != mine).nonzero().tolist()
        bucket_mismatch = sorted({int(rel[i, j]) for i, j in bad})

    ok = (max_real <= REL_TOL * scale and not missing and not unexpected and not mismatched
          and not bucket_mismatch)
    result = {
        "ok": ok,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "device": args.device,
        "max_abs_diff_real_tokens": max_real,
        "max_abs_diff_padded_tokens": max_padded,
        "output_scale": scale,
        "tolerance": REL_TOL * scale,
        "missing_keys": missing,
        "unexpected_keys": unexpected,
        "mismatched_keys": mismatched,
        "bucket_mismatch_distances": bucket_mismatch,
    }
    text = json.dumps(result, indent=2)
    print(text)
    with open(args.json or os.path.join(args.out_dir, "parity.json"), "w") as f:
        f.write(text + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
