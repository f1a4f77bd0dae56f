#!/usr/bin/env python3
"""Example RainServe client in Python (grpcio + protobuf).

Generates one video (or image) and writes it to a file:

    PYTHONPATH=build/examples/python/gen \
      python3 examples/python/rainserve_client.py --target 127.0.0.1:50051 \
        --prompt "a lighthouse in a storm" --frames 17 --sparsity 0.5 --out storm.mp4

The stubs (rainserve/v1/*_pb2*.py) are generated from proto/ at build time
into build/examples/python/gen. `--token` sends a bearer token.
"""

import argparse
import hashlib
import sys

import grpc

from rainserve.v1 import generation_pb2, generation_pb2_grpc, models_pb2, models_pb2_grpc
from rainserve.v1 import sparse_attention_pb2


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
    return request


def generate(stub, request, metadata, timeout=None):
    """Runs one job; returns (artifacts {index: (info, bytes)}, result, events)."""
    headers, data, result, events = {}, {}, None, []
    for event in stub.Generate(request, metadata=metadata, timeout=timeout):
        events.append(event)
        kind = event.WhichOneof("event")
        if kind == "progress" and event.progress.stage == "denoise":
            p = event.progress
            print(f"\rdenoise {p.step}/{p.total_steps}", end="", file=sys.stderr, flush=True)
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
            raise RuntimeError(f"job failed: {event.failed.code} {event.failed.message}")
    print(file=sys.stderr)
    artifacts = {}
    for index, info in headers.items():
        blob = bytes(data[index])
        if len(blob) != info.size_bytes or hashlib.sha256(blob).hexdigest() != info.sha256:
            raise RuntimeError(f"artifact {index}: size or sha256 does not match its header")
        artifacts[index] = (info, blob)
    return artifacts, result, events


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--token")
    parser.add_argument("--model", default="wan-tiny")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--fps", type=int)
    parser.add_argument("--format", choices=["png", "mp4", "raw", "latents"])
    parser.add_argument("--sparsity", type=float)
    parser.add_argument("--sink-frames", type=int)
    parser.add_argument("--out", default="output")
    parser.add_argument("--list-models", action="store_true")
    args = parser.parse_args()

    metadata = [("authorization", f"Bearer {args.token}")] if args.token else None
    with grpc.insecure_channel(args.target) as channel:
        if args.list_models:
            models = models_pb2_grpc.ModelsStub(channel).List(models_pb2.ListModelsRequest(),
                                                              metadata=metadata)
            for m in models.models:
                print(m.name, models_pb2.ModelState.Name(m.state), m.device, m.dtype)
            return 0
        stub = generation_pb2_grpc.GenerationStub(channel)
        artifacts, result, _ = generate(stub, build_request(args), metadata)
    for index, (info, blob) in sorted(artifacts.items()):
        path = args.out if len(artifacts) == 1 else f"{args.out}-{index}"
        with open(path, "wb") as f:
            f.write(blob)
        print(f"{path}: {info.mime_type} {info.width}x{info.height}x{info.frames} "
              f"{len(blob)} bytes sha256 {info.sha256}")
    print(f"realized sparsity {result.realized_sparsity:.3f}, "
          f"denoise {result.timings.denoise.ToTimedelta().total_seconds():.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
