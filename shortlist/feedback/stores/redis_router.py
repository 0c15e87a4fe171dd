"""Commands to a single Redis or to a Redis Cluster, hand-packed and pipelined.

The state store sends many small commands per call (a Lua script per user, per counter
shard); each comes with the key that routes it. With one Redis they go out as one payload
on one pooled connection; in a Redis Cluster they are grouped by the master of their key's
slot (redis-py's `RedisCluster` keeps the slot map), every group is sent before any reply
is read, so a call costs one round trip to the slowest master. A `MOVED` reply (a slot
moved: the command did not run) refreshes the slot map and sends the command again, an
`ASK` reply (a slot being migrated) sends it to the named node after `ASKING`, and
`NOSCRIPT` (a script cache emptied by a restart or failover) loads the script there.

TLS: a `rediss://` URL, with the CA that signed the servers' certificates and, for Redis's
`tls-auth-clients`, a client certificate (`RedisTLS`, from the settings `redis_ca_file`,
`redis_cert_file`, `redis_key_file`); the cluster client uses them on every node it
follows.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

import hiredis
import redis
from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)

from shortlist.feedback.stores.base import StoreUnavailable
from shortlist.rpc.telemetry import REDIS_LATENCY

# Replies that say the server cannot serve now: the caller falls back or retries later.
_UNAVAILABLE = ("LOADING", "BUSY", "MASTERDOWN", "READONLY", "OOM", "CLUSTERDOWN", "TRYAGAIN")
# redis-py parses most of those into their own classes and strips the prefix from the
# message (an OOM reply reads "command not allowed when used memory > 'maxmemory'"), so
# they are known by class too: without it, Redis at maxmemory looked like a poison record.
_UNAVAILABLE_ERRORS = (
    OutOfMemoryError,
    BusyLoadingError,
    ReadOnlyError,
    ClusterDownError,  # MASTERDOWN too
    TryAgainError,
)
_TRUE = {"1", "true", "yes", "on"}

Command = tuple[str, Sequence[bytes | str | int]]  # (routing key, command and arguments)


def split_cluster_flag(url: str) -> tuple[str, bool]:
    """`url` without its `cluster` query parameter, and whether it asked for a cluster."""
    parts = urlparse(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    cluster = any(k == "cluster" and v.lower() in _TRUE for k, v in query)
    rest = urlencode([(k, v) for k, v in query if k != "cluster"])
    return urlunparse(parts._replace(query=rest)), cluster


@dataclass(frozen=True)
class RedisTLS:
    """TLS files of a `rediss://` connection: the CA that signed the servers' certificates
    (empty: the system's CAs) and an optional client certificate and key (mutual TLS)."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    @classmethod
    def from_settings(cls, settings: Any) -> RedisTLS:
        return cls(settings.redis_ca_file, settings.redis_cert_file, settings.redis_key_file)

    def options(self, url: str) -> dict[str, Any]:
        """redis-py connection options for `url`. ValueError naming the setting when the
        files are set for a plaintext `redis://` URL (they would be ignored, the traffic
        unencrypted) or a certificate comes without its key."""
        scheme = urlparse(url).scheme
        if scheme != "rediss":
            if self.ca_file or self.cert_file or self.key_file:
                raise ValueError(
                    "SHORTLIST_REDIS_CA_FILE/CERT_FILE/KEY_FILE are set but SHORTLIST_REDIS_URL "
                    f"is {scheme}://: use rediss:// for TLS"
                )
            return {}
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("SHORTLIST_REDIS_CERT_FILE and SHORTLIST_REDIS_KEY_FILE go together")
        out: dict[str, Any] = {"ssl_cert_reqs": "required"}
        if self.ca_file:
            out["ssl_ca_certs"] = self.ca_file
        if self.cert_file:
            out |= {"ssl_certfile": self.cert_file, "ssl_keyfile": self.key_file}
        return out


def redis_client(url: str, tls: RedisTLS | None = None, **options: Any) -> redis.Redis:
    """A plain redis-py client of one Redis at `url` (tools, scans), TLS as `tls` says."""
    return redis.Redis.from_url(url, **(tls or RedisTLS()).options(url), **options)


def pack_command(args: Sequence[bytes | str | int]) -> bytes:
    """RESP encoding of one command (hiredis's C encoder: a call sends hundreds)."""
    return hiredis.pack_command(tuple(args))


class RedisRouter:
    """Sends routed commands to a single Redis or a Redis Cluster (`?cluster=1` in the URL).

    Scripts are sent by EVALSHA with their routing key as the one declared key; `scripts`
    maps each SHA to its text, loaded on a node when the node answers NOSCRIPT."""

    def __init__(
        self,
        url: str,
        timeout_s: float,
        scripts: Mapping[str, str],
        tls: RedisTLS | None = None,
    ) -> None:
        self.url, self.cluster = split_cluster_flag(url)
        self.timeout_s = timeout_s
        self._tls_options = (tls or RedisTLS()).options(self.url)
        self.scripts = dict(scripts)
        self._single: redis.Redis | None = None
        self._cluster: RedisCluster | None = None
        self._stale = False  # the slot map needs a refresh before the next call
        self.redirects = {"moved": 0, "ask": 0}  # replies that sent a command elsewhere
        if not self.cluster:
            self._single = redis.Redis.from_url(
                self.url,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                health_check_interval=30,
                **self._tls_options,
            )

    @property
    def client(self) -> redis.Redis | RedisCluster:
        """The redis-py client (SCAN and the like); a cluster client connects on first use."""
        if self._single is not None:
            return self._single
        if self._cluster is None:
            try:
                self._cluster = RedisCluster.from_url(
                    self.url,
                    socket_timeout=self.timeout_s,
                    socket_connect_timeout=self.timeout_s,
                    **self._tls_options,
                )
            except (redis.RedisError, RedisClusterException, OSError) as exc:
                raise StoreUnavailable(f"redis cluster: {exc}") from exc
        elif self._stale:
            try:
                self._cluster.nodes_manager.initialize()
            except (redis.RedisError, RedisClusterException, OSError) as exc:
                raise StoreUnavailable(f"redis cluster: {exc}") from exc
            self._stale = False
        return self._cluster

    def execute(self, commands: Sequence[Command], operation: str) -> list:
        """The replies of `commands`, in order (one round trip per master touched).
        StoreUnavailable when a server cannot be reached or cannot serve now."""
        start = time.perf_counter()
        try:
            return self._execute(commands)
        finally:
            REDIS_LATENCY.labels(operation).observe(time.perf_counter() - start)

    def _execute(
        self, commands: Sequence[Command], asking: dict[int, tuple[str, int]] | None = None
    ) -> list:
        """`asking`: commands to send to a named node after ASKING (an ASK reply's)."""
        replies: list = [None] * len(commands)
        todo = list(range(len(commands)))
        asking = dict(asking or {})
        for attempt in range(5):
            groups = self._groups(commands, todo, asking)
            self._round_trip(commands, groups, asking, replies)
            sent_to, todo, asking = asking, [], {}
            loads: list[Command] = []
            load_at: dict[int, tuple[str, int]] = {}
            loaded: set[tuple[str, tuple[str, int] | None]] = set()
            for i, reply in enumerate(replies):
                if not isinstance(reply, redis.ResponseError):
                    continue
                if isinstance(reply, NoScriptError):
                    sha, node = commands[i][1][1], sent_to.get(i)
                    if node is not None:
                        asking[i] = node  # still migrating: load and run it there
                    if (sha, node) not in loaded:
                        loaded.add((sha, node))
                        if node is not None:
                            load_at[len(loads)] = node
                        loads.append((commands[i][0], ("SCRIPT", "LOAD", self.scripts[sha])))
                elif isinstance(reply, MovedError):
                    self._stale = True
                    self.redirects["moved"] += 1
                elif isinstance(reply, AskError):
                    asking[i] = reply.node_addr
                    self.redirects["ask"] += 1
                elif isinstance(reply, _UNAVAILABLE_ERRORS) or str(reply).startswith(_UNAVAILABLE):
                    raise StoreUnavailable(f"redis: {reply}")
                else:
                    raise reply
                todo.append(i)
            if not todo:
                return replies
            if loads:
                for reply in self._execute(loads, load_at):
                    if isinstance(reply, redis.ResponseError):
                        raise reply
            if self._stale and attempt:
                time.sleep(0.05 * attempt)  # a failover or resharding settling
        raise StoreUnavailable(f"redis: {len(todo)} commands still redirected after retries")

    def _groups(
        self, commands: Sequence[Command], todo: list[int], asking: dict[int, tuple[str, int]]
    ) -> list[tuple[redis.ConnectionPool, list[int], bool]]:
        """(connection pool, commands, send ASKING first) per node."""
        if self._single is not None:
            return [(self._single.connection_pool, todo, False)]
        client = self.client
        groups: dict[tuple[str, bool], tuple[redis.ConnectionPool, list[int], bool]] = {}
        try:
            for i in todo:
                if i in asking:
                    host, port = asking[i]
                    node = client.get_node(host=host, port=port)
                    if node is None:  # a node the slot map does not know yet
                        self._stale = True
                        raise StoreUnavailable(f"redis cluster: unknown node {host}:{port}")
                else:
                    node = client.get_node_from_key(commands[i][0])
                group = groups.get((node.name, i in asking))
                if group is None:
                    pool = client.get_redis_connection(node).connection_pool
                    group = groups[node.name, i in asking] = (pool, [], i in asking)
                group[1].append(i)
        except (redis.RedisError, RedisClusterException) as exc:
            self._stale = True
            raise StoreUnavailable(f"redis cluster: {exc}") from exc
        return list(groups.values())

    def _round_trip(self, commands, groups, asking, replies) -> None:
        """Send every group, then read every reply (errors kept as the reply)."""
        held = []
        try:
            for pool, indices, ask in groups:
                conn = pool.get_connection()  # connects when the pool has no idle one
                held.append((pool, conn))
                payload = []
                for i in indices:
                    if ask:
                        payload.append(pack_command(("ASKING",)))
                    payload.append(pack_command(commands[i][1]))
                conn.send_packed_command([b"".join(payload)])
            for (_, conn), (_, indices, ask) in zip(held, groups):
                for i in indices:
                    if ask:
                        conn.read_response()  # OK to ASKING
                    try:
                        replies[i] = conn.read_response()
                    except redis.ResponseError as exc:
                        replies[i] = exc
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            for _, conn in held:
                conn.disconnect()  # replies may still be on the wire
            self._stale = self.cluster
            raise StoreUnavailable(f"redis: {exc}") from exc
        finally:
            for pool, conn in held:
                pool.release(conn)

    def scan(self, pattern: str) -> list[bytes]:
        """Every key matching `pattern` (every master of a cluster)."""
        try:
            return list(self.client.scan_iter(match=pattern, count=1000))
        except (redis.RedisError, RedisClusterException, OSError) as exc:
            self._stale = self.cluster
            raise StoreUnavailable(f"redis: {exc}") from exc

    def ping(self) -> None:
        try:
            if self._single is not None:
                self._single.ping()
            else:
                self.client.ping(target_nodes=RedisCluster.PRIMARIES)
        except (redis.RedisError, RedisClusterException, OSError) as exc:
            self._stale = self.cluster
            raise StoreUnavailable(f"redis: {exc}") from exc

    def close(self) -> None:
        if self._single is not None:
            self._single.close()
        if self._cluster is not None:
            self._cluster.close()
