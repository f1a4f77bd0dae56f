#!/usr/bin/env python3
"""Example RainServe client in Python (grpcio + protobuf).

Generates one video (or image) and writes it to a file, or lists the models:

    scripts/python-client.sh --prompt "a lighthouse in a storm" --frames 17 \\
        --sparsity 0.5 --out storm
    scripts/python-client.sh --model wan-i2v --image boat.jpg --prompt "it sails away"
    scripts/python-client.sh --list-models

scripts/python-client.sh picks a python3 that has grpcio and puts the stubs
(rainserve/v1/*_pb2*.py, generated from proto/ at build time into
build/examples/python/gen) on PYTHONPATH. `--out` is a path; the format's
extension (.mp4, .png, ...) is added when it is missing, "-<index>" before it
when there are several artifacts, as in rainserve-cli. Progress is a bar on a
terminal and one line per event otherwise. Exit codes: 0 success, 1 the call
or the job failed (printed as CODE: message), 2 bad usage.
"""

import argparse
import hashlib
import math
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


def main(argv=None):
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
