#!/usr/bin/env python3
"""gRPC health check for rainserve-server (the container images' HEALTHCHECK).

    python3 deploy/healthcheck.py [--target 127.0.0.1:50051]
                                  [--service rainserve.v1.Generation] [--timeout 3]

Calls grpc.health.v1.Health/Check and exits 0 when the service is SERVING,
1 otherwise (NOT_SERVING, unknown service, no answer). It prints the status.

Why this script: Debian 12 packages neither grpc-health-probe nor Python
health stubs, and the CLI in tools/ has no health command. Debian's
python3-grpcio is enough, because the two health messages are tiny: the
request is one string field (service = 1) and the response one enum field
(status = 1), so they are encoded here by hand instead of generating stubs
at image build time. Kubernetes needs none of this: its native `grpc:` probe
calls the same method (deploy/k8s/).
"""

import argparse
import sys

import grpc

SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def encode_varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_request(service):
    """HealthCheckRequest{service}: field 1, wire type 2 (length-delimited)."""
    name = service.encode("utf-8")
    return (b"\x0a" + encode_varint(len(name)) + name) if name else b""


def decode_status(response):
    """HealthCheckResponse.status (field 1, varint); 0 (UNKNOWN) when absent."""
    i, status = 0, 0
    while i < len(response):
        key = response[i]
        i += 1
        if key & 0x07 != 0:  # only varint fields are expected in this message
            raise ValueError(f"unexpected wire type in health response: {response!r}")
        value, shift = 0, 0
        while True:
            byte = response[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if key >> 3 == 1:
            status = value
    return status


def check(target, service, timeout):
    """Returns (exit code, status text)."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/grpc.health.v1.Health/Check")
        try:
            response = call(encode_request(service), timeout=timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return 1, "SERVICE_UNKNOWN"
            return 1, f"{e.code().name}: {e.details()}"
    status = decode_status(response)
    return (0 if status == 1 else 1), SERVING_STATUS.get(status, str(status))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="gRPC address")
    parser.add_argument("--service", default="rainserve.v1.Generation",
                        help='health service name ("" = the whole server)')
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds")
    args = parser.parse_args()
    code, text = check(args.target, args.service, args.timeout)
    print(f"{args.service or '(server)'}: {text}")
    return code


if __name__ == "__main__":
    sys.exit(main())
