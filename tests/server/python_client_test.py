#!/usr/bin/env python3
"""The Python example client (examples/python/rainserve_client.py) against the
real rainserve-server binary serving the embedded wan-tiny model, and the
README's way to run it (scripts/python-client.sh).

    PYTHONPATH=<build>/examples/python/gen:examples/python RAINSERVE_BUILD_DIR=<build> \
      /usr/bin/python3 tests/server/python_client_test.py <build>/server/rainserve-server

ctest runs it as python_client_test. Standard library and grpc only.
"""

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest
import zlib

import grpc

import rainserve_client
from rainserve.v1 import generation_pb2, generation_pb2_grpc, models_pb2, models_pb2_grpc
from rainserve.v1 import sparse_attention_pb2

SERVER_BINARY = None  # set from the command line
SOURCE_DIR = os.environ.get(
    "RAINSERVE_SOURCE_DIR",
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
STEPS = 2

CONFIG = """\
server:
  listen_address: "127.0.0.1:0"
  metrics_address: "127.0.0.1:0"
  drain_timeout_seconds: 30
models:
  - name: wan-tiny
    path: {model}
    device: cpu
    threads: 2
    defaults:
      width: 64
      height: 64
      num_frames: 5
      steps: {steps}
    limits:
      max_width: 512
      max_height: 512
      max_frames: 33
      max_steps: 50
"""


def client_args(**fields):
    """What rainserve_client's argument parser would produce."""
    args = dict(model="wan-tiny", prompt="a paper boat", negative_prompt="", seed=11,
                steps=None, guidance=None, width=None, height=None, frames=None, fps=None,
                format=None, sparsity=None, sink_frames=None, image=None, guidance_scale_2=None,
                max_area=None, quality_probe=None, kept_mass=None, timesteps=None)
    args.update(fields)
    return argparse.Namespace(**args)


class PythonClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory(prefix="rainserve-py-")
        config = os.path.join(cls.dir.name, "server.yaml")
        with open(config, "w") as f:
            f.write(CONFIG.format(model=os.path.join(SOURCE_DIR, "models", "wan-tiny"),
                                  steps=STEPS))
        port_file = os.path.join(cls.dir.name, "ports.json")
        cls.stderr = open(os.path.join(cls.dir.name, "stderr.log"), "w+")
        cls.server = subprocess.Popen(
            [SERVER_BINARY, "--config", config, "--port-file", port_file],
            stdout=subprocess.DEVNULL, stderr=cls.stderr)
        deadline = time.monotonic() + 30
        while not os.path.exists(port_file):
            if cls.server.poll() is not None or time.monotonic() > deadline:
                cls.tearDownClass()
                raise RuntimeError("the server wrote no port file:\n" + cls.server_log())
            time.sleep(0.05)
        with open(port_file) as f:
            port = json.load(f)["grpc_port"]
        cls.target = f"127.0.0.1:{port}"
        cls.channel = grpc.insecure_channel(cls.target)
        cls.stub = generation_pb2_grpc.GenerationStub(cls.channel)
        cls.wait_for_model()

    @classmethod
    def wait_for_model(cls):
        models = models_pb2_grpc.ModelsStub(cls.channel)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                listed = models.List(models_pb2.ListModelsRequest(), timeout=5)
                states = [m.state for m in listed.models]
                if states == [models_pb2.MODEL_STATE_READY]:
                    return
                if models_pb2.MODEL_STATE_FAILED in states:
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise RuntimeError("wan-tiny did not become READY:\n" + cls.server_log())

    @classmethod
    def server_log(cls):
        cls.stderr.seek(0)
        return cls.stderr.read()

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "channel", None) is not None:
            cls.channel.close()
        if cls.server.poll() is None:
            cls.server.kill()
            cls.server.wait()
        cls.stderr.close()
        cls.dir.cleanup()

    def generate(self, **fields):
        request = rainserve_client.build_request(client_args(**fields))
        artifacts, result, events = rainserve_client.generate(self.stub, request, None, timeout=120)
        self.assertEqual(len(artifacts), 1)
        info, blob = artifacts[0]
        self.assertEqual(hashlib.sha256(blob).hexdigest(), info.sha256)
        self.assertEqual(len(blob), info.size_bytes)
        denoise = [e for e in events
                   if e.WhichOneof("event") == "progress" and e.progress.stage == "denoise"]
        self.assertEqual(len(denoise), result.applied.steps)
        return info, blob, result

    def test_1_image_is_a_png_of_the_requested_size(self):
        info, png, result = self.generate(frames=1, width=80, height=48)
        self.assertEqual(info.mime_type, "image/png")
        self.assertEqual(png[:8], b"\x89PNG\r\n\x1a\n")
        self.assertEqual(png[12:16], b"IHDR")
        self.assertEqual(struct.unpack(">II", png[16:24]), (80, 48))
        self.assertEqual(result.applied.steps, STEPS)

    def test_2_video_is_an_mp4(self):
        info, mp4, result = self.generate(frames=5, steps=3)
        self.assertEqual(info.mime_type, "video/mp4")
        self.assertEqual(mp4[4:8], b"ftyp")
        self.assertEqual((info.width, info.height, info.frames), (64, 64, 5))
        self.assertEqual(result.applied.steps, 3)

    def run_main(self, *argv, tty=False):
        """rainserve_client.main(argv) in-process: (exit code, stdout, stderr)."""
        class Terminal(io.StringIO):
            def isatty(self):
                return True
        out, err = io.StringIO(), (Terminal() if tty else io.StringIO())
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = rainserve_client.main(["--target", self.target, *argv])
            except SystemExit as e:
                code = e.code
        return code, out.getvalue(), err.getvalue()

    def test_3_out_gets_the_extension_only_when_missing(self):
        with tempfile.TemporaryDirectory() as d:
            code, out, err = self.run_main("--prompt", "a boat", "--out", f"{d}/named.mp4")
            self.assertEqual(code, 0, err)
            self.assertEqual(os.listdir(d), ["named.mp4"])
            self.assertIn(f"wrote {d}/named.mp4  (video/mp4", out)
            code, out, err = self.run_main("--prompt", "a boat", "--frames", "1",
                                           "--out", f"{d}/still")
            self.assertEqual(code, 0, err)
            self.assertTrue(os.path.exists(f"{d}/still.png"), os.listdir(d))

    def test_4_progress_is_one_line_per_event_when_not_a_terminal(self):
        with tempfile.TemporaryDirectory() as d:
            code, _, err = self.run_main("--prompt", "a boat", "--steps", "2", "--out", f"{d}/p")
        self.assertEqual(code, 0, err)
        self.assertNotIn("\r", err)
        lines = err.splitlines()
        self.assertIn("denoise 1/2", [line[:11] for line in lines], err)
        self.assertIn("denoise 2/2", [line[:11] for line in lines], err)

    def test_5_progress_is_a_bar_with_elapsed_and_eta_on_a_terminal(self):
        with tempfile.TemporaryDirectory() as d:
            code, _, err = self.run_main("--prompt", "a boat", "--steps", "2",
                                         "--out", f"{d}/t", tty=True)
        self.assertEqual(code, 0, err)
        self.assertIn("\r\033[Kdenoise [" + "#" * 15 + "." * 15 + "] 1/2  elapsed ", err)
        self.assertIn(" eta ", err)
        self.assertIn("\r\033[Kdenoise [" + "#" * 30 + "] 2/2  elapsed ", err)

    def test_6_errors_print_the_code_by_name(self):
        code, _, err = self.run_main("--prompt", "a boat", "--width", "8")
        self.assertEqual(code, 1)
        self.assertIn("INVALID_ARGUMENT: width must be", err)

    def test_7_prompt_is_required_only_to_generate_and_numbers_are_checked(self):
        code, _, err = self.run_main()
        self.assertEqual(code, 2)
        self.assertIn("--prompt is required", err)
        code, _, err = self.run_main("--prompt", "x", "--width", "4294967312")
        self.assertEqual(code, 2)
        self.assertIn("expected an integer in [0, 4294967295], got '4294967312'", err)
        code, _, err = self.run_main("--prompt", "x", "--sparsity", "nan")
        self.assertEqual(code, 2)
        self.assertIn("expected a number, got 'nan'", err)
        code, _, err = self.run_main("--prompt", "x", "--spars", "0.9")
        self.assertEqual(code, 2)
        self.assertIn("unrecognized arguments: --spars", err)
        code, out, err = self.run_main("--list-models")
        self.assertEqual(code, 0, err)
        self.assertEqual(out, "wan-tiny MODEL_STATE_READY t2v,t2i cpu fp32\n")

    def test_7b_image_and_expert_flags_reach_the_server(self):
        # A 1x1 PNG (zlib and struct only).
        def chunk(kind, data):
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
        png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
               + chunk(b"IDAT", zlib.compress(b"\x00\x01\x02\x03")) + chunk(b"IEND", b""))
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "one.png")
            with open(path, "wb") as f:
                f.write(png)
            request = rainserve_client.build_request(
                client_args(image=path, guidance_scale_2=3.5, max_area=4096))
            self.assertEqual(request.image, png)
            self.assertEqual(request.guidance_scale_2, 3.5)
            self.assertEqual(request.max_area, 4096)
            # wan-tiny is text-to-video: the server refuses the image by name.
            code, _, err = self.run_main("--prompt", "a boat", "--image", path)
            self.assertEqual(code, 1)
            self.assertIn("INVALID_ARGUMENT: image: model 'wan-tiny' does not take an input image",
                          err)
            code, _, err = self.run_main("--prompt", "a boat", "--image", os.path.join(d, "no.png"))
            self.assertEqual(code, 2)
            self.assertIn("--image: ", err)
        code, _, err = self.run_main("--prompt", "a boat", "--guidance-scale-2", "3")
        self.assertEqual(code, 1)
        self.assertIn("INVALID_ARGUMENT: guidance_scale_2: model 'wan-tiny' has one transformer",
                      err)

    def test_7d_kept_mass_flag_selects_the_mass_mode(self):
        request = rainserve_client.build_request(client_args(kept_mass=0.9))
        self.assertEqual(request.sparse_attention.mode,
                         sparse_attention_pb2.ATTENTION_MODE_RAINFUSION_MASS)
        self.assertAlmostEqual(request.sparse_attention.kept_mass, 0.9, places=6)
        self.assertNotEqual(rainserve_client.build_request(client_args()).sparse_attention.mode,
                            sparse_attention_pb2.ATTENTION_MODE_RAINFUSION_MASS)

    def test_7e_timesteps_flag_sets_the_explicit_schedule(self):
        args = rainserve_client.parse_args(["--prompt", "x", "--timesteps", "1000,750,500,250",
                                            "--guidance", "1"])
        self.assertEqual(args.timesteps, [1000.0, 750.0, 500.0, 250.0])
        request = rainserve_client.build_request(args)
        self.assertEqual(list(request.timesteps), [1000.0, 750.0, 500.0, 250.0])
        self.assertFalse(request.HasField("steps"))
        self.assertEqual(request.guidance_scale, 1.0)
        code, _, err = self.run_main("--prompt", "x", "--timesteps", "1000,x")
        self.assertEqual(code, 2)
        self.assertIn("expected a number, got 'x'", err)

    def test_7c_quality_probe_flag_sets_the_rate_and_the_summary_reads_the_records(self):
        request = rainserve_client.build_request(client_args(quality_probe=0.5))
        self.assertEqual(request.sparse_attention.quality_probe.rate, 0.5)
        self.assertFalse(
            rainserve_client.build_request(client_args()).sparse_attention.HasField("quality_probe"))
        code, _, err = self.run_main("--prompt", "a boat", "--quality-probe", "2")
        self.assertEqual(code, 1)
        self.assertIn("INVALID_ARGUMENT: sparse_attention.quality_probe.rate", err)
        result = generation_pb2.GenerateResult()
        self.assertIsNone(rainserve_client.probe_text(result))
        for step, cosine in ((2, 0.98), (2, 0.96), (3, 0.94)):
            result.quality_probes.add(step=step, cosine=cosine, rel_l2=0.1, kept_mass=0.5)
        self.assertEqual(rainserve_client.probe_text(result),
                         "quality probe: 3 layers of 2 steps, cosine mean 0.9600 (min 0.9400), "
                         "rel L2 mean 0.1000, kept mass mean 0.5000")

    def test_8_wrapper_runs_with_a_python3_without_grpc_first_on_path(self):
        with tempfile.TemporaryDirectory() as d:
            fake = os.path.join(d, "python3")
            with open(fake, "w") as f:
                f.write("#!/bin/sh\necho 'No module named grpc' >&2\nexit 1\n")
            os.chmod(fake, 0o755)
            env = dict(os.environ, PATH=f"{d}:{os.environ['PATH']}")
            env.pop("PYTHONPATH", None)
            env.pop("RAINSERVE_PYTHON", None)
            run = subprocess.run(
                [os.path.join(SOURCE_DIR, "scripts", "python-client.sh"),
                 "--target", self.target, "--list-models"],
                env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertEqual(run.stdout, "wan-tiny MODEL_STATE_READY t2v,t2i cpu fp32\n")

    def test_8b_compare_matches_rainserve_cli(self):
        settings = "sparsity=0.8,sink=0;mode=dense"
        flags = ["--prompt", "a boat", "--seed", "7", "--steps", "2", "--width", "256",
                 "--height", "256", "--frames", "5", "--settings", settings]
        with tempfile.TemporaryDirectory() as d:
            code, out, err = self.run_main("compare", *flags, "--out", f"{d}/py")
            self.assertEqual(code, 0, err)
            with open(f"{d}/py/compare.json") as f:
                py = json.load(f)
            cli = os.path.join(os.environ.get("RAINSERVE_BUILD_DIR", "build"), "tools",
                               "rainserve-cli")
            run = subprocess.run([cli, "--target", self.target, "compare", *flags,
                                  "--out", f"{d}/cli"], capture_output=True, text=True,
                                 timeout=120)
            self.assertEqual(run.returncode, 0, run.stderr)
            with open(f"{d}/cli/compare.json") as f:
                cc = json.load(f)
        self.assertEqual([r["setting"] for r in py["rows"]], ["dense", "sparsity=0.8,sink=0",
                                                              "mode=dense"])
        self.assertEqual(py["rows"][0]["psnr_db"], "inf")
        self.assertEqual(py["rows"][2]["psnr_db"], "inf")
        self.assertIsInstance(py["rows"][1]["psnr_db"], float)
        self.assertGreater(py["rows"][1]["realized_sparsity"], 0)
        # The same pixels (same seed) give the C++ figures.
        for p_row, c_row in zip(py["rows"], cc["rows"]):
            if p_row["psnr_db"] == "inf":
                self.assertEqual(c_row["psnr_db"], "inf")
            else:
                self.assertAlmostEqual(p_row["psnr_db"], c_row["psnr_db"], places=9)
            if p_row["ssim"] is not None:  # None where numpy is missing
                self.assertAlmostEqual(p_row["ssim"], c_row["ssim"], places=9)
            self.assertEqual(p_row["realized_sparsity"], c_row["realized_sparsity"])
        # The tables agree except for the times.
        self.assertEqual([line.split()[:5] for line in out.splitlines()[:4]],
                         [line.split()[:5] for line in run.stdout.splitlines()[:4]])

    def test_8c_compare_rejects_bad_settings_naming_the_key(self):
        code, _, err = self.run_main("compare", "--prompt", "x", "--settings",
                                     "sparsity=0.8;spars=0.9")
        self.assertEqual(code, 2)
        self.assertIn("--settings: setting 2 'spars=0.9': unknown key 'spars'", err)
        code, _, err = self.run_main("compare", "--prompt", "x", "--settings", "window=2x8")
        self.assertEqual(code, 2)
        self.assertIn("--settings: setting 1 'window=2x8': window expects TxHxW", err)
        self.assertTrue(math.isinf(rainserve_client.psnr(b"\x01\x02", b"\x01\x02")))
        self.assertAlmostEqual(rainserve_client.psnr(b"\x00" * 12, b"\x05" * 12),
                               20 * math.log10(255 / 5), places=12)

    def test_8d_ssim_closed_form_and_without_numpy(self):
        flat_a, flat_b = b"\x64" * (12 * 11 * 3), b"\x6e" * (12 * 11 * 3)  # 100 and 110
        c1 = (0.01 * 255) ** 2
        ssim = rainserve_client.ssim_luma(flat_a, flat_b, 12, 11)
        if ssim is not None:  # numpy present: flat images give the luminance term alone
            self.assertAlmostEqual(ssim, (2 * 100 * 110 + c1) / (100 ** 2 + 110 ** 2 + c1),
                                   places=5)
        saved = sys.modules.get("numpy")
        sys.modules["numpy"] = None  # makes `import numpy` fail
        try:
            self.assertIsNone(rainserve_client.ssim_luma(flat_a, flat_b, 12, 11))
            q = rainserve_client.compare_clips(flat_a, flat_b, 12, 11, 1)
        finally:
            if saved is None:
                del sys.modules["numpy"]
            else:
                sys.modules["numpy"] = saved
        self.assertIsNone(q["ssim"])
        row = dict(setting="s", psnr_db=q["psnr_db"], ssim=None, requested_sparsity=0.8,
                   realized_sparsity=0.5, denoise_seconds=1, total_seconds=2)
        self.assertIn(" n/a ", rainserve_client.compare_table([row]))

    def test_9_sigterm_exits_zero(self):
        self.channel.close()
        self.__class__.channel = None
        self.server.send_signal(signal.SIGTERM)
        try:
            code = self.server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.fail("the server did not exit within 30 s of SIGTERM")
        self.assertEqual(code, 0, self.server_log())


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} <rainserve-server binary> [unittest args]")
    SERVER_BINARY = sys.argv.pop(1)
    unittest.main()
