"""Pillow's Image.resize outputs for tests/pipelines/image_ops_test.cc.

    python3 tools/reference/pillow_resize_reference.py > tests/pipelines/data/pillow_resize.json

Resizes small RGB images with every convolution filter (LANCZOS, BILINEAR,
BICUBIC, BOX, HAMMING) to sizes that reduce, enlarge, keep one axis and mix
them, and records Pillow's bytes; larger cases (a CLIP-style resize to a
224 shortest edge, a Wan-style Lanczos resize) record an FNV-1a 64 hash of
the bytes instead. Inputs come from the formula Pattern() below, which
image_ops_test.cc computes the same way, so no input bytes are stored.
Needs only Pillow (and Python's standard library).
"""
import json

import PIL
from PIL import Image

FILTERS = {"lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def pattern(width, height, seed):
    """RGB bytes [height][width][3]: a gradient with texture and hard edges."""
    out = bytearray()
    for y in range(height):
        for x in range(width):
            for c in range(3):
                v = (x * (7 + seed) + y * 13 + c * 50 + ((x * y + seed) % 17) * 9) % 256
                if (x // 3 + y // 2 + c) % 5 == 0:
                    v = 255 - v
                out.append(v)
    return bytes(out)


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def case(name, width, height, seed, out_w, out_h, full):
    img = Image.frombytes("RGB", (width, height), pattern(width, height, seed))
    out = img.resize((out_w, out_h), resample=FILTERS[name]).tobytes()
    row = {"filter": FILTERS[name], "width": width, "height": height, "seed": seed,
           "out_width": out_w, "out_height": out_h}
    if full:
        row["bytes"] = out.hex()
    else:
        row["fnv1a64"] = fnv1a64(out)
    return row


def main():
    small = [(13, 9, 0), (7, 11, 3), (1, 5, 1)]
    targets = [(5, 4), (13, 9), (20, 14), (13, 4), (6, 9), (1, 1), (29, 3), (2, 17)]
    cases = []
    for name in FILTERS:
        for (w, h, seed) in small:
            for (ow, oh) in targets:
                if (ow, oh) == (w, h):
                    continue
                cases.append(case(name, w, h, seed, ow, oh, full=True))
    # CLIP's resize of a 320x240 image to shortest edge 224, and of a
    # portrait one; a Wan-style Lanczos resize to 832x480.
    cases.append(case("bicubic", 320, 240, 5, 298, 224, full=False))
    cases.append(case("bicubic", 181, 403, 2, 224, 498, full=False))
    cases.append(case("lanczos", 640, 360, 4, 832, 480, full=False))
    cases.append(case("lanczos", 1000, 700, 1, 416, 240, full=False))
    cases.append(case("bilinear", 500, 301, 6, 224, 135, full=False))
    print(json.dumps({"pillow_version": PIL.__version__, "cases": cases}, indent=0))


if __name__ == "__main__":
    main()
