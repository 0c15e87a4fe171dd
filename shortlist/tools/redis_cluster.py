"""A local Redis Cluster of three masters (no replicas) from the installed redis-server, for
tests and benchmarks: the same engine a deployment runs, on free loopback ports; with
`tls` (the CA, certificate and key files), every node speaks TLS only (`--port 0`), to
clients and on the cluster bus, and asks clients for a certificate the CA signed."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from shortlist.tools.stack import port_open, wait_for


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536 and not port_open("127.0.0.1", port + 10000):
            return port


class LocalRedisCluster:
    """`start()` runs `masters` redis-server processes with cluster-enabled and joins them
    with `redis-cli --cluster create`; `stop()` ends them and removes their files."""

    def __init__(
        self,
        masters: int = 3,
        tls: tuple[str, str, str] | None = None,
        server_args: Sequence[str] = (),
        cli_auth: tuple[str, str] | None = None,
    ) -> None:
        self.masters = masters
        self.tls = tls  # (CA file, certificate file, key file)
        self.server_args = list(server_args)  # e.g. ACL users (`--user ...`)
        self.cli_auth = cli_auth  # (user, password) redis-cli creates the cluster as
        self.ports: list[int] = []
        self._procs: list[subprocess.Popen] = []
        self._dir: Path | None = None

    @property
    def url(self) -> str:
        """The store URL: any master is a startup node; `cluster=1` picks the cluster client."""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self.ports[0]}/0?cluster=1"

    def _server_tls(self, port: int) -> list[str]:
        if not self.tls:
            return ["--port", str(port)]
        ca, cert, key = self.tls
        return ["--port", "0", "--tls-port", str(port), "--tls-cluster", "yes"] + [
            "--tls-replication", "yes", "--tls-ca-cert-file", ca, "--tls-cert-file", cert,
            "--tls-key-file", key, "--tls-auth-clients", "yes",
        ]  # fmt: skip

    def _cli(self) -> list[str]:
        """redis-cli with this cluster's transport options and user."""
        out = ["redis-cli"]
        if self.tls:
            ca, cert, key = self.tls
            out += ["--tls", "--cacert", ca, "--cert", cert, "--key", key]
        if self.cli_auth:
            user, password = self.cli_auth
            out += ["--user", user, "--pass", password, "--no-auth-warning"]
        return out

    def start(self) -> None:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if not server or not cli:
            raise RuntimeError("a Redis Cluster needs redis-server and redis-cli installed")
        self._dir = Path(tempfile.mkdtemp(prefix="shortlist-redis-cluster-"))
        for _ in range(self.masters):
            port = _free_cluster_port()
            node_dir = self._dir / str(port)
            node_dir.mkdir()
            argv = [server, *self._server_tls(port), "--bind", "127.0.0.1"]
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            argv += ["--save", "", "--appendonly", "no", "--dir", str(node_dir)]
            argv += self.server_args
            log = open(node_dir / "redis.log", "wb")  # noqa: SIM115 (the child keeps it)
            self._procs.append(
                subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=node_dir)
            )
            self.ports.append(port)
        for port in self.ports:
            wait_for(lambda p=port: port_open("127.0.0.1", p), 15, f"redis on {port}")
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        subprocess.run(
            [
                *self._cli(),
                "--cluster",
                "create",
                *nodes,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_for(self._ok, 30, "redis cluster state ok")

    def _ok(self) -> bool:
        for port in self.ports:
            out = subprocess.run(
                [*self._cli(), "-p", str(port), "cluster", "info"], capture_output=True, text=True
            ).stdout
            if "cluster_state:ok" not in out:
                return False
        return True

    def stop(self) -> None:
        for proc in self._procs:
            proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs = []
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
