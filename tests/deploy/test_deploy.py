"""Deployment and monitoring artifacts, checked with the real tools.

- `kubectl kustomize` renders deploy/k8s (base and the dev overlay); every document is
  validated against the Kubernetes schemas shipped in the PyPI package kubernetes-validate.
- `promtool` checks the alert rules (and runs their unit tests) and the scrape configs.
- Every metric named in the alert rules and the Grafana dashboard is exported by
  shortlist.rpc.telemetry.
- Every container recipe starts a service the `shortlist serve` CLI accepts.

The tools are required, not optional: when kubectl or promtool is missing the tests fail and
say how to install them (.ci/install-tools.sh).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from shortlist.config import Settings
from shortlist.tools.stack import NATIVE_THREADS_ENV

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "shortlist-dashboard.json"
SERVICES = ("gateway", "retrieval", "ranking", "feedback")
AUTOSCALED = ("gateway", "retrieval", "ranking")
# Oldest Kubernetes the manifests target (gRPC probes are GA since 1.27); kubernetes-validate
# ships schemas for 1.25 to 1.37.
K8S_VERSION = "1.30.0"
SETTING_NAMES = {"SHORTLIST_" + f.name.upper() for f in fields(Settings)} | {
    "SHORTLIST_CONFIG_FILE"
}
POD_KINDS = ("Deployment", "StatefulSet", "Job", "CronJob")
INTERNAL = ("retrieval", "ranking", "feedback")
# Secrets the base requires (the internal plane's credentials and certificates); every other
# Secret reference is optional. The dev overlay generates `shortlist-internal`.
REQUIRED_SECRETS = {"shortlist-internal"}
CERT_MANAGER = "cert-manager.io/v1"  # CRDs: not in kubernetes-validate's schemas


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not on PATH: it is required to check deploy/. "
            "Install it with .ci/install-tools.sh (Debian packages kubectl and prometheus)."
        )
    return path


def run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, args))} exited {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


# ---------------------------------------------------------------- Kubernetes manifests


@cache
def rendered(target: str) -> tuple[dict[str, Any], ...]:
    kubectl = require_tool("kubectl")
    version = json.loads(run(kubectl, "version", "--client", "-o", "json").stdout)
    minor = int(re.match(r"\d+", version["clientVersion"]["minor"]).group())
    if (int(version["clientVersion"]["major"]), minor) < (1, 27):
        pytest.fail(
            f"kubectl {version['clientVersion']['gitVersion']} is too old (its kustomize "
            "cannot render deploy/k8s): need >= 1.27, see .ci/install-tools.sh"
        )
    out = run(kubectl, "kustomize", K8S / target).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def find(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> list[dict]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@pytest.fixture(scope="module", params=["base", "overlays/dev"])
def docs(request: pytest.FixtureRequest) -> tuple[dict[str, Any], ...]:
    return rendered(request.param)


@pytest.fixture(scope="module")
def dev() -> tuple[dict[str, Any], ...]:
    return rendered("overlays/dev")


def test_every_rendered_manifest_validates_against_the_kubernetes_schemas(docs):
    import kubernetes_validate

    errors = []
    for doc in docs:
        if doc["apiVersion"] == CERT_MANAGER:
            continue  # checked by test_cert_manager_resources_are_well_formed
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(map(str, e.path))
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {e.message}")
    assert not errors, "\n".join(errors)
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "StatefulSet",
        "Job",
        "CronJob",
        "NetworkPolicy",
        "ServiceAccount",
        "ConfigMap",
        "PersistentVolumeClaim",
    } <= kinds


def test_the_schema_validator_rejects_a_broken_manifest():
    import kubernetes_validate

    broken = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "broken"},
        "spec": {
            "replicas": "two",
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "x", "readinessProbe": {}}]},
            },
        },
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    misspelt = {**broken, "spec": {**broken["spec"], "replicas": 1, "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, K8S_VERSION, strict=True)


def test_dev_overlay_puts_everything_in_its_namespace(dev):
    namespaced = [d for d in dev if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {"shortlist-dev"}
    assert one(dev, "Namespace", "shortlist-dev")


@pytest.mark.parametrize("name", SERVICES)
def test_service_deployment(docs, name):
    defaults = Settings()
    grpc_port = port_of(getattr(defaults, f"{name}_addr"))
    metrics_port = getattr(defaults, f"{name}_metrics_port")
    deployment = one(docs, "Deployment", name)
    template = deployment["spec"]["template"]
    spec = template["spec"]
    (container,) = spec["containers"]

    # The image's ENTRYPOINT (`python -m shortlist.services`) runs: no command/args override.
    assert container["image"].split(":")[0] == f"shortlist-{name}"
    assert "command" not in container and "args" not in container
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    # The gateway's API port speaks TLS: kubelet probes go to its plaintext health port.
    probe_port = ports.pop("health", grpc_port)
    http_port = ports.pop("http", None)  # the gateway's HTTP/JSON API
    assert http_port == (port_of(defaults.gateway_http_addr) if name == "gateway" else None)
    assert ports == {"grpc": grpc_port, "metrics": metrics_port}
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port)
    env = {e["name"]: e for e in container["env"]}
    assert env[f"SHORTLIST_{name.upper()}_ADDR"]["value"].endswith(f":{grpc_port}")

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == probe_port, probe
    # Readiness asks grpc.health.v1 about the service's own gRPC service name.
    server = importlib.import_module(f"shortlist.services.{name}")
    assert container["readinessProbe"]["grpc"]["service"] in server.SERVICE_NAMES

    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(
        resources["limits"]
    )
    assert spec["serviceAccountName"] == "shortlist"
    assert spec["automountServiceAccountToken"] is False

    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts["artifacts"]["readOnly"] is True
    assert volumes["artifacts"]["persistentVolumeClaim"]["readOnly"] is True

    service = one(docs, "Service", name)
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert {p["port"] for p in service["spec"]["ports"]} == {grpc_port, metrics_port} | (
        {http_port} if http_port else set()
    )
    if http_port:
        assert env["SHORTLIST_GATEWAY_HTTP_ADDR"]["value"].endswith(f":{http_port}")

    pdb = one(docs, "PodDisruptionBudget", name)
    assert pdb["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    hpas = find(docs, "HorizontalPodAutoscaler", name)
    if name in AUTOSCALED:
        (hpa,) = hpas
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    else:
        assert not hpas


def test_every_pod_runs_non_root_on_a_read_only_root_filesystem(docs):
    pods = [d for d in docs if d["kind"] in POD_KINDS]
    # + archiver, redis, kafka, the Job, the CronJob, the Dask scheduler and its workers
    assert len(pods) == len(SERVICES) + 7
    for doc in pods:
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        assert spec["securityContext"]["runAsUser"] != 0
        for c in all_containers(spec):
            where = f"{doc['kind']}/{doc['metadata']['name']}/{c['name']}"
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "limits" in c["resources"] and "requests" in c["resources"], where
            image = c["image"]
            assert ":" in image and not image.endswith(":latest"), f"{where}: unpinned {image}"


def test_settings_in_manifests_are_real_settings(docs):
    (config_map,) = find(docs, "ConfigMap", "shortlist-settings")
    assert set(config_map["data"]) <= SETTING_NAMES
    assert config_map["data"]["SHORTLIST_METRICS_HOST"] == "0.0.0.0"
    for doc in docs:
        if doc["kind"] not in POD_KINDS:
            continue
        for c in all_containers(pod_spec(doc)):
            for env in c.get("env", []):
                if env["name"].startswith("SHORTLIST_"):
                    assert env["name"] in SETTING_NAMES, f"{doc['metadata']['name']}: {env}"
                secret = env.get("valueFrom", {}).get("secretKeyRef")
                if secret:  # optional, or one of the few the base requires
                    required = secret["name"].rsplit("-", 1)[0] in REQUIRED_SECRETS
                    assert (
                        secret.get("optional") is True
                        or secret["name"] in REQUIRED_SECRETS
                        or (required and one(docs, "Secret", secret["name"]))
                    ), env
            for source in c.get("envFrom", []):
                name = source["configMapRef"]["name"]
                allowed = {"shortlist-settings", "shortlist-gateway-security"}
                assert name in allowed | {"shortlist-internal-security"}
                (referenced,) = find(docs, "ConfigMap", name)
                assert set(referenced["data"]) <= SETTING_NAMES, name
    # The client targets in the ConfigMap name the Services; the gateway's internal ones
    # (retrieval, ranking) resolve every pod of a headless Service, to balance over them.
    for name in SERVICES:
        target = config_map["data"][f"SHORTLIST_{name.upper()}_ADDR"]
        service = one(docs, "Service", name)
        if name in ("retrieval", "ranking"):
            assert target.startswith("dns:///"), target
            target = target.removeprefix("dns:///")
            assert service["spec"]["clusterIP"] == "None"
        host, port = target.rsplit(":", 1)
        assert host == name
        assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert int(config_map["data"]["SHORTLIST_MAX_CONNECTION_AGE_MS"]) > 0
    redis_host = re.match(r"rediss?://([^:/@]+)", config_map["data"]["SHORTLIST_REDIS_URL"])
    kafka_host = config_map["data"]["SHORTLIST_KAFKA_BOOTSTRAP"].split(":")[0]
    assert one(docs, "Service", redis_host.group(1)) and one(docs, "Service", kafka_host)


def test_gateway_serves_tls_in_base_and_plaintext_only_in_dev(docs, request):
    (security,) = find(docs, "ConfigMap", "shortlist-gateway-security")
    gateway = one(docs, "Deployment", "gateway")
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert int(security["data"]["SHORTLIST_HEALTH_PORT"]) == ports["health"]
    assert "SHORTLIST_API_KEY_HASHES" in env
    if "dev" in request.node.callspec.id:
        assert env["SHORTLIST_INSECURE"]["value"] == "1"
        assert security["data"]["SHORTLIST_TLS_CERT_FILE"] == ""
    else:
        assert "SHORTLIST_INSECURE" not in env
        cert = security["data"]["SHORTLIST_TLS_CERT_FILE"]
        assert cert and str(Path(cert).parent) in mounts


def test_training_publishes_the_bundle_the_services_read(docs):
    (config_map,) = find(docs, "ConfigMap", "shortlist-settings")
    bundle_dir = config_map["data"]["SHORTLIST_BUNDLE"]
    claims = set()
    for doc in [*find(docs, "Job"), *find(docs, "CronJob")]:
        spec = pod_spec(doc)
        (container,) = spec["containers"]
        assert container["command"][:2] == ["shortlist", "train"]
        assert container["command"][container["command"].index("--out") + 1] == bundle_dir
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == bundle_dir)
        assert not mount.get("readOnly")
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        claims.add(volume["persistentVolumeClaim"]["claimName"])
    for name in SERVICES:
        spec = pod_spec(one(docs, "Deployment", name))
        volume = next(v for v in spec["volumes"] if v["name"] == "artifacts")
        claims.add(volume["persistentVolumeClaim"]["claimName"])
    (claim,) = claims
    assert one(docs, "PersistentVolumeClaim", claim)


def test_archiver_appends_the_archive_the_nightly_training_reads(docs):
    """One archiver (one writer) fills the archive volume; the CronJob trains spectral on it
    and the initial history, both read-only; the first Job on the history alone."""
    defaults = Settings()
    (config_map,) = find(docs, "ConfigMap", "shortlist-settings")
    archive = config_map["data"]["SHORTLIST_ARCHIVE_PATH"]
    archiver = one(docs, "Deployment", "archiver")
    assert archiver["spec"]["replicas"] == 1 and archiver["spec"]["strategy"]["type"] == "Recreate"
    spec = pod_spec(archiver)
    (container,) = spec["containers"]
    assert container["image"].split(":")[0] == "shortlist-feedback"
    assert container["args"] == ["archiver"] and "command" not in container
    env = {e["name"]: e.get("value") for e in container["env"]}
    health = port_of(env["SHORTLIST_ARCHIVER_ADDR"])
    assert health == port_of(defaults.archiver_addr)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == health, probe
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": health, "metrics": defaults.archiver_metrics_port}
    annotations = archiver["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(defaults.archiver_metrics_port)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == archive)
    assert not mount.get("readOnly")
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    archive_claim = volume["persistentVolumeClaim"]["claimName"]
    assert one(docs, "PersistentVolumeClaim", archive_claim)
    kafka_clients = next(
        r["from"][0]["podSelector"]["matchExpressions"][0]["values"]
        for r in _ingress_rules(docs, "kafka")
    )
    assert "archiver" in kafka_clients

    for doc in [*find(docs, "Job"), *find(docs, "CronJob")]:
        spec = pod_spec(doc)
        (container,) = spec["containers"]
        command = container["command"]
        assert command[command.index("--model") + 1] == "spectral"
        events = [command[n + 1] for n, a in enumerate(command) if a == "--events"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        claims = {}
        for path in events:
            assert mounts[path]["readOnly"] is True, path
            claim = volumes[mounts[path]["name"]]["persistentVolumeClaim"]
            assert claim["readOnly"] is True and one(
                docs, "PersistentVolumeClaim", claim["claimName"]
            )
            claims[path] = claim["claimName"]
        history = {"shortlist-history"}
        expected = history | ({archive_claim} if doc["kind"] == "CronJob" else set())
        assert set(claims.values()) == expected, doc["metadata"]["name"]


def test_training_runs_on_the_dask_scheduler_service(docs):
    """The Job and the CronJob train with --engine dask on the scheduler Service's port,
    which selects the scheduler Deployment's pods on their scheduler port; the workers
    dial the same Service and open the LightGBM port the Job names."""
    service = one(docs, "Service", "shortlist-dask-scheduler")
    scheduler = one(docs, "Deployment", "shortlist-dask-scheduler")
    workers = one(docs, "Deployment", "shortlist-dask-worker")
    labels = scheduler["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    (container,) = pod_spec(scheduler)["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named[port["targetPort"]] == port["port"]
    assert str(port["port"]) in container["command"]
    # the stages' per-worker placement holds only without work stealing (NO_STEALING)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING"] == "False"
    address = f"tcp://{service['metadata']['name']}:{port['port']}"
    (worker,) = pod_spec(workers)["containers"]
    assert address in worker["command"]
    worker_ports = {p["containerPort"] for p in worker["ports"]}
    for doc in [*find(docs, "Job"), *find(docs, "CronJob")]:
        (train,) = pod_spec(doc)["containers"]
        command = train["command"]
        assert command[command.index("--engine") + 1] == "dask", doc["metadata"]["name"]
        assert command[command.index("--scheduler") + 1] == address, doc["metadata"]["name"]
        assert int(command[command.index("--lightgbm-port") + 1]) in worker_ports
    # the policies let the training pods reach the scheduler and the workers
    for app in ("dask-scheduler", "dask-worker"):
        sources = [f for r in _ingress_rules(docs, app) for f in r["from"]]
        assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "train"}}} in sources
    # torch.distributed (gloo) between the workers: a free rendezvous port and ephemeral
    # pair ports, so workers reach workers on every port, and nothing else does
    worker = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "dask-worker"}}}
    open_to = [r["from"] for r in _ingress_rules(docs, "dask-worker") if "ports" not in r]
    assert open_to == [[worker]]


def test_training_sizes_native_thread_pools_by_its_cpu_limit(docs):
    """The retrieval image serves with one OpenMP/OpenBLAS thread; the training pod it also
    runs must not inherit that."""
    for doc in [*find(docs, "Job"), *find(docs, "CronJob")]:
        (container,) = pod_spec(doc)["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        limit = container["resources"]["limits"]["cpu"]
        assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == str(limit)


def test_redis_and_kafka_are_stateful_with_persistent_volumes(docs):
    for name in ("redis", "kafka"):
        sts = one(docs, "StatefulSet", name)
        (template,) = sts["spec"]["volumeClaimTemplates"]
        (container,) = [c for c in pod_spec(sts)["containers"] if c["name"] == name]
        assert any(m["name"] == template["metadata"]["name"] for m in container["volumeMounts"])
    (kafka,) = pod_spec(one(docs, "StatefulSet", "kafka"))["containers"]
    assert re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", kafka["image"])
    env = {e["name"]: e.get("value") for e in kafka["env"]}
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert pod_spec(one(docs, "StatefulSet", "kafka"))["enableServiceLinks"] is False


def test_kafka_has_three_kraft_brokers_replication_3_and_two_in_sync(docs, request):
    base = request.node.callspec.params["docs"] == "base"
    sts = one(docs, "StatefulSet", "kafka")
    (kafka,) = pod_spec(sts)["containers"]
    env = {e["name"]: e.get("value") for e in kafka["env"]}
    brokers = 3 if base else 1  # the dev overlay: one node, one broker
    assert sts["spec"]["replicas"] == brokers
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert voters == [f"{n}@kafka-{n}.kafka:9093" for n in range(brokers)]
    assert "KAFKA_NODE_ID" in " ".join(kafka["command"])  # from the pod's ordinal
    replication, in_sync = (3, 2) if base else (1, 1)
    assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == str(replication)
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == str(replication)
    assert env["KAFKA_MIN_INSYNC_REPLICAS"] == str(in_sync)
    assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false"
    assert one(docs, "Service", "kafka")["spec"]["publishNotReadyAddresses"] is True
    assert one(docs, "PodDisruptionBudget", "kafka")["spec"]["maxUnavailable"] == 1
    (config_map,) = find(docs, "ConfigMap", "shortlist-settings")
    data = config_map["data"]
    assert data["SHORTLIST_FEEDBACK_REPLICATION"] == str(replication)  # the topic it creates
    assert data["SHORTLIST_KAFKA_IDEMPOTENCE"] == "1"
    # feedback consumers: at most one per partition (more would sit idle)
    replicas = one(docs, "Deployment", "feedback")["spec"]["replicas"]
    assert 1 <= replicas <= int(data["SHORTLIST_FEEDBACK_PARTITIONS"])
    assert replicas == (2 if base else 1)


def test_redis_cluster_overlay_replaces_the_single_redis(tmp_path):
    import kubernetes_validate

    docs = rendered("overlays/redis-cluster")
    for doc in docs:
        if doc["apiVersion"] != CERT_MANAGER:  # its CRDs: test_cert_manager_resources...
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert not find(docs, "StatefulSet", "redis") and not find(docs, "Service", "redis")
    (config_map,) = find(docs, "ConfigMap", "shortlist-settings")
    url = config_map["data"]["SHORTLIST_REDIS_URL"]
    assert url == "rediss://redis-cluster:6379/0?cluster=1"
    assert one(docs, "Service", url.split("//")[1].split(":")[0])["spec"]["clusterIP"] == "None"
    sts = one(docs, "StatefulSet", "redis-cluster")
    assert sts["spec"]["replicas"] == 6  # three masters, one replica each
    spec = pod_spec(sts)
    (redis,) = [c for c in spec["containers"] if c["name"] == "redis"]
    script = " ".join(redis["command"])
    assert "--cluster-enabled yes" in script and "--maxmemory-policy noeviction" in script
    assert _bytes(re.search(r"--maxmemory (\S+)", script).group(1)) <= 0.8 * _bytes(
        redis["resources"]["limits"]["memory"]
    )
    create = one(docs, "Job", "redis-cluster-create")
    assert "--cluster-replicas 1" in " ".join(pod_spec(create)["containers"][0]["command"])
    for doc in (sts, create):
        for c in all_containers(pod_spec(doc)):
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # the store's clients reach 6379, the nodes each other on the bus port too
    (policy,) = find(docs, "NetworkPolicy", "redis-cluster-ingress")
    ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ports == {6379, 16379, "metrics"}


def _bytes(quantity: str) -> int:
    """A Kubernetes (Mi, Gi) or Redis (mb, gb) memory size in bytes."""
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity).groups()
    scale = {"": 1, "Mi": 2**20, "Gi": 2**30, "mb": 2**20, "gb": 2**30}[unit]
    return int(number) * scale


def test_redis_memory_is_bounded_below_its_limit_and_never_evicts(docs):
    spec = pod_spec(one(docs, "StatefulSet", "redis"))
    (redis,) = [c for c in spec["containers"] if c["name"] == "redis"]
    script = " ".join(redis["command"])
    maxmemory = re.search(r"--maxmemory (\S+)", script)
    assert maxmemory, "redis runs without maxmemory"
    limit = _bytes(redis["resources"]["limits"]["memory"])
    assert _bytes(maxmemory.group(1)) <= 0.8 * limit  # room for the AOF rewrite's fork
    assert re.search(r"--maxmemory-policy noeviction\b", script)  # full: refuse, never evict
    assert re.search(r"--appendonly yes\b", script)
    (exporter,) = [c for c in spec["containers"] if c["name"] == "exporter"]
    port = one_port(exporter, "metrics")
    annotations = one(docs, "StatefulSet", "redis")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    rules = {
        r["alert"]: r
        for g in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
    }
    for name in ("ShortlistRedisMemoryHigh", "ShortlistRedisMemoryFull"):
        assert "redis_memory_max_bytes" in rules[name]["expr"]
    monitoring = [
        rule
        for rule in _ingress_rules(docs, "redis")
        for peer in rule.get("from", [])
        if peer.get("namespaceSelector", {})
        .get("matchLabels", {})
        .get("kubernetes.io/metadata.name")
        == "monitoring"
    ]
    assert [p["port"] for rule in monitoring for p in rule["ports"]] == ["metrics"]


def one_port(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return port


def _ingress_rules(docs, app: str) -> list[dict[str, Any]]:
    rules = []
    for policy in find(docs, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        if selector.get("app.kubernetes.io/name") == app:
            rules += policy["spec"].get("ingress", [])
    return rules


def test_network_policies_expose_only_the_gateway(docs):
    deny = one(docs, "NetworkPolicy", "default-deny-ingress")
    assert deny["spec"]["podSelector"] == {} and deny["spec"]["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny["spec"]
    monitoring = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    from_gateway = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gateway"}}}
    open_rules = [
        p["metadata"]["name"]
        for p in find(docs, "NetworkPolicy")
        for rule in p["spec"].get("ingress", [])
        if not rule.get("from")
    ]
    assert open_rules == ["gateway-ingress"], "only the gateway may be reachable from anywhere"
    gateway = _ingress_rules(docs, "gateway")
    public = [{"port": "grpc", "protocol": "TCP"}, {"port": "http", "protocol": "TCP"}]
    assert {"ports": public} in gateway
    # feedback: FeedbackAdmin from the gateway (its /v1/admin/ calls, decision 0039)
    for app in ("retrieval", "ranking", "feedback"):
        rules = _ingress_rules(docs, app)
        grpc_rules = [r for r in rules if r["ports"][0]["port"] == "grpc"]
        assert grpc_rules and all(r["from"] == [from_gateway] for r in grpc_rules), app
    for rule in _ingress_rules(docs, "feedback"):
        assert rule["from"] in ([monitoring], [from_gateway])
        assert rule["ports"][0]["port"] == ("metrics" if rule["from"] == [monitoring] else "grpc")
    for app in SERVICES:
        assert any(r.get("from") == [monitoring] for r in _ingress_rules(docs, app)), app


def _container(docs, kind: str, name: str) -> dict[str, Any]:
    return pod_spec(one(docs, kind, name))["containers"][0]


def _secret_ref(container: dict[str, Any], variable: str) -> dict[str, Any]:
    env = {e["name"]: e for e in container.get("env", [])}
    return env[variable]["valueFrom"]["secretKeyRef"]


def _required_secret(docs, container, variable: str, key: str) -> None:
    """`variable` comes from key `key` of the required Secret shortlist-internal (the dev
    overlay's generated one, which must hold the key)."""
    ref = _secret_ref(container, variable)
    assert ref["key"] == key and not ref.get("optional"), (variable, ref)
    assert ref["name"] == "shortlist-internal" or ref["name"].startswith("shortlist-internal-")
    if ref["name"] != "shortlist-internal":
        assert key in one(docs, "Secret", ref["name"])["data"], key


def _mounted_secret(docs, kind: str, name: str, path: str) -> str:
    spec = pod_spec(one(docs, kind, name))
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == path]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    return volume["secret"]["secretName"]


CERT_USAGES = {"client auth", "server auth", "digital signature", "key encipherment"}


def test_cert_manager_resources_are_well_formed(docs):
    """cert-manager's CRDs are not in kubernetes-validate: their fields are checked here."""
    issuers = {d["metadata"]["name"]: d["spec"] for d in find(docs, "Issuer")}
    certificates = find(docs, "Certificate")
    assert issuers and certificates
    ca_secrets = set()
    for cert in certificates:
        assert cert["apiVersion"] == CERT_MANAGER
        spec = cert["spec"]
        assert set(spec) <= {
            "secretName", "commonName", "dnsNames", "ipAddresses", "usages", "duration",
            "renewBefore", "privateKey", "issuerRef", "isCA",
        }, spec  # fmt: skip
        assert spec["issuerRef"] == {"name": spec["issuerRef"]["name"], "kind": "Issuer"}
        assert spec["issuerRef"]["name"] in issuers
        assert re.fullmatch(r"\d+h", spec["duration"]) and re.fullmatch(
            r"\d+h", spec["renewBefore"]
        )
        assert int(spec["renewBefore"][:-1]) < int(spec["duration"][:-1])
        assert set(spec.get("usages", [])) <= CERT_USAGES
        assert spec["privateKey"]["algorithm"] in {"ECDSA", "RSA", "Ed25519"}
        if spec.get("isCA"):
            ca_secrets.add(spec["secretName"])
        else:
            assert spec["dnsNames"] and spec["issuerRef"]["name"] != "shortlist-selfsigned"
    for name, spec in issuers.items():
        assert len(spec) == 1 and set(spec) <= {"selfSigned", "ca"}, name
        if "ca" in spec:
            assert spec["ca"]["secretName"] in ca_secrets


def test_internal_plane_is_mutual_tls_accepting_only_the_gateway(docs):
    from shortlist.rpc.security import check_internal_policy, parse_names

    settings = one(docs, "ConfigMap", "shortlist-settings")["data"]
    internal = one(docs, "ConfigMap", "shortlist-internal-security")["data"]
    public = one(docs, "ConfigMap", "shortlist-gateway-security")["data"]
    certificates = {c["spec"]["secretName"]: c["spec"] for c in find(docs, "Certificate")}
    mount = str(Path(internal["SHORTLIST_TLS_CERT_FILE"]).parent)
    assert {internal[f"SHORTLIST_TLS_{k}_FILE"] for k in ("KEY", "CLIENT_CA")} == {
        f"{mount}/tls.key",
        f"{mount}/ca.crt",
    }

    # The gateway: its client certificate names the identity the internal services accept.
    gateway = _container(docs, "Deployment", "gateway")
    _required_secret(docs, gateway, "SHORTLIST_INTERNAL_TOKEN", "internal-token")
    client = certificates[_mounted_secret(docs, "Deployment", "gateway", mount)]
    assert "client auth" in client["usages"] and "server auth" not in client["usages"]
    assert public["SHORTLIST_INTERNAL_CA_FILE"] == f"{mount}/ca.crt"
    assert public["SHORTLIST_INTERNAL_CERT_FILE"] == f"{mount}/tls.crt"
    allowed = parse_names(internal["SHORTLIST_INTERNAL_PEER_NAMES"])
    assert allowed and allowed <= {client["commonName"], *client["dnsNames"]}

    for name in INTERNAL:
        container = _container(docs, "Deployment", name)
        sources = {s["configMapRef"]["name"] for s in container["envFrom"]}
        assert "shortlist-internal-security" in sources, name
        _required_secret(docs, container, "SHORTLIST_INTERNAL_TOKEN_HASH", "internal-token-hash")
        server = certificates[_mounted_secret(docs, "Deployment", name, mount)]
        assert "server auth" in server["usages"] and "client auth" not in server["usages"]
        assert allowed.isdisjoint({server["commonName"], *server["dnsNames"]}), name
        # the name the gateway dials is in the certificate it verifies
        target = settings[f"SHORTLIST_{name.upper()}_ADDR"].removeprefix("dns:///")
        host = target.rsplit(":", 1)[0]
        assert host in server["dnsNames"], name
        # The service's own settings pass the policy for an address beyond loopback.
        env = {e["name"]: e.get("value", "set-from-a-secret") for e in container["env"]}
        values = {**settings, **internal, **env}
        fields_ = {f.name for f in fields(Settings)}
        kwargs = {
            k[len("SHORTLIST_") :].lower(): v
            for k, v in values.items()
            if k[len("SHORTLIST_") :].lower() in fields_ and k not in {"SHORTLIST_HEALTH_PORT"}
        }
        check_internal_policy(
            Settings.from_env({}, **kwargs), env[f"SHORTLIST_{name.upper()}_ADDR"]
        )


def test_redis_and_kafka_require_credentials_and_acls(docs):
    from kafka import KafkaProducer

    from shortlist.feedback.bus import client_security

    settings = one(docs, "ConfigMap", "shortlist-settings")["data"]
    redis = _container(docs, "StatefulSet", "redis")
    script = " ".join(redis["command"])
    assert "--user default off" in script and "--requirepass" not in script
    assert f'"~{settings["SHORTLIST_REDIS_PREFIX"]}*"' in script
    assert "-@dangerous" in script and "-@admin" in script
    _required_secret(docs, redis, "REDIS_PASSWORD", "redis-password")
    for name in (*INTERNAL, "gateway"):
        _required_secret(
            docs, _container(docs, "Deployment", name), "SHORTLIST_REDIS_URL", "redis-url"
        )

    assert settings["SHORTLIST_KAFKA_SECURITY_PROTOCOL"].startswith("SASL_")
    assert settings["SHORTLIST_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    for name, user in (("gateway", "gateway"), ("feedback", "feedback"), ("archiver", "archiver")):
        container = _container(docs, "Deployment", name)
        env = {e["name"]: e for e in container["env"]}
        assert env["SHORTLIST_KAFKA_USERNAME"]["value"] == user
        _required_secret(docs, container, "SHORTLIST_KAFKA_PASSWORD", f"kafka-{user}-password")
        options = client_security(
            Settings.from_env(
                {},
                kafka_security_protocol=settings["SHORTLIST_KAFKA_SECURITY_PROTOCOL"],
                kafka_sasl_mechanism=settings["SHORTLIST_KAFKA_SASL_MECHANISM"],
                kafka_username=user,
                kafka_password="from-the-secret",
            )
        )
        assert set(options) <= set(KafkaProducer.DEFAULT_CONFIG)  # kafka-python takes them

    spec = pod_spec(one(docs, "StatefulSet", "kafka"))
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    protocols = dict(x.split(":") for x in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    for listener in env["KAFKA_LISTENERS"].split(","):
        name, _, address = listener.partition("://")
        if protocols[name] == "PLAINTEXT":  # unauthenticated: the pod's loopback only
            assert address.startswith("127.0.0.1:"), listener
        else:  # between pods: SCRAM for the services, mutual TLS between brokers
            assert protocols[name] in {"SASL_PLAINTEXT", "SASL_SSL", "SSL"}, listener
    if "SSL" in protocols.values():
        assert env["KAFKA_SSL_CLIENT_AUTH"] == "required"
        assert env["KAFKA_SSL_TRUSTSTORE_LOCATION"].endswith("ca.crt")
    assert protocols["CLIENTS"] == "SASL_SSL" and env["KAFKA_SASL_ENABLED_MECHANISMS"]
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    (setup,) = [c for c in spec["initContainers"] if c["name"] == "kafka-setup"]
    acls = [line.split() for line in setup["command"][-1].splitlines() if line.startswith("acl ")]
    grants: dict[str, set[tuple[str, str]]] = {}
    for words in acls:
        principal = words[words.index("--allow-principal") + 1]
        ops = [words[n + 1] for n, w in enumerate(words) if w == "--operation"]
        kind = "group" if "--group" in words else "topic"
        grants.setdefault(principal, set()).update((kind, op) for op in ops)
    assert grants["User:gateway"] == {("topic", "Write"), ("topic", "Describe")}  # produce only
    assert ("topic", "Read") in grants["User:feedback"] and ("group", "Read") in grants[
        "User:feedback"
    ]
    assert grants["User:archiver"] == {("topic", "Read"), ("topic", "Describe"), ("group", "Read")}


def _acl_grants(docs) -> dict[str, set[tuple[str, str, str]]]:
    """(resource kind, resource name, operation) granted per principal by kafka-setup."""
    spec = pod_spec(one(docs, "StatefulSet", "kafka"))
    (setup,) = [c for c in spec["initContainers"] if c["name"] == "kafka-setup"]
    script = setup["command"][-1]
    topic = re.search(r"^\s*T=(\S+)$", script, re.M).group(1)
    grants: dict[str, set[tuple[str, str, str]]] = {}
    for line in script.splitlines():
        words = line.split()
        if not words or words[0] != "acl":
            continue
        principal = words[words.index("--allow-principal") + 1]
        kind = "group" if "--group" in words else "topic"
        name = words[words.index(f"--{kind}") + 1].replace("$T", topic)
        ops = [words[n + 1] for n, w in enumerate(words) if w == "--operation"]
        grants.setdefault(principal, set()).update((kind, name, op) for op in ops)
    return grants


def test_kafka_clients_use_scram_over_tls_with_the_internal_ca(docs):
    """SASL_SSL on the clients' listener (issue 27): the brokers present the certificate
    that names the bootstrap and advertised hosts, clients verify it with the CA file every
    Kafka client mounts, and present no certificate of their own (SCRAM authenticates)."""
    from shortlist.feedback.bus import client_security

    settings = one(docs, "ConfigMap", "shortlist-settings")["data"]
    assert settings["SHORTLIST_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    ca_file = settings["SHORTLIST_KAFKA_CA_FILE"]
    options = client_security(
        Settings.from_env(
            {},
            kafka_security_protocol="SASL_SSL",
            kafka_username="u",
            kafka_password="p",
            kafka_ca_file=ca_file,
        )
    )
    assert options["ssl_cafile"] == ca_file and options["security_protocol"] == "SASL_SSL"
    for kind, name in (("Deployment", n) for n in ("gateway", "feedback", "archiver")):
        spec = pod_spec(one(docs, kind, name))
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        volume = mounts[str(Path(ca_file).parent)]
        (secret,) = [v["secret"] for v in spec["volumes"] if v["name"] == volume]
        items = {i["path"] for i in secret.get("items", [{"path": "ca.crt"}])}
        assert Path(ca_file).name in items, name
    kafka = pod_spec(one(docs, "StatefulSet", "kafka"))
    env = {e["name"]: e.get("value") for e in kafka["containers"][0]["env"]}
    assert env["KAFKA_LISTENER_NAME_CLIENTS_SSL_CLIENT_AUTH"] == "none"
    assert env["KAFKA_SSL_CLIENT_AUTH"] == "required"  # between brokers: mutual TLS
    broker = {c["spec"]["secretName"]: c["spec"] for c in find(docs, "Certificate")}[
        _mounted_secret(docs, "StatefulSet", "kafka", "/etc/kafka-tls")
    ]
    assert "server auth" in broker["usages"]
    bootstrap = settings["SHORTLIST_KAFKA_BOOTSTRAP"].rsplit(":", 1)[0]
    assert bootstrap in broker["dnsNames"]
    command = " ".join(kafka["containers"][0]["command"])
    advertised = re.search(r"CLIENTS://\$\{HOSTNAME\}\.(\w+):9092", command).group(1)
    brokers = one(docs, "StatefulSet", "kafka")["spec"]["replicas"]
    for n in range(brokers):
        assert f"kafka-{n}.{advertised}" in broker["dnsNames"]


def test_kafka_acls_give_each_user_only_what_its_code_needs(docs):
    grants = _acl_grants(docs)
    topic = one(docs, "ConfigMap", "shortlist-settings")["data"]["SHORTLIST_FEEDBACK_TOPIC"]
    dlq = f"{topic}.dlq"  # Settings.dead_letter_topic's default
    assert Settings(feedback_topic=topic).dead_letter_topic == dlq
    assert grants["User:gateway"] == {("topic", topic, "Write"), ("topic", topic, "Describe")}
    # the worker consumes; it parks poison records in the DLQ; DeleteUser publishes FORGET
    # to the feedback topic (shortlist/services/feedback.py): nothing else, no DLQ reads
    assert grants["User:feedback"] == {
        ("topic", topic, "Read"),
        ("topic", topic, "Describe"),
        ("topic", topic, "Write"),
        ("topic", dlq, "Write"),
        ("topic", dlq, "Describe"),
        ("group", "shortlist-feedback", "Read"),
    }
    assert grants["User:archiver"] == {
        ("topic", topic, "Read"),
        ("topic", topic, "Describe"),
        ("group", "shortlist-archive", "Read"),
    }
    import inspect

    from shortlist.services import feedback as feedback_service

    source = inspect.getsource(feedback_service.FeedbackAdminServicer.DeleteUser)
    assert "Kind.FORGET" in source and "self.publisher.publish" in source


def test_redis_serves_tls_only_and_the_services_verify_it(docs, request):
    from shortlist.feedback.stores import RedisTLS

    settings = one(docs, "ConfigMap", "shortlist-settings")["data"]
    assert settings["SHORTLIST_REDIS_URL"].startswith("rediss://")
    sts = one(docs, "StatefulSet", "redis")
    spec = pod_spec(sts)
    (redis, exporter) = spec["containers"]
    script = " ".join(redis["command"])
    assert "--port 0 " in script and "--tls-port 6379" in script
    mount = "/etc/redis-tls"
    for flag, name in (("cert", "tls.crt"), ("key", "tls.key"), ("ca-cert", "ca.crt")):
        assert f"--tls-{flag}-file {mount}/{name}" in script
    certificates = {c["spec"]["secretName"]: c["spec"] for c in find(docs, "Certificate")}
    server = certificates[_mounted_secret(docs, "StatefulSet", "redis", mount)]
    assert "server auth" in server["usages"]
    assert "redis" in server["dnsNames"] and "127.0.0.1" in server["ipAddresses"]
    assert "--tls" in redis["readinessProbe"]["exec"]["command"]
    exporter_env = {e["name"]: e.get("value") for e in exporter["env"]}
    assert exporter_env["REDIS_ADDR"] == "rediss://127.0.0.1:6379"
    assert exporter_env["REDIS_EXPORTER_TLS_CA_CERT_FILE"] == f"{mount}/ca.crt"
    assert any(m["mountPath"] == mount for m in exporter["volumeMounts"])
    # every Redis client: a rediss:// URL and the CA it verifies the server with, mounted
    ca_file = settings["SHORTLIST_REDIS_CA_FILE"]
    assert RedisTLS(ca_file).options("rediss://redis:6379/0")["ssl_ca_certs"] == ca_file
    for name in (*INTERNAL, "gateway"):
        spec = pod_spec(one(docs, "Deployment", name))
        mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert str(Path(ca_file).parent) in mounts, name
    if request.node.callspec.params["docs"] != "base":  # the dev overlay's generated Secret
        import base64

        data = one(docs, "Secret", find(docs, "Secret")[0]["metadata"]["name"])["data"]
        url = base64.b64decode(data["redis-url"]).decode()
        assert url.startswith("rediss://shortlist:") and url.endswith("@redis:6379/0")
    for script_name in ("make-internal-secret.sh", "make-internal-certs.sh"):
        text = (K8S / script_name).read_text()
        assert "rediss://" in text or "shortlist-redis-tls" in text, script_name


def test_redis_cluster_overlay_has_the_acl_users_and_tls():
    from tests.integration.test_redis_tls import CLUSTER_ACL, PASSWORD

    docs = rendered("overlays/redis-cluster")
    sts = one(docs, "StatefulSet", "redis-cluster")
    spec = pod_spec(sts)
    redis, exporter = spec["containers"]
    script = " ".join(redis["command"])
    for flag in ("--port 0 ", "--tls-port 6379", "--tls-cluster yes", "--tls-replication yes"):
        assert flag in script, flag
    assert "--requirepass" not in script and "--masteruser replicator" in script
    # the same ACL rules the integration test runs on a local TLS cluster
    rules = " ".join(CLUSTER_ACL).replace(PASSWORD, "$REDIS_PASSWORD")
    normalized = re.sub(r"\\\s+", " ", redis["command"][-1]).replace('"', "")
    normalized = re.sub(r"\s+", " ", normalized.replace("\\|", "|"))
    for user_rule in rules.split("--user ")[1:]:
        assert f"--user {user_rule.strip()}" in normalized, user_rule
    assert "--user replicator on >$REDIS_PASSWORD -@all +psync +replconf +ping" in normalized
    for container in (redis, exporter):
        ref = _secret_ref(container, "REDIS_PASSWORD")
        assert ref == {"name": "shortlist-internal", "key": "redis-password"}
    exporter_env = {e["name"]: e.get("value") for e in exporter["env"]}
    assert exporter_env["REDIS_ADDR"].startswith("rediss://")
    assert exporter_env["REDIS_USER"] == "exporter"
    certificates = {c["spec"]["secretName"]: c["spec"] for c in find(docs, "Certificate")}
    cert = certificates[_mounted_secret(docs, "StatefulSet", "redis-cluster", "/etc/redis-tls")]
    announced = re.search(r'--cluster-announce-hostname "\$\{HOSTNAME\}\.([\w-]+)"', script)
    for n in range(sts["spec"]["replicas"]):
        assert f"redis-cluster-{n}.{announced.group(1)}" in cert["dnsNames"]
    assert "redis-cluster" in cert["dnsNames"] and "client auth" in cert["usages"]
    create = pod_spec(one(docs, "Job", "redis-cluster-create"))["containers"][0]
    assert "--user operator" in create["command"][-1] and "--tls" in create["command"][-1]
    assert _secret_ref(create, "REDISCLI_AUTH")["name"] == "shortlist-internal"


# ---------------------------------------------------------------- Prometheus and Grafana


def test_promtool_checks_the_alert_rules():
    promtool = require_tool("promtool")
    out = run(promtool, "check", "rules", PROMETHEUS / "alerts.yml").stdout
    assert "SUCCESS" in out


def test_promtool_runs_the_alert_rule_unit_tests():
    promtool = require_tool("promtool")
    out = run(promtool, "test", "rules", PROMETHEUS / "alerts_test.yml").stdout
    assert "SUCCESS" in out


def test_promtool_checks_the_local_scrape_config():
    promtool = require_tool("promtool")
    out = run(promtool, "check", "config", PROMETHEUS / "prometheus-local.yml").stdout
    assert "is valid prometheus config file" in out
    config = yaml.safe_load((PROMETHEUS / "prometheus-local.yml").read_text())
    targets = {
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    defaults = Settings()
    assert targets == {
        f"127.0.0.1:{getattr(defaults, f'{name}_metrics_port')}" for name in SERVICES
    }


def test_kubernetes_scrape_config(tmp_path):
    promtool = require_tool("promtool")
    path = PROMETHEUS / "prometheus.yml"
    result = run(promtool, "check", "config", path, check=False)
    # Debian's prometheus package is built without Kubernetes service discovery, so its
    # promtool cannot parse kubernetes_sd_configs; upstream builds check the whole file.
    debian_without_k8s_sd = "field kubernetes_sd_configs not found" in result.stdout + result.stderr
    assert result.returncode == 0 or debian_without_k8s_sd, result.stdout + result.stderr
    config = yaml.safe_load(path.read_text())
    local = yaml.safe_load((PROMETHEUS / "prometheus-local.yml").read_text())
    assert config["rule_files"] == local["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == local["scrape_configs"][0]["job_name"]
    assert job["kubernetes_sd_configs"][0]["role"] == "pod"
    for rule in job["relabel_configs"]:
        re.compile(rule.get("regex", "(.*)"))
    assert "service" not in {r.get("target_label") for r in job["relabel_configs"]}
    if debian_without_k8s_sd:  # check the rest of the file (and its relabelling) for real
        job = {k: v for k, v in job.items() if k != "kubernetes_sd_configs"}
        job["static_configs"] = [{"targets": ["127.0.0.1:9101"]}]
        shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
        (tmp_path / "prometheus.yml").write_text(
            yaml.safe_dump({**config, "scrape_configs": [job]})
        )
        run(promtool, "check", "config", tmp_path / "prometheus.yml")


PROMQL_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "bool", "offset"}
PROMQL_KEYWORDS |= {"group_left", "group_right", "inf", "nan", "Inf", "NaN"}
# Series Prometheus itself writes for every target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
# What the redis pod's redis_exporter sidecar exports (and alerts.yml reads).
PROMETHEUS_SERIES |= {"redis_memory_used_bytes", "redis_memory_max_bytes"}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, keywords,
    label names or values, range durations or Grafana variables."""
    e = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?[\w:]+\}?", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", e):
        if m.group() in PROMQL_KEYWORDS or e[m.end() :].lstrip().startswith("("):
            continue
        names.add(m.group())
    return names


def exported_metric_names() -> set[str]:
    """Every series name the services' /metrics can expose (shortlist.rpc.telemetry registers
    its metrics in the default registry, beside the process and platform collectors)."""
    from prometheus_client import REGISTRY

    import shortlist.rpc.telemetry  # noqa: F401

    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
        "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    }
    names = set()
    for family in REGISTRY.collect():
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
        names |= {s.name for s in family.samples}
    return names


def test_metric_name_parser():
    expr = (
        "histogram_quantile(0.99, sum by (service, le) (rate(shortlist_rpc_latency_seconds_bucket"
        '{service=~"$service", code!="OK"}[$__rate_interval]))) / on (service) group_left '
        "sum(rate(foo_total[5m] offset 1h)) > 0.5 and bar unless up"
    )
    assert metric_names(expr) == {"shortlist_rpc_latency_seconds_bucket", "foo_total", "bar", "up"}


def alert_expressions() -> list[str]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        if var["type"] == "query":
            text = query["query"] if isinstance(query, dict) else query
            exprs.append(re.sub(r"^label_values\(([^,]+),.*\)$", r"\1", text))
    return exprs


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_queried_metric_is_exported(source):
    exprs = alert_expressions() if source == "alerts" else dashboard_expressions()
    exported = exported_metric_names() | PROMETHEUS_SERIES
    used = set().union(*(metric_names(e) for e in exprs))
    missing = sorted(used - exported)
    assert not missing, f"{source} name metrics shortlist.rpc.telemetry does not export: {missing}"
    assert len(used) >= 6


def test_dashboard_queries_parse_as_promql(tmp_path):
    """promtool parses every panel query (Grafana's variables replaced by sample values)."""
    promtool = require_tool("promtool")
    grafana_vars = {
        "$__rate_interval": "1m",
        "$__interval": "15s",
        "$service": ".*",
        "$arm": ".*",
    }
    rules = []
    for i, expr in enumerate(dashboard_expressions()):
        for var, value in grafana_vars.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"unknown Grafana variable in {expr}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = run(promtool, "check", "rules", path).stdout
    assert f"SUCCESS: {len(rules)} rules found" in out


def test_alerts_cover_errors_latency_lag_and_fallbacks():
    text = " ".join(alert_expressions())
    for metric in (
        "shortlist_rpc_requests_total",
        "shortlist_rpc_latency_seconds_bucket",
        "shortlist_feedback_events_applied_total",
        "shortlist_fallbacks_total",
    ):
        assert metric in text


def test_dashboard_panels():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
    used = set().union(*(metric_names(e) for e in dashboard_expressions()))
    for metric in (
        "shortlist_rpc_requests_total",  # RPC rate by method and code
        "shortlist_rpc_latency_seconds_bucket",  # p50 / p99
        "shortlist_stage_latency_seconds_bucket",  # per stage
        "shortlist_fallbacks_total",
        "shortlist_feedback_events_published_total",  # consumer lag
        "shortlist_feedback_events_applied_total",
        "shortlist_model_info",
        "shortlist_candidates_returned_bucket",
        "process_resident_memory_bytes",
    ):
        assert metric in used, metric


# ---------------------------------------------------------------- container recipes


def shortlist_cli(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("shortlist")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "shortlist.tools.cli"]
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT
    )


@cache
def launchable_services() -> frozenset[str]:
    """The names the service entrypoint accepts, from its own usage message."""
    result = subprocess.run(
        [sys.executable, "-m", "shortlist.services", "no-such-service"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    match = re.search(r"\{([\w|]+)\}", result.stderr)
    assert match, result.stderr
    return frozenset(match.group(1).split("|"))


def test_training_job_options_are_ones_the_cli_accepts(dev):
    result = shortlist_cli("train", "--help")
    assert result.returncode == 0, result.stderr
    for doc in [*find(dev, "Job"), *find(dev, "CronJob")]:
        (container,) = pod_spec(doc)["containers"]
        for option in (a for a in container["command"][2:] if a.startswith("--")):
            assert re.search(rf"{option}\b", result.stdout), f"shortlist train has no {option}"


DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def test_one_dockerfile_starts_the_service_its_build_argument_names():
    text = DOCKERFILE.read_text()
    (entrypoint,) = re.findall(r"^ENTRYPOINT\s+(.+)$", text, re.M)
    # exec form, so SIGTERM reaches the server; the service comes from SHORTLIST_SERVICE
    assert json.loads(entrypoint) == ["python", "-m", "shortlist.services"]
    assert re.search(r"^\s+SHORTLIST_SERVICE=\$\{SERVICE\}", text, re.M)
    assert set(SERVICES) | {"archiver"} == launchable_services()  # archiver: feedback image
    # tooling stays out of the service images; the training image keeps the CLI
    assert 'if [ "$SERVICE" != "train" ]; then rm -rf shortlist/tools; fi' in text


def test_dockerfile_is_multi_stage_pinned_and_non_root():
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)$", text, re.M))
    images = [
        re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], image)
        for image in re.findall(r"^FROM\s+(\S+)", text, re.M)
    ]
    assert len(images) >= 2, "multi-stage build"
    for image in images:
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", image), image
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    # stubs are generated in the build stage, by setup.py's build step
    assert "setup.py" in text and "grpc_tools" in (ROOT / "setup.py").read_text()
    assert "requirements" in text and "pip install --no-deps ." in text
    defaults = Settings()
    exposed = {int(p) for line in re.findall(r"^EXPOSE\s+(.+)$", text, re.M) for p in line.split()}
    assert port_of(defaults.gateway_http_addr) in exposed
    for name in SERVICES:
        assert port_of(getattr(defaults, f"{name}_addr")) in exposed
        assert getattr(defaults, f"{name}_metrics_port") in exposed
        assert re.search(rf'SHORTLIST_{name.upper()}_ADDR="\[::\]:\d+"', text)
    # native thread pools sized like the local stack's, not by the node's cores
    for key, value in NATIVE_THREADS_ENV.items():
        assert re.search(rf"^\s+{key}={value}\b", text, re.M), key


def test_install_tools_script_is_valid_bash():
    script = ROOT / ".ci" / "install-tools.sh"
    assert os.access(script, os.X_OK)
    run("bash", "-n", script)
