"""transformers' CLIPImageProcessor pixel values, for tests/pipelines/data/clip_fast_parity.

    python3 tools/reference/clip_fast_reference.py --make-image \
        --processor tests/pipelines/data/clip_parity/image_processor \
        --out tests/pipelines/data/clip_fast_parity

Runs the class transformers.CLIPImageProcessor.from_pretrained returns in the
installed version (in transformers 5 the torchvision backend; its name is
printed and recorded), as diffusers' WanImageToVideoPipeline.encode_image
calls it: a PIL RGB image in, return_tensors="pt", on the CPU. For every
input image and every processor variant it writes the pixel values; the
variants start from --processor's preprocessor_config.json (transformers'
default CLIPImageProcessor settings, the published Wan ones, when omitted):

  given          the configuration as it is
  bilinear_pad   resample 2 (bilinear), size 71 x 45, crop 56 x 56: the crop
                 pads the height (11 rows, an odd difference) and crops the
                 width
  lanczos_rescale_only
                 resample 1 (transformers uses bicubic for it), no normalise
  normalize_only no rescale: the mean and std applied to 0..255 values

Inputs: --image FILE (repeatable; opened with Pillow, converted to RGB)
and/or --make-image, which makes three deterministic test images
(gradients, noise and a checkerboard; 90 x 61, 17 x 23 and 300 x 170, so
the resize reduces, enlarges and does both). Writes into --out:

  processors/<variant>/preprocessor_config.json
  images/<image>.png             the made images
  reference.safetensors          <image>/image_rgb  uint8 [H, W, 3], the
                                 decoded RGB bytes; <variant>/<image>/pixel_values
                                 float32 [1, 3, h, w]; metadata: the library
                                 versions, the processor class, ATen's CPU
                                 capability

clip_vision_test (ClipFastParityTest) runs RainServe's ClipImageProcessor on
the same bytes with each variant and compares bit for bit.
"""
import argparse
import json
import os

import numpy as np
import PIL
import torch
import transformers
from PIL import Image
from safetensors.torch import save_file

VARIANTS = {
    "given": {},
    "bilinear_pad": {"resample": 2, "size": {"height": 45, "width": 71},
                     "crop_size": {"height": 56, "width": 56}},
    "lanczos_rescale_only": {"resample": 1, "do_normalize": False},
    "normalize_only": {"do_rescale": False},
}

MADE_IMAGES = {"gradient_noise_90x61": (90, 61, 1), "small_17x23": (17, 23, 2),
               "wide_300x170": (300, 170, 3)}


def make_image(width, height, seed):
    """Gradients plus uniform noise, a checkerboard over the right third."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([x * 255.0 / max(width - 1, 1), y * 255.0 / max(height - 1, 1),
                     (x + y) * 127.0 / max(width + height - 2, 1) + 64.0], axis=-1)
    pixels = base + rng.randint(-40, 41, size=(height, width, 3))
    checker = ((x // 7 + y // 5) % 2 == 0) & (x >= 2 * width // 3)
    pixels[checker] = 255.0
    pixels[(~checker) & (x >= 2 * width // 3)] = 0.0
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def base_config(processor_dir):
    if processor_dir:
        with open(os.path.join(processor_dir, "preprocessor_config.json")) as f:
            return json.load(f)
    return transformers.CLIPImageProcessor().to_dict()


def write_variants(out, config):
    """The variant folders, each read back by transformers itself."""
    processors = {}
    for name, change in VARIANTS.items():
        folder = os.path.join(out, "processors", name)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
            json.dump({**config, **change}, f, indent=2, sort_keys=True)
            f.write("\n")
        processors[name] = transformers.CLIPImageProcessor.from_pretrained(folder)
    return processors


def input_images(args):
    images = {}
    if args.make_image:
        os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
        for name, (width, height, seed) in MADE_IMAGES.items():
            images[name] = make_image(width, height, seed)
            images[name].save(os.path.join(args.out, "images", name + ".png"))
    for path in args.image or []:
        images[os.path.splitext(os.path.basename(path))[0]] = Image.open(path).convert("RGB")
    if not images:
        raise SystemExit("give --image FILE and/or --make-image")
    return images


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", action="append", help="a PNG or JPEG file (repeatable)")
    parser.add_argument("--make-image", action="store_true", help="add the made test images")
    parser.add_argument("--processor", help="an image_processor folder (default: transformers' defaults)")
    parser.add_argument("--out", required=True, help="the folder to write")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    processors = write_variants(args.out, base_config(args.processor))
    first = next(iter(processors.values()))
    cls = type(first)
    print(f"CLIPImageProcessor.from_pretrained returns {cls.__module__}.{cls.__name__}"
          f" (backend {getattr(first, 'backend', 'n/a')})")
    tensors = {}
    for image_name, image in input_images(args).items():
        tensors[f"{image_name}/image_rgb"] = torch.from_numpy(np.array(image, dtype=np.uint8))
        for name, processor in processors.items():
            pixels = processor(images=image, return_tensors="pt").pixel_values
            assert pixels.dtype == torch.float32, pixels.dtype
            tensors[f"{name}/{image_name}/pixel_values"] = pixels
            print(f"{name}/{image_name}: {image.size[0]}x{image.size[1]} -> {tuple(pixels.shape)}")
    metadata = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pillow": PIL.__version__,
        "processor_class": f"{cls.__module__}.{cls.__name__}",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    try:
        import torchvision
        metadata["torchvision"] = torchvision.__version__
    except ImportError:
        metadata["torchvision"] = "absent"
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(args.out, "reference.safetensors"), metadata=metadata)
    print(json.dumps(metadata))


if __name__ == "__main__":
    main()
