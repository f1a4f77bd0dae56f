#!/usr/bin/env python3
"""Example RainServe client in Python (grpcio + protobuf).

Generates one video (or image) and writes it to a file, or lists the models:

    scripts/python-client.sh --prompt "a lighthouse in a storm" --frames 17 \\
        --sparsity 0.5 --out storm
    scripts/python-client.sh --model wan-i2v --image boat.jpg --prompt "it sails away"
    scripts/python-client.sh --list-models
    scripts/python-client.sh compare --prompt "a lighthouse" --seed 7 \\
        --settings "sparsity=0.8,sink=1;sparsity=0.9" --out cmp

scripts/python-client.sh picks a python3 that has grpcio and puts the stubs
(rainserve/v1/*_pb2*.py, generated from proto/ at build time into
build/examples/python/gen) on PYTHONPATH. `--out` is a path; the format's
extension (.mp4, .png, ...) is added when it is missing, "-<index>" before it
when there are several artifacts, as in rainserve-cli. Progress is a bar on a
terminal and one line per event otherwise. Exit codes: 0 success, 1 the call
or the job failed (printed as CODE: message), 2 bad usage.

`compare` runs one prompt and seed at dense attention and at each setting of
--settings and prints the table rainserve-cli compare prints (PSNR and SSIM
against dense, requested and realized sparsity, stage times), also written to
OUT/compare.json. PSNR is pure Python; SSIM needs numpy (without it the SSIM
column says n/a). The labelled side-by-side video is rainserve-cli's alone.
"""

import argparse
import hashlib
import json
import math
import os
import sys
import time

import grpc

from rainserve.v1 import generation_pb2, generation_pb2_grpc, models_pb2, models_pb2_grpc
from rainserve.v1 import sparse_attention_pb2

CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def status_text(code, message):
    """'NOT_FOUND: job x not found' for a gRPC status code (int or grpc.StatusCode)."""
    if isinstance(code, grpc.StatusCode):
        code = code.value[0]
    return f"{CODE_NAMES.get(code, f'CODE_{code}')}: {message}"


def extension(info):
    if info.mime_type == "image/png":
        return ".png"
    if info.mime_type == "video/mp4":
        return ".mp4"
    return ".f32" if info.dtype == "float32" else ".rgb"


def artifact_path(out, ext, index, count):
    """Where artifact `index` of `count` goes for --out `out` (rainserve-cli's rule)."""
    stem = out[: -len(ext)] if len(out) > len(ext) and out.endswith(ext) else out
    if count > 1:
        stem += f"-{index}"
    return stem + ext


def build_request(args):
    request = generation_pb2.GenerateRequest(
        model=args.model, prompt=args.prompt, negative_prompt=args.negative_prompt
    )
    for field in ("seed", "steps", "width", "height", "fps"):
        value = getattr(args, field)
        if value is not None:
            setattr(request, field, value)
    if args.frames is not None:
        request.num_frames = args.frames
    if args.timesteps:
        request.timesteps.extend(args.timesteps)
    if args.guidance is not None:
        request.guidance_scale = args.guidance
    if args.guidance_scale_2 is not None:
        request.guidance_scale_2 = args.guidance_scale_2
    if args.max_area is not None:
        request.max_area = args.max_area
    if args.image:
        # PNG or JPEG bytes as they are: the server decodes and checks them.
        with open(args.image, "rb") as f:
            request.image = f.read()
    formats = {
        "png": generation_pb2.OUTPUT_FORMAT_PNG,
        "mp4": generation_pb2.OUTPUT_FORMAT_MP4,
        "raw": generation_pb2.OUTPUT_FORMAT_RAW_RGB,
        "latents": generation_pb2.OUTPUT_FORMAT_LATENTS,
    }
    if args.format:
        request.output_format = formats[args.format]
    if args.sparsity is not None:
        request.sparse_attention.mode = sparse_attention_pb2.ATTENTION_MODE_RAINFUSION
        request.sparse_attention.sparsity = args.sparsity
    if args.kept_mass is not None:
        request.sparse_attention.mode = sparse_attention_pb2.ATTENTION_MODE_RAINFUSION_MASS
        request.sparse_attention.kept_mass = args.kept_mass
    if args.sink_frames is not None:
        request.sparse_attention.sink_frames = args.sink_frames
    if args.quality_probe is not None:
        request.sparse_attention.quality_probe.rate = args.quality_probe
    return request


def probe_text(result):
    """The quality probe's summary, or None when the result has no probe records."""
    probes = result.quality_probes
    if not probes:
        return None
    n = len(probes)
    return (f"quality probe: {n} layers of {len({p.step for p in probes})} steps, "
            f"cosine mean {sum(p.cosine for p in probes) / n:.4f} "
            f"(min {min(p.cosine for p in probes):.4f}), "
            f"rel L2 mean {sum(p.rel_l2 for p in probes) / n:.4f}, "
            f"kept mass mean {sum(p.kept_mass for p in probes) / n:.4f}")


def format_seconds(seconds):
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    total = int(seconds + 0.5)
    return f"{total // 60}m{total % 60:02d}s"


def progress_text(p, bar):
    """'denoise [####......] 3/8  elapsed 1.20s  eta 2.00s' (bar) or without the bar."""
    if p.stage != "denoise" or p.total_steps == 0:
        return f"{p.stage}..."
    text = p.stage
    if bar:
        width = 30
        done = min(width, width * p.step // p.total_steps)
        text += " [" + "#" * done + "." * (width - done) + "]"
    text += f" {p.step}/{p.total_steps}  elapsed {format_seconds(p.elapsed.ToTimedelta().total_seconds())}"
    if p.step < p.total_steps:
        text += f"  eta {format_seconds(p.eta.ToTimedelta().total_seconds())}"
    return text


class Progress:
    """A bar rewritten in place on a terminal; one line per event otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.stage = None  # stage of the transient line on screen

    def event(self, p):
        text = progress_text(p, self.tty)
        if not self.tty:
            print(text, file=self.stream, flush=True)
            return
        if self.stage is not None and self.stage != p.stage:
            print(file=self.stream)
        print("\r\033[K" + text, end="", file=self.stream, flush=True)
        self.stage = p.stage

    def finish(self):
        """Ends the transient line, keeping the last bar on screen."""
        if self.stage is not None:
            print(file=self.stream, flush=True)
            self.stage = None

    def note(self, line):
        self.finish()
        print(line, file=self.stream, flush=True)


class JobFailed(Exception):
    pass


def generate(stub, request, metadata, timeout=None, progress=None):
    """Runs one job; returns (artifacts {index: (info, bytes)}, result, events)."""
    progress = progress or Progress()
    headers, data, result, events = {}, {}, None, []
    for event in stub.Generate(request, metadata=metadata, timeout=timeout):
        events.append(event)
        kind = event.WhichOneof("event")
        if kind == "accepted":
            progress.note(f"job {event.job_id} accepted (seed {event.accepted.seed})")
        elif kind == "queued":
            progress.note(f"queued at position {event.queued.position} of {event.queued.depth}")
        elif kind == "started":
            progress.note(f"started on {event.started.device}")
        elif kind == "progress":
            progress.event(event.progress)
        elif kind == "artifact_header":
            headers[event.artifact_header.info.index] = event.artifact_header.info
            data[event.artifact_header.info.index] = bytearray()
        elif kind == "artifact_chunk":
            chunk = event.artifact_chunk
            buf = data[chunk.index]
            if chunk.offset != len(buf):
                raise RuntimeError(f"artifact {chunk.index}: chunk at {chunk.offset}, have {len(buf)}")
            buf.extend(chunk.data)
        elif kind == "completed":
            result = event.completed.result
        elif kind == "failed":
            raise JobFailed(status_text(event.failed.code, event.failed.message))
    progress.finish()
    artifacts = {}
    for index, info in headers.items():
        blob = bytes(data[index])
        if len(blob) != info.size_bytes or hashlib.sha256(blob).hexdigest() != info.sha256:
            raise RuntimeError(f"artifact {index}: size or sha256 does not match its header")
        artifacts[index] = (info, blob)
    return artifacts, result, events


def write_artifacts(artifacts, out):
    """Writes each artifact under the --out rule; returns the paths."""
    paths = []
    for index, (info, blob) in sorted(artifacts.items()):
        path = artifact_path(out, extension(info), index, len(artifacts))
        with open(path, "wb") as f:
            f.write(blob)
        print(f"wrote {path}  ({info.mime_type}, {info.width}x{info.height}x{info.frames}, "
              f"{len(blob)} bytes, sha256 {info.sha256})")
        paths.append(path)
    return paths


def unsigned(bits):
    """argparse type: an integer in [0, 2**bits - 1] (the proto field's range)."""
    top = 2 ** bits - 1

    def parse(text):
        if not text.isdigit() or int(text) > top:
            raise argparse.ArgumentTypeError(f"expected an integer in [0, {top}], got '{text}'")
        return int(text)
    return parse


def number(text):
    """argparse type: a finite number."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'")
    return value


def number_list(text):
    """argparse type: comma-separated finite numbers, at most 1000 (--timesteps)."""
    parts = text.split(",")
    if len(parts) > 1000:
        raise argparse.ArgumentTypeError("expected at most 1000 numbers")
    return [number(part) for part in parts]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], allow_abbrev=False,
        epilog="Exit codes: 0 success, 1 the call or the job failed, 2 bad usage.")
    parser.add_argument("--target", default="127.0.0.1:50051", help="server address")
    parser.add_argument("--token", help="bearer token")
    parser.add_argument("--list-models", action="store_true",
                        help="list the models and their state, then exit")
    parser.add_argument("--model", default="wan-tiny")
    parser.add_argument("--prompt", help="what to generate (required unless --list-models)")
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--seed", type=unsigned(64))
    parser.add_argument("--steps", type=unsigned(32))
    parser.add_argument("--timesteps", type=number_list, metavar="T1,T2,...",
                        help="explicit schedule, strictly decreasing, e.g. 1000,750,500,250 "
                             "(few-step distilled checkpoints; sets the step count)")
    parser.add_argument("--guidance", type=number,
                        help="guidance scale (two-expert models: the high-noise expert's)")
    parser.add_argument("--guidance-scale-2", type=number,
                        help="two-expert models: the low-noise expert's guidance scale")
    parser.add_argument("--image", help="input image, PNG or JPEG (image-to-video models)")
    parser.add_argument("--max-area", type=unsigned(32),
                        help="with --image and no --width/--height: the output's area in pixels")
    parser.add_argument("--width", type=unsigned(32))
    parser.add_argument("--height", type=unsigned(32))
    parser.add_argument("--frames", type=unsigned(32))
    parser.add_argument("--fps", type=unsigned(32))
    parser.add_argument("--format", choices=["png", "mp4", "raw", "latents"])
    parser.add_argument("--sparsity", type=number)
    parser.add_argument("--kept-mass", type=number,
                        help="rainfusion_mass mode: pooled-softmax mass each query block keeps")
    parser.add_argument("--sink-frames", type=unsigned(32))
    parser.add_argument("--quality-probe", type=number, metavar="RATE",
                        help="fraction of sparse steps whose attention is compared with dense")
    parser.add_argument("--out", default="output",
                        help="output path; the format's extension is added when missing")
    parser.add_argument("--timeout", type=number, help="deadline for the call in seconds")
    args = parser.parse_args(argv)
    if not args.list_models and not args.prompt:
        parser.error("--prompt is required (or --list-models)")
    return args


# ---------------------------------------------------------------- compare

SETTING_KEYS = "mode, sparsity, kept_mass, sink, warmup, window, mask_refresh"


def _setting_value(key, value, sa):
    """Applies one key=value of a --settings entry to the SparseAttention `sa`."""
    def uint(text):
        if not text.isdigit() or int(text) > 2 ** 32 - 1:
            raise ValueError(f"{key} expects an integer in [0, 4294967295], got '{text}'")
        return int(text)
    if key == "mode":
        modes = {"dense": sparse_attention_pb2.ATTENTION_MODE_DENSE,
                 "rainfusion": sparse_attention_pb2.ATTENTION_MODE_RAINFUSION,
                 "rainfusion_mass": sparse_attention_pb2.ATTENTION_MODE_RAINFUSION_MASS}
        if value not in modes:
            raise ValueError(f"mode must be one of dense|rainfusion|rainfusion_mass, got '{value}'")
        sa.mode = modes[value]
    elif key in ("sparsity", "kept_mass"):
        try:
            setattr(sa, key, number(value))
        except argparse.ArgumentTypeError:
            raise ValueError(f"{key} expects a number, got '{value}'") from None
    elif key == "sink":
        sa.sink_frames = uint(value)
    elif key == "warmup":
        sa.dense_warmup_steps = uint(value)
    elif key == "window":
        sides = value.split("x")
        if len(sides) != 3 or not all(p.isdigit() and int(p) < 2 ** 32 for p in sides):
            raise ValueError(f"window expects TxHxW (three integers), got '{value}'")
        sa.window.t, sa.window.h, sa.window.w = (int(p) for p in sides)
    elif key == "mask_refresh":
        refresh = {"every_layer": sparse_attention_pb2.MASK_REFRESH_EVERY_LAYER,
                   "per_step": sparse_attention_pb2.MASK_REFRESH_PER_STEP}
        if value not in refresh:
            raise ValueError(f"mask_refresh must be one of every_layer|per_step, got '{value}'")
        sa.mask_refresh = refresh[value]
    else:
        raise ValueError(f"unknown key '{key}' (keys: {SETTING_KEYS})")


def parse_settings(text, limit=8):
    """--settings as rainserve-cli reads it: [(label, SparseAttention)]; ValueError
    naming the setting and the key."""
    if not text.strip():
        raise ValueError("--settings is empty")
    parts = [p.strip() for p in text.split(";")]
    if len(parts) > limit:
        raise ValueError(f"--settings lists {len(parts)} settings, at most {limit}")
    settings = []
    for i, part in enumerate(parts, 1):
        sa = sparse_attention_pb2.SparseAttention()
        try:
            if not part:
                raise ValueError("empty (expected key=value pairs)")
            seen = set()
            for pair in (p.strip() for p in part.split(",")):
                if "=" not in pair:
                    raise ValueError(f"expected key=value, got '{pair}' (keys: {SETTING_KEYS})")
                key, value = (x.strip() for x in pair.split("=", 1))
                if key in seen:
                    raise ValueError(f"{key} given twice")
                seen.add(key)
                _setting_value(key, value, sa)
        except ValueError as e:
            raise ValueError(f"--settings: setting {i} '{part}': {e}") from None
        if sa.mode == sparse_attention_pb2.ATTENTION_MODE_UNSPECIFIED:
            sa.mode = sparse_attention_pb2.ATTENTION_MODE_RAINFUSION
        settings.append((part, sa))
    return settings


def psnr(ref, test):
    """PSNR in dB of two equal-length byte strings; inf when equal (pure Python)."""
    total = sum((a - b) * (a - b) for a, b in zip(ref, test))
    return math.inf if total == 0 else 10 * math.log10(255.0 ** 2 / (total / len(ref)))


def ssim_luma(ref, test, width, height):
    """SSIM of two RGB frames on BT.601 luma, 11x11 Gaussian window (sigma 1.5),
    C1 = (0.01*255)^2, C2 = (0.03*255)^2, over the windows inside the frame, as
    rainserve-cli computes it. Needs numpy; None without it."""
    try:
        import numpy as np
    except ImportError:
        return None
    def luma(rgb):
        a = np.frombuffer(rgb, dtype=np.uint8).reshape(height, width, 3).astype(np.float64)
        y = 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]
        return y.astype(np.float32).astype(np.float64)
    taps = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
    taps /= taps.sum()
    def blur(p):  # "valid" separable filter: rows, then columns
        rows = sum(taps[k] * p[:, k:k + width - 10] for k in range(11))
        return sum(taps[k] * rows[k:k + height - 10, :] for k in range(11))
    x, y = luma(ref), luma(test)
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def compare_clips(ref, test, width, height, frames):
    """Per-clip PSNR (mean over differing frames; inf when all are equal) and SSIM
    (mean over frames; None without numpy)."""
    size = width * height * 3
    psnrs, ssims, identical = [], [], 0
    for f in range(frames):
        a, b = ref[f * size:(f + 1) * size], test[f * size:(f + 1) * size]
        p = psnr(a, b)
        if math.isinf(p):
            identical += 1
        else:
            psnrs.append(p)
        ssims.append(ssim_luma(a, b, width, height))
    return {"psnr_db": sum(psnrs) / len(psnrs) if psnrs else math.inf,
            "ssim": None if None in ssims else sum(ssims) / len(ssims),
            "identical_frames": identical}


def compare_table(rows):
    """rainserve-cli compare's table."""
    cells = [["SETTING", "PSNR_DB", "SSIM", "SPARSITY", "REALIZED", "DENOISE", "TOTAL"]]
    for r in rows:
        p = r["psnr_db"]
        cells.append([r["setting"], "inf" if p == "inf" else f"{p:.2f}",
                      "n/a" if r["ssim"] is None else f"{r['ssim']:.4f}",
                      f"{r['requested_sparsity']:.3f}", f"{r['realized_sparsity']:.3f}",
                      format_seconds(r["denoise_seconds"]), format_seconds(r["total_seconds"])])
    widths = [max(len(row[c]) for row in cells) for c in range(len(cells[0]))]
    return "".join("  ".join(v.ljust(widths[c]) if c == 0 else v.rjust(widths[c])
                             for c, v in enumerate(row)) + "\n" for row in cells)


def parse_compare_args(argv):
    parser = argparse.ArgumentParser(
        prog="rainserve_client.py compare", allow_abbrev=False,
        description="Runs one prompt and seed at dense attention and at each --settings entry "
                    "(raw RGB frames) and prints PSNR and SSIM against dense (SSIM needs numpy: "
                    "n/a without it), sparsity and times; writes OUT/compare.json.")
    parser.add_argument("--target", default="127.0.0.1:50051", help="server address")
    parser.add_argument("--token", help="bearer token")
    parser.add_argument("--model", default="wan-tiny")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--seed", type=unsigned(64))
    for flag in ("--steps", "--width", "--height", "--frames", "--fps"):
        parser.add_argument(flag, type=unsigned(32))
    parser.add_argument("--guidance", type=number)
    parser.add_argument("--settings", required=True,
                        help="';'-separated settings of ','-separated key=value "
                             f"(keys: {SETTING_KEYS}), e.g. \"sparsity=0.8,sink=1;sparsity=0.9\"")
    parser.add_argument("--out", default="compare", help="folder for compare.json")
    parser.add_argument("--timeout", type=number, help="deadline for each call in seconds")
    args = parser.parse_args(argv)
    try:
        args.parsed_settings = parse_settings(args.settings)
    except ValueError as e:
        parser.error(str(e))
    return args


def compare_main(argv):
    args = parse_compare_args(argv)
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else None
    base = generation_pb2.GenerateRequest(model=args.model, prompt=args.prompt,
                                          negative_prompt=args.negative_prompt,
                                          output_format=generation_pb2.OUTPUT_FORMAT_RAW_RGB)
    for field in ("seed", "steps", "width", "height", "fps"):
        if getattr(args, field) is not None:
            setattr(base, field, getattr(args, field))
    if args.frames is not None:
        base.num_frames = args.frames
    if args.guidance is not None:
        base.guidance_scale = args.guidance
    dense = sparse_attention_pb2.SparseAttention(mode=sparse_attention_pb2.ATTENTION_MODE_DENSE)
    runs = []
    try:
        with grpc.insecure_channel(args.target) as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            for label, sa in [("dense", dense)] + args.parsed_settings:
                request = generation_pb2.GenerateRequest()
                request.CopyFrom(base)
                if runs:  # every setting runs with the dense run's seed
                    request.seed = runs[0][2].applied.seed
                request.sparse_attention.CopyFrom(sa)
                print(f"{label}: running...", file=sys.stderr)
                artifacts, result, _ = generate(stub, request, metadata, args.timeout)
                info, blob = artifacts[0]
                runs.append((label, (info.width, info.height, info.frames), result, blob))
    except grpc.RpcError as e:
        print(status_text(e.code(), e.details()), file=sys.stderr)
        return 1
    except JobFailed as e:
        print(f"job failed: {e}", file=sys.stderr)
        return 1
    return write_comparison(args, runs)


def write_comparison(args, runs):
    """The rows against runs[0], the table on stdout and OUT/compare.json."""
    (width, height, frames), ref = runs[0][1], runs[0][3]
    rows = []
    for label, size, result, blob in runs:
        if size != (width, height, frames):
            print(f"'{label}' returned {size}, the dense run {(width, height, frames)}",
                  file=sys.stderr)
            return 1
        q = compare_clips(ref, blob, width, height, frames)
        rows.append({"setting": label,
                     "psnr_db": "inf" if math.isinf(q["psnr_db"]) else q["psnr_db"],
                     "ssim": q["ssim"], "identical_frames": q["identical_frames"],
                     "requested_sparsity": result.requested_sparsity,
                     "realized_sparsity": result.realized_sparsity,
                     "denoise_seconds": result.timings.denoise.ToTimedelta().total_seconds(),
                     "total_seconds": result.timings.total.ToTimedelta().total_seconds()})
    applied = runs[0][2].applied
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "compare.json"), "w") as f:
        json.dump({"model": args.model, "prompt": args.prompt, "seed": applied.seed,
                   "width": width, "height": height, "frames": frames, "steps": applied.steps,
                   "rows": rows}, f, indent=2)
    print(compare_table(rows) + f"wrote {os.path.join(args.out, 'compare.json')}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # `compare` may follow the connection flags: [--target T] [--token X] compare ...
    connection = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    connection.add_argument("--target")
    connection.add_argument("--token")
    _, rest = connection.parse_known_args(argv)
    if rest and rest[0] == "compare":
        at = argv.index("compare")
        return compare_main(argv[:at] + argv[at + 1:])
    args = parse_args(argv)
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else None
    start = time.monotonic()
    try:
        with grpc.insecure_channel(args.target) as channel:
            if args.list_models:
                models = models_pb2_grpc.ModelsStub(channel).List(
                    models_pb2.ListModelsRequest(), metadata=metadata, timeout=args.timeout)
                for m in models.models:
                    print(m.name, models_pb2.ModelState.Name(m.state), ",".join(m.tasks) or "-",
                          m.device, m.dtype)
                return 0
            stub = generation_pb2_grpc.GenerationStub(channel)
            artifacts, result, _ = generate(stub, build_request(args), metadata, args.timeout)
    except grpc.RpcError as e:
        print(status_text(e.code(), e.details()), file=sys.stderr)
        return 1
    except OSError as e:
        print(f"--image: {e}", file=sys.stderr)
        return 2
    except JobFailed as e:
        print(f"job failed: {e}", file=sys.stderr)
        return 1
    write_artifacts(artifacts, args.out)
    print(f"realized sparsity {result.realized_sparsity:.3f}, "
          f"denoise {result.timings.denoise.ToTimedelta().total_seconds():.2f} s, "
          f"client {time.monotonic() - start:.2f} s")
    if probe_text(result):
        print(probe_text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
