#!/usr/bin/env python3
"""The deployment's monitoring against a real rainserve-server and a real
Prometheus: the server runs the container config
(deploy/k8s/overlays/cpu-tiny/server.yaml, the model path pointed at the
repository's models/wan-tiny, loopback ports 0), serves one sparse
generation, and then

  * a Prometheus on loopback (scrape every 1 s, with deploy/prometheus/alerts.yml
    loaded) shows the expected counts through its query API and evaluates
    every alert rule without error, none of them active;
  * every metric that deploy/grafana/rainserve.json and alerts.yml name is in
    the server's /metrics output (device memory only exists with CUDA);
  * deploy/healthcheck.py (the images' HEALTHCHECK) answers for the health
    service names the server registers.

    PYTHONPATH=<build>/examples/python/gen:tests/deploy \
      python3 tests/deploy/live_metrics_test.py <build>/server/rainserve-server

ctest runs it as deploy_live_metrics_test.
"""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

import deploy_test_util as util

SERVER_BINARY = None  # set from the command line
MODEL = "wan-tiny"
# One request whose every step is sparse: 2 steps, no dense warm-up, no sink
# frame, so rainserve_attention_density_ratio gets exactly STEPS observations.
STEPS = 2
REQUEST = dict(width=256, height=256, num_frames=5, steps=STEPS, seed=7)
# Series that exist only where a CUDA device is visible (ServerMetrics::
# RefreshDeviceMemory); a CPU server never exports them.
CUDA_ONLY_METRICS = {"rainserve_device_memory_used_bytes", "rainserve_device_memory_total_bytes"}
METRIC_NAME = re.compile(r"\brainserve_[a-zA-Z0-9_]+")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode("utf-8")


def wait_for(what, predicate, timeout, log=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{log()}")


def expression_names(text):
    return set(METRIC_NAME.findall(text))


def declared_metric_names():
    """Every .Name("...") in server/metrics.cc."""
    with open(util.source_path("server", "metrics.cc")) as f:
        return set(re.findall(r'\.Name\("([a-z0-9_]+)"\)', f.read()))


class LiveMetricsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.grpc = util.require_module("grpc")
        yaml = util.require_module("yaml")
        try:
            from rainserve.v1 import generation_pb2  # noqa: F401
        except ImportError:
            raise unittest.SkipTest("no generated Python stubs on PYTHONPATH "
                                    "(<build>/examples/python/gen)")
        cls.dir = tempfile.TemporaryDirectory(prefix="rainserve-deploy-")
        cls.server = None
        with open(util.source_path("deploy", "k8s", "overlays", "cpu-tiny", "server.yaml")) as f:
            config = yaml.safe_load(f)
        (model,) = [m for m in config["models"] if m["name"] == MODEL]
        model["path"] = util.source_path("models", "wan-tiny")
        config_path = os.path.join(cls.dir.name, "server.yaml")
        with open(config_path, "w") as f:
            yaml.safe_dump(config, f)
        port_file = os.path.join(cls.dir.name, "ports.json")
        cls.server_log = open(os.path.join(cls.dir.name, "server.log"), "w+")
        cls.server = subprocess.Popen(
            [SERVER_BINARY, "--config", config_path, "--listen", "127.0.0.1:0",
             "--metrics-listen", "127.0.0.1:0", "--port-file", port_file],
            stdout=subprocess.DEVNULL, stderr=cls.server_log)
        try:
            wait_for("the server's port file",
                     lambda: os.path.exists(port_file) or cls.server.poll() is not None,
                     30, cls.server_stderr)
            if cls.server.poll() is not None:
                raise AssertionError("the server exited:\n" + cls.server_stderr())
            with open(port_file) as f:
                ports = json.load(f)
            cls.grpc_target = f"127.0.0.1:{ports['grpc_port']}"
            cls.metrics_port = ports["metrics_port"]
            cls.metrics_url = f"http://127.0.0.1:{cls.metrics_port}/metrics"
            wait_for("model_ready 1",
                     lambda: f'rainserve_model_ready{{model="{MODEL}"}} 1' in http_get(cls.metrics_url),
                     120, cls.server_stderr)
            cls.generate()
            cls.metrics_text = http_get(cls.metrics_url)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def generate(cls):
        from rainserve.v1 import generation_pb2, generation_pb2_grpc, sparse_attention_pb2
        request = generation_pb2.GenerateRequest(model=MODEL, prompt="a paper boat", **REQUEST)
        request.sparse_attention.mode = sparse_attention_pb2.ATTENTION_MODE_RAINFUSION
        request.sparse_attention.sparsity = 0.5
        request.sparse_attention.sink_frames = 0
        request.sparse_attention.dense_warmup_steps = 0
        request.sparse_attention.quality_probe.rate = 1.0  # every step, both wan-tiny layers
        with cls.grpc.insecure_channel(cls.grpc_target) as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            final = None
            for event in stub.Generate(request, timeout=180):
                if event.WhichOneof("event") in ("completed", "failed"):
                    final = event
        if final is None or final.WhichOneof("event") != "completed":
            raise AssertionError(f"generation did not complete: {final}\n{cls.server_stderr()}")
        steps = final.completed.result.steps
        if [s.sparse for s in steps] != [True] * STEPS:
            raise AssertionError(f"expected {STEPS} sparse steps, got {steps}")

    @classmethod
    def server_stderr(cls):
        cls.server_log.seek(0)
        return cls.server_log.read()

    @classmethod
    def tearDownClass(cls):
        if cls.server is not None and cls.server.poll() is None:
            cls.server.terminate()
            try:
                cls.server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                cls.server.kill()
                cls.server.wait()
        cls.server = None
        if getattr(cls, "server_log", None) is not None:
            cls.server_log.close()
            cls.server_log = None
        cls.dir.cleanup()

    # -- helpers --------------------------------------------------------------

    def exported_names(self):
        """Sample names in the /metrics text (histograms as _bucket/_sum/_count)."""
        names = set()
        for line in self.metrics_text.splitlines():
            if line and not line.startswith("#"):
                names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
        return names

    def assert_names_exported(self, where, names):
        self.assertTrue(names, f"{where} names no rainserve metric")
        exported = self.exported_names()
        declared = declared_metric_names()
        self.assertTrue(CUDA_ONLY_METRICS <= declared,
                        "CUDA_ONLY_METRICS must name metrics declared in server/metrics.cc")
        unknown = sorted(n for n in names if n not in exported and n not in CUDA_ONLY_METRICS)
        self.assertEqual(unknown, [], f"{where} uses metrics the server does not export")

    # -- tests ----------------------------------------------------------------

    def test_prometheus_scrapes_the_generation_and_evaluates_the_alerts(self):
        prometheus = util.require_tool("prometheus")
        port = free_port()
        data = os.path.join(self.dir.name, "prometheus")
        config = os.path.join(self.dir.name, "prometheus.yml")
        with open(config, "w") as f:
            f.write(f"""\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {util.source_path("deploy", "prometheus", "alerts.yml")}
scrape_configs:
  - job_name: rainserve
    static_configs:
      - targets: ["127.0.0.1:{self.metrics_port}"]
""")
        with open(os.path.join(self.dir.name, "prometheus.log"), "w+") as log:
            proc = subprocess.Popen(
                [prometheus, f"--config.file={config}", f"--storage.tsdb.path={data}",
                 f"--web.listen-address=127.0.0.1:{port}"],
                stdout=log, stderr=subprocess.STDOUT)

            def prom_log():
                log.seek(0)
                return log.read()[-4000:]

            base = f"http://127.0.0.1:{port}"

            def query(expr):
                """The instant vector's {labels: value}, or None before data arrives."""
                url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
                try:
                    body = json.loads(http_get(url))
                except OSError:
                    return None
                if body.get("status") != "success" or not body["data"]["result"]:
                    return None
                return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1])
                        for r in body["data"]["result"]}

            def single(expr):
                result = wait_for(expr, lambda: query(expr), 60, prom_log)
                self.assertEqual(len(result), 1, f"{expr}: {result}")
                return next(iter(result.values()))

            try:
                self.assertEqual(single('up{job="rainserve"}'), 1)
                self.assertEqual(single(f'rainserve_requests_total{{model="{MODEL}",status="ok"}}'), 1)
                self.assertEqual(single(f'rainserve_request_duration_seconds_count{{model="{MODEL}"}}'), 1)
                self.assertEqual(single(f'sum(rainserve_attention_density_ratio_count{{model="{MODEL}"}})'),
                                 STEPS)
                self.assertEqual(single(f'rainserve_attention_density_ratio_bucket{{model="{MODEL}",le="+Inf"}}'),
                                 STEPS)
                self.assertEqual(single(f'rainserve_model_ready{{model="{MODEL}"}}'), 1)
                # Realized density at sparsity 0.5 is 0.5 per step.
                self.assertAlmostEqual(
                    single(f'sum(rainserve_attention_density_ratio_sum{{model="{MODEL}"}})'), 0.5 * STEPS)

                # Rules evaluated before the first scrape may be pending
                # (absent(...)); wait until an evaluation sees the data.
                last = []

                def rules_settled():
                    body = json.loads(http_get(f"{base}/api/v1/rules"))
                    last[:] = [r for g in body["data"]["groups"] for r in g["rules"]]
                    return last and all(r["health"] == "ok" and r["state"] == "inactive"
                                        for r in last)

                try:
                    wait_for("every alert rule evaluated and inactive", rules_settled, 30)
                except AssertionError:
                    pass  # the assertions below say which rule and why
                self.assertGreaterEqual(len(last), 4)
                for rule in last:
                    self.assertEqual(rule["health"], "ok", f"{rule['name']}: {rule.get('lastError')}")
                    self.assertEqual(rule["state"], "inactive",
                                     f"{rule['name']} is active against a healthy server")
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def test_metrics_count_one_request_and_every_sparse_step(self):
        text = self.metrics_text
        self.assertIn(f'rainserve_requests_total{{model="{MODEL}",status="ok"}} 1', text)
        self.assertIn(f'rainserve_request_duration_seconds_count{{model="{MODEL}"}} 1', text)
        self.assertIn(f'rainserve_attention_density_ratio_count{{model="{MODEL}",sink="false"}} {STEPS}',
                      text)
        # The quality probe: wan-tiny's 2 self-attention layers in every step.
        for name in ("rainserve_attention_probe_cosine", "rainserve_attention_probe_rel_l2",
                     "rainserve_attention_probe_kept_mass_ratio"):
            self.assertIn(f'{name}_count{{model="{MODEL}"}} {2 * STEPS}', text)

    def test_dashboard_uses_only_exported_metrics(self):
        with open(util.source_path("deploy", "grafana", "rainserve.json")) as f:
            dashboard = json.load(f)
        exprs = []

        def walk(node):
            if isinstance(node, dict):
                for key, value in node.items():
                    if key in ("expr", "definition") and isinstance(value, str):
                        exprs.append(value)
                    walk(value)
            elif isinstance(node, list):
                for item in node:
                    walk(item)

        walk(dashboard)
        panels = [p for p in dashboard["panels"] if p["type"] != "row"]
        self.assertTrue(all(p.get("targets") for p in panels), "a panel without queries")
        ids = [p["id"] for p in dashboard["panels"]]
        self.assertEqual(len(ids), len(set(ids)), "panel ids must be unique")
        names = set().union(*map(expression_names, exprs))
        self.assert_names_exported("deploy/grafana/rainserve.json", names)
        # What the issue asks the dashboard to show.
        for required in ("rainserve_requests_total", "rainserve_request_duration_seconds_bucket",
                         "rainserve_pending_requests", "rainserve_queue_duration_seconds_bucket",
                         "rainserve_denoise_step_duration_seconds_bucket",
                         "rainserve_attention_density_ratio_sum", "rainserve_attention_mask_seconds_sum",
                         "rainserve_stage_duration_seconds_sum", "rainserve_device_memory_used_bytes",
                         "rainserve_device_memory_total_bytes", "rainserve_model_ready",
                         "rainserve_attention_probe_cosine_sum",
                         "rainserve_attention_probe_rel_l2_bucket"):
            self.assertIn(required, names)

    def test_alert_rules_use_only_exported_metrics(self):
        yaml = util.require_module("yaml")
        with open(util.source_path("deploy", "prometheus", "alerts.yml")) as f:
            groups = yaml.safe_load(f)["groups"]
        exprs = [r["expr"] for g in groups for r in g["rules"]]
        names = set().union(*map(expression_names, exprs))
        self.assert_names_exported("deploy/prometheus/alerts.yml", names)

    def test_healthcheck_script_reports_the_registered_services(self):
        script = util.source_path("deploy", "healthcheck.py")

        def run(service):
            return subprocess.run([sys.executable, script, "--target", self.grpc_target,
                                   "--service", service], capture_output=True, text=True, timeout=30)

        for service in ("", "rainserve.v1.Models", "rainserve.v1.Generation",
                        f"rainserve.v1.Generation/{MODEL}"):
            r = run(service)
            self.assertEqual(r.returncode, 0, f"{service!r}: {r.stdout}{r.stderr}")
            self.assertIn("SERVING", r.stdout)
        r = run("rainserve.v1.NoSuchService")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("SERVICE_UNKNOWN", r.stdout)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} <rainserve-server binary> [unittest args]")
    SERVER_BINARY = sys.argv.pop(1)
    util.main()
