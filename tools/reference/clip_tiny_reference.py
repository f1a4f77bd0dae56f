"""The CLIP parity data of tests/pipelines/data/clip_parity, from transformers.

    python3 tools/reference/clip_tiny_reference.py OUT_DIR

Writes a checkpoint transformers itself makes and its reference outputs:

  OUT_DIR/image_encoder/     a random CLIPVisionModel (hidden 32, 3 layers,
                             4 heads, MLP 48, image 56, patch 7, GELU),
                             biases and LayerNorm parameters moved off 0 / 1
                             by N(0, 0.05) noise, saved by save_pretrained
  OUT_DIR/image_processor/   the PIL CLIP image processor, shortest edge 64,
                             crop 56 x 56 (the published settings otherwise)
  OUT_DIR/image.png          a 90 x 61 RGB test pattern (resize and crop both act)
  OUT_DIR/reference.safetensors
                             tools/reference/clip_reference.py's tensors for them

clip_vision_test (ClipParityTest) loads the folders with RainServe and
compares. Seeded: the same library versions write the same bytes.
"""
import os
import sys

import numpy as np
import torch
import transformers
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clip_reference import pil_processor_class, reference_tensors, save  # noqa: E402


def pattern(width, height):
    a = np.zeros((height, width, 3), np.uint8)
    for y in range(height):
        for x in range(width):
            a[y, x] = [(x * 5 + y * 3) % 256, (255 - x * 2 + (x * y) % 23 * 4) % 256,
                       200 if (x // 9 + y // 7) % 2 == 0 else 40]
    return Image.fromarray(a)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    image = pattern(90, 61)
    image.save(os.path.join(out, "image.png"))
    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        image_size=56, patch_size=7, hidden_act="gelu", projection_dim=16)
    model = transformers.CLIPVisionModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(os.path.join(out, "image_encoder"))
    processor = pil_processor_class()(size={"shortest_edge": 64},
                                      crop_size={"height": 56, "width": 56})
    processor.save_pretrained(os.path.join(out, "image_processor"))
    tensors = reference_tensors(os.path.join(out, "image_encoder"),
                                os.path.join(out, "image_processor"), image)
    save(tensors, os.path.join(out, "reference.safetensors"))


if __name__ == "__main__":
    main()
