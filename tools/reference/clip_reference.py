"""Reference CLIP image embedding of one image, from transformers.

    python3 tools/reference/clip_reference.py --image-encoder MODEL/image_encoder \
        --image-processor MODEL/image_processor --image input.png --out clip_reference.safetensors

Runs what diffusers' WanImageToVideoPipeline.encode_image runs, with the
reference libraries unchanged: transformers' CLIP image processor in its PIL
implementation (Pillow resize, centre crop, rescale, normalise: the slow
CLIPImageProcessor, CLIPImageProcessorPil from transformers 5) on the PNG
opened with Pillow and converted to RGB, then CLIPVisionModel with
output_hidden_states=True on the CPU in float32. Writes into --out:

  resized_cropped            float32 [H, W, 3]: the uint8 image after the
                             processor's resize and centre crop (before
                             rescale), to tell resampling from arithmetic
  pixel_values               float32 [1, 3, H, W]: the processor's output
  hidden_states_penultimate  float32 [1, N, D]: hidden_states[-2], what the
                             pipeline feeds the transformer
  hidden_states_0            float32 [1, N, D]: hidden_states[0] (embeddings
                             after pre_layrnorm)
  last_hidden_state          float32 [1, N, D]

When transformers.CLIPImageProcessor (the class diffusers loads for the
pipeline's image_processor) is another implementation than the PIL one (the
torchvision backend of transformers 5), its output and the embedding of it
are written too, as pixel_values_pipeline and
hidden_states_penultimate_pipeline, so that the two can be told apart.

and, as safetensors metadata, the versions of torch, transformers and
Pillow, the processor class used and the attention implementation.
RainServe's ClipImageProcessor::Preprocess and ClipVisionEncoder::Forward /
HiddenState (pipelines/text/clip_vision.h) are compared with these.
"""
import argparse

import numpy as np
import PIL
import torch
import transformers
from PIL import Image
from safetensors.torch import save_file


def slow_processor_class():
    """transformers' PIL-backed CLIP processor (CLIPImageProcessorPil from
    transformers 5, the slow CLIPImageProcessor before)."""
    pil_class = getattr(transformers, "CLIPImageProcessorPil", None)
    if pil_class is not None:
        return pil_class
    return transformers.CLIPImageProcessor


def resized_and_cropped(processor, image):
    """The uint8 image after the processor's own resize and centre crop."""
    array = np.array(image)
    if processor.do_resize:
        array = processor.resize(array, size=processor.size, resample=processor.resample)
    if processor.do_center_crop:
        array = processor.center_crop(array, size=processor.crop_size)
    return torch.from_numpy(np.ascontiguousarray(array).astype(np.float32))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-encoder", required=True, help="the image_encoder folder")
    parser.add_argument("--image-processor", required=True, help="the image_processor folder")
    parser.add_argument("--image", required=True, help="a PNG or JPEG file")
    parser.add_argument("--out", required=True, help="the safetensors file to write")
    parser.add_argument("--attn", default="eager", choices=["eager", "sdpa"],
                        help="transformers' attention implementation")
    args = parser.parse_args()

    image = Image.open(args.image).convert("RGB")
    processor_class = slow_processor_class()
    processor = processor_class.from_pretrained(args.image_processor)
    pixel_values = processor(images=image, return_tensors="pt").pixel_values.float()

    model = transformers.CLIPVisionModel.from_pretrained(
        args.image_encoder, torch_dtype=torch.float32, attn_implementation=args.attn).eval()
    with torch.no_grad():
        out = model(pixel_values=pixel_values, output_hidden_states=True)

    tensors = {
        "pixel_values": pixel_values,
        "hidden_states_penultimate": out.hidden_states[-2],
        "hidden_states_0": out.hidden_states[0],
        "last_hidden_state": out.last_hidden_state,
    }
    pipeline_class = transformers.CLIPImageProcessor
    if pipeline_class is not processor_class:
        pipeline_processor = pipeline_class.from_pretrained(args.image_processor)
        pipeline_pixels = pipeline_processor(images=image, return_tensors="pt").pixel_values.float()
        with torch.no_grad():
            pipeline_out = model(pixel_values=pipeline_pixels, output_hidden_states=True)
        tensors["pixel_values_pipeline"] = pipeline_pixels
        tensors["hidden_states_penultimate_pipeline"] = pipeline_out.hidden_states[-2]
        print("pipeline processor %s: max |pixel difference| %.3g" %
              (pipeline_class.__name__, (pipeline_pixels - pixel_values).abs().max().item()))
    try:
        tensors["resized_cropped"] = resized_and_cropped(processor, image)
    except (AttributeError, TypeError) as e:  # a processor without the per-step methods
        print(f"resized_cropped not written: {e}")
    metadata = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pillow": PIL.__version__,
        "processor_class": processor_class.__name__,
        "pipeline_processor_class": pipeline_class.__name__,
        "attn_implementation": args.attn,
        "num_hidden_states": str(len(out.hidden_states)),
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, args.out, metadata=metadata)
    for name, t in tensors.items():
        print(f"{name}: {tuple(t.shape)}")


if __name__ == "__main__":
    main()
