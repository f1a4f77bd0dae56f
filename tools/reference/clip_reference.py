"""Reference CLIP image embedding of one image, from transformers.

    python3 tools/reference/clip_reference.py --image-encoder MODEL/image_encoder \
        --image-processor MODEL/image_processor --image input.png --out clip_reference.safetensors

Runs what diffusers' WanImageToVideoPipeline.encode_image runs, with the
reference libraries unchanged: transformers' CLIP image processor in its PIL
implementation (Pillow resize, centre crop, rescale, normalise: the slow
CLIPImageProcessor, CLIPImageProcessorPil from transformers 5) on the image
opened with Pillow and converted to RGB, then CLIPVisionModel with
output_hidden_states=True on the CPU in float32. Writes into --out:

  image_rgb                  float32 [H, W, 3]: the decoded input image
  pixel_values               float32 [1, 3, h, w]: the processor's output
  hidden_states_penultimate  float32 [1, N, D]: hidden_states[-2], what the
                             pipeline feeds the transformer
  hidden_states_0            float32 [1, N, D]: hidden_states[0] (embeddings
                             after pre_layrnorm)
  last_hidden_state          float32 [1, N, D]

When transformers.CLIPImageProcessor (the class diffusers loads for the
pipeline's image_processor) is another implementation than the PIL one (in
transformers 5 it is the torchvision backend), its output and the embedding
of it are written too, as pixel_values_pipeline and
hidden_states_penultimate_pipeline. The safetensors metadata records the
versions of torch, transformers and Pillow and the pipeline's processor
class. RainServe's ClipImageProcessor::Preprocess (its PIL backend with
pixel_values, its default torchvision backend with pixel_values_pipeline) and
ClipVisionEncoder::Forward / HiddenState (pipelines/text/clip_vision.h) are
compared with these.
"""
import argparse

import numpy as np
import PIL
import torch
import transformers
from PIL import Image
from safetensors.torch import save_file


def pil_processor_class():
    """transformers' PIL-backed CLIP processor (CLIPImageProcessorPil from
    transformers 5, the slow CLIPImageProcessor before)."""
    return getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor)


def reference_tensors(image_encoder, image_processor, image):
    """The tensors listed above for a PIL RGB image."""
    model = transformers.CLIPVisionModel.from_pretrained(
        image_encoder, torch_dtype=torch.float32, attn_implementation="eager").eval()
    out = {"image_rgb": torch.from_numpy(np.array(image).astype(np.float32))}
    processors = [("", pil_processor_class())]
    if transformers.CLIPImageProcessor is not pil_processor_class():
        processors.append(("_pipeline", transformers.CLIPImageProcessor))
    for suffix, processor_class in processors:
        processor = processor_class.from_pretrained(image_processor)
        pixels = processor(images=image, return_tensors="pt").pixel_values.float()
        with torch.no_grad():
            states = model(pixel_values=pixels, output_hidden_states=True)
        out["pixel_values" + suffix] = pixels
        out["hidden_states_penultimate" + suffix] = states.hidden_states[-2]
        if not suffix:
            out["hidden_states_0"] = states.hidden_states[0]
            out["last_hidden_state"] = states.last_hidden_state
    return out


def save(tensors, path):
    metadata = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pillow": PIL.__version__,
        "pipeline_processor": transformers.CLIPImageProcessor.__name__,
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=metadata)
    for name, t in tensors.items():
        print(f"{name}: {tuple(t.shape)}")
    if "pixel_values_pipeline" in tensors:
        diff = (tensors["pixel_values_pipeline"] - tensors["pixel_values"]).abs().max().item()
        print(f"pipeline processor vs PIL processor: max |pixel difference| {diff:.3g}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-encoder", required=True, help="the image_encoder folder")
    parser.add_argument("--image-processor", required=True, help="the image_processor folder")
    parser.add_argument("--image", required=True, help="a PNG or JPEG file")
    parser.add_argument("--out", required=True, help="the safetensors file to write")
    args = parser.parse_args()
    image = Image.open(args.image).convert("RGB")
    save(reference_tensors(args.image_encoder, args.image_processor, image), args.out)


if __name__ == "__main__":
    main()
