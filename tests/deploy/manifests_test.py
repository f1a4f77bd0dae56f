#!/usr/bin/env python3
"""Static checks of the deployment files, each against the tool that reads them:

  KustomizeTest  kubectl kustomize renders deploy/k8s/overlays/{cpu-tiny,gpu,gpu-multi};
                 the rendered objects agree with the server (ports in the
                 ConfigMap's server.yaml, health service names, metric names)
                 and with each other (selectors, named ports, grace period).
  ComposeTest    docker-compose config accepts docker-compose.yml alone and
                 with docker-compose.gpu.yml; the result points at files that
                 exist and at the Dockerfile's stages.
  PromtoolTest   promtool check config / check rules on deploy/prometheus/.

    PYTHONPATH=tests/deploy python3 tests/deploy/manifests_test.py [TestClass]

ctest runs one class per test (deploy_kustomize_test, ...), so that a missing
tool skips only its own checks. No cluster and no Docker engine is involved.
"""

import os
import re
import subprocess
import unittest

import deploy_test_util as util

GRPC_PORT = 50051
METRICS_PORT = 9464
PRESTOP_SECONDS = 5


def run(args, **kwargs):
    r = subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def server_health_services(models):
    """Health service names rainserve-server registers (server/server_app.cc)."""
    with open(util.source_path("server", "server_app.cc")) as f:
        source = f.read()
    names = {""}
    for constant in ("kGenerationService", "kModelsService"):
        match = re.search(constant + r'\[\] = "([^"]+)"', source)
        assert match, f"{constant} not found in server/server_app.cc"
        names.add(match.group(1))
    generation = re.search(r'kGenerationService\[\] = "([^"]+)"', source).group(1)
    names.update(f"{generation}/{m}" for m in models)
    return names


def declared_metric_names():
    with open(util.source_path("server", "metrics.cc")) as f:
        return set(re.findall(r'\.Name\("([a-z0-9_]+)"\)', f.read()))


def volume_sources(service):
    """Host paths of a rendered compose service's bind mounts (the long form,
    or docker-compose 1.x's "source:target[:mode]")."""
    return [v["source"] if isinstance(v, dict) else v.split(":")[0] for v in service["volumes"]]


def container_ports(service):
    return {int(p["target"]) if isinstance(p, dict) else int(str(p).split(":")[-1].split("/")[0])
            for p in service["ports"]}


def dockerfile():
    with open(util.source_path("deploy", "Dockerfile")) as f:
        return f.read()


class KustomizeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.kubectl = util.require_tool("kubectl")
        cls.yaml = util.require_module("yaml")
        # The overlays use kustomize v5 fields (labels, patches with targets):
        # kubectl 1.27 or newer. Older clients (Debian 12's 1.20) cannot read them.
        version = subprocess.run([cls.kubectl, "version", "--client"], capture_output=True,
                                 text=True, timeout=60).stdout
        match = re.search(r"Kustomize Version: v(\d+)", version)
        if not match or int(match.group(1)) < 5:
            raise unittest.SkipTest(f"kubectl without kustomize v5 ({version.strip()!r}); "
                                    "install kubectl 1.27 or newer")

    def render(self, overlay):
        out = run([self.kubectl, "kustomize", util.source_path("deploy", "k8s", "overlays", overlay)])
        objects = {}
        for doc in self.yaml.safe_load_all(out):
            if doc:
                self.assertNotIn(doc["kind"], objects, f"two {doc['kind']} objects")
                objects[doc["kind"]] = doc
        for kind in ("Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler",
                     "PodMonitor", "PodDisruptionBudget"):
            self.assertIn(kind, objects, f"{overlay}: no {kind}")
        return objects

    def check_overlay(self, overlay, baked=True):
        """The checks every overlay shares; returns (objects, container, server config).
        baked: the overlay's server.yaml is also an image's built-in config."""
        objs = self.render(overlay)
        deployment, config_map = objs["Deployment"], objs["ConfigMap"]
        pod = deployment["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        pod_labels = pod["metadata"]["labels"]

        # The server's config comes from the generated ConfigMap ...
        config = self.yaml.safe_load(config_map["data"]["server.yaml"])
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        config_volume = [n for n, v in volumes.items()
                         if v.get("configMap", {}).get("name") == config_map["metadata"]["name"]]
        self.assertEqual(len(config_volume), 1, "the ConfigMap is mounted once")
        args = container["args"]
        self.assertEqual(args[args.index("--config") + 1],
                         mounts[config_volume[0]] + "/server.yaml")
        # ... which is also the image's built-in config.
        if baked:
            self.assertIn(f"COPY deploy/k8s/overlays/{overlay}/server.yaml /etc/rainserve/server.yaml",
                          dockerfile())

        # Ports: the config, the container, the Service and the probes agree.
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        self.assertEqual(ports, {"grpc": GRPC_PORT, "metrics": METRICS_PORT})
        self.assertEqual(config["server"]["listen_address"], f"0.0.0.0:{GRPC_PORT}")
        self.assertEqual(port_of(config["server"]["metrics_address"]), ports["metrics"])
        service_ports = {p["name"]: p for p in objs["Service"]["spec"]["ports"]}
        self.assertEqual(service_ports["grpc"]["port"], GRPC_PORT)
        self.assertEqual(service_ports["metrics"]["port"], METRICS_PORT)
        for p in service_ports.values():
            self.assertIn(p["targetPort"], ports)

        # Probes: native gRPC health on the gRPC port, names the server registers.
        models = [m["name"] for m in config["models"]]
        registered = server_health_services(models)
        probes = {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
        for kind, probe in probes.items():
            self.assertEqual(probe["grpc"]["port"], GRPC_PORT, kind)
            self.assertIn(probe["grpc"].get("service", ""), registered, kind)
        self.assertEqual(probes["readinessProbe"]["grpc"]["service"], "rainserve.v1.Generation")
        self.assertEqual(probes["livenessProbe"]["grpc"].get("service", ""), "")
        startup = probes["startupProbe"]
        startup_budget = startup["periodSeconds"] * startup["failureThreshold"]
        self.assertGreaterEqual(startup_budget, 300, "model loading needs minutes")

        # Shutdown: preStop, then SIGTERM and the drain, inside the grace period.
        self.assertEqual(container["lifecycle"]["preStop"]["exec"]["command"],
                         ["sleep", str(PRESTOP_SECONDS)])
        drain = config["server"]["drain_timeout_seconds"]
        grace = pod["spec"]["terminationGracePeriodSeconds"]
        self.assertGreater(grace, drain + PRESTOP_SECONDS)

        # Selectors of the Service, PodMonitor and PDB pick these pods.
        def selects(selector):
            return all(pod_labels.get(k) == v for k, v in selector.items())

        self.assertTrue(selects(deployment["spec"]["selector"]["matchLabels"]))
        self.assertTrue(selects(objs["Service"]["spec"]["selector"]))
        self.assertTrue(selects(objs["PodMonitor"]["spec"]["selector"]["matchLabels"]))
        self.assertTrue(selects(objs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]))

        # Monitoring and scaling name real ports and metrics.
        pod_monitor = objs["PodMonitor"]
        self.assertEqual(pod_monitor["apiVersion"], "monitoring.coreos.com/v1")
        (endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
        self.assertIn(endpoint["port"], ports)
        self.assertEqual(ports[endpoint["port"]], METRICS_PORT)
        self.assertEqual(endpoint["path"], "/metrics")
        hpa = objs["HorizontalPodAutoscaler"]
        self.assertEqual(hpa["apiVersion"], "autoscaling/v2")
        self.assertEqual(hpa["spec"]["scaleTargetRef"]["name"], deployment["metadata"]["name"])
        (metric,) = hpa["spec"]["metrics"]
        self.assertEqual(metric["type"], "Pods")
        self.assertEqual(metric["pods"]["metric"]["name"], "rainserve_pending_requests")
        self.assertIn(metric["pods"]["metric"]["name"], declared_metric_names())

        # Non-root, no privilege escalation.
        self.assertTrue(pod["spec"]["securityContext"]["runAsNonRoot"])
        self.assertNotEqual(pod["spec"]["securityContext"]["runAsUser"], 0)
        self.assertFalse(container["securityContext"]["allowPrivilegeEscalation"])
        self.assertIn("resources", container)
        return objs, container, config

    def test_cpu_tiny_overlay_renders_consistent_objects_on_cpu(self):
        _, container, config = self.check_overlay("cpu-tiny")
        self.assertEqual({m["device"] for m in config["models"]}, {"cpu"})
        self.assertIn("wan-tiny", [m["name"] for m in config["models"]])
        self.assertNotIn("nvidia.com/gpu", container["resources"].get("limits", {}))
        self.assertTrue(container["image"].endswith(":cpu"), container["image"])

    def test_gpu_multi_overlay_requests_as_many_gpus_as_its_devices_lists(self):
        _, container, config = self.check_overlay("gpu-multi", baked=False)
        gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
        self.assertGreater(gpus, 1)
        visible = {f"cuda:{i}" for i in range(gpus)}
        multi = [m for m in config["models"] if len(m.get("devices", [])) > 1]
        self.assertTrue(multi, "a model spans several GPUs")
        for m in config["models"]:
            devices = m.get("devices", [m.get("device", "cpu")])
            self.assertEqual(len(set(devices)), len(devices), m["name"])
            self.assertLessEqual(set(devices), visible, m["name"])
        self.assertEqual(len(multi[0]["devices"]), gpus)
        self.assertTrue(container["image"].endswith(":gpu"), container["image"])

    def test_gpu_overlay_requests_one_gpu_and_configures_cuda0_bf16(self):
        _, container, config = self.check_overlay("gpu")
        self.assertEqual(str(container["resources"]["limits"]["nvidia.com/gpu"]), "1")
        self.assertEqual({m["device"] for m in config["models"]}, {"cuda:0"})
        self.assertEqual({m["dtype"] for m in config["models"]}, {"bf16"})
        self.assertTrue(container["image"].endswith(":gpu"), container["image"])


class ComposeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.compose = util.require_tool("docker-compose")
        cls.yaml = util.require_module("yaml")

    def config(self, *files):
        args = [self.compose]
        for f in files:
            args += ["-f", util.source_path(f)]
        # docker-compose config needs no Docker engine.
        return self.yaml.safe_load(run(args + ["config"], cwd=util.SOURCE_DIR))

    def stages(self):
        return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", dockerfile(), re.M | re.I))

    def test_base_file_builds_the_cpu_image_and_wires_prometheus_and_grafana(self):
        services = self.config("docker-compose.yml")["services"]
        self.assertEqual(set(services), {"rainserve", "prometheus", "grafana"})
        rainserve = services["rainserve"]
        self.assertEqual(rainserve["build"]["target"], "cpu")
        self.assertIn("cpu", self.stages())
        self.assertTrue(rainserve["build"]["dockerfile"].endswith("deploy/Dockerfile"))
        self.assertEqual(container_ports(rainserve), {GRPC_PORT, METRICS_PORT})
        for name in ("prometheus", "grafana"):
            for source in volume_sources(services[name]):
                self.assertTrue(os.path.exists(source), f"{name}: {source}")
        # Prometheus scrapes the rainserve service's metrics port ...
        (prom_dir,) = volume_sources(services["prometheus"])
        with open(os.path.join(prom_dir, "prometheus.yml")) as f:
            scrape = self.yaml.safe_load(f)["scrape_configs"]
        targets = [t for job in scrape for sc in job.get("static_configs", []) for t in sc["targets"]]
        self.assertIn(f"rainserve:{METRICS_PORT}", targets)
        # ... and Grafana's provisioned data source is that Prometheus.
        prov = [v for v in volume_sources(services["grafana"]) if v.endswith("provisioning")]
        with open(os.path.join(prov[0], "datasources", "prometheus.yml")) as f:
            (datasource,) = self.yaml.safe_load(f)["datasources"]
        self.assertEqual(datasource["url"], "http://prometheus:9090")

    def test_gpu_override_reserves_an_nvidia_gpu_and_builds_the_gpu_image(self):
        rainserve = self.config("docker-compose.yml", "docker-compose.gpu.yml")["services"]["rainserve"]
        self.assertEqual(rainserve["build"]["target"], "gpu")
        self.assertIn("gpu", self.stages())
        devices = rainserve["deploy"]["resources"]["reservations"]["devices"]
        self.assertTrue(any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices),
                        devices)


class PromtoolTest(unittest.TestCase):
    def test_prometheus_config_and_alert_rules_are_valid(self):
        promtool = util.require_tool("promtool")
        prom = util.source_path("deploy", "prometheus")
        run([promtool, "check", "config", os.path.join(prom, "prometheus.yml")])
        out = run([promtool, "check", "rules", os.path.join(prom, "alerts.yml")])
        self.assertRegex(out, r"SUCCESS: [1-9]\d* rules found")


if __name__ == "__main__":
    util.main()
