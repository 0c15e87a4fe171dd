"""Settings from environment variables `SHORTLIST_<FIELD>` (and an optional KEY=VALUE file).

The same names appear in the Kubernetes ConfigMaps. Precedence: environment, then the file
named by SHORTLIST_CONFIG_FILE, then the defaults below.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path

PREFIX = "SHORTLIST_"


@dataclass(frozen=True)
class Settings:
    bundle: str = "artifacts"
    # "redis-kafka" for real services; "memory" only for the in-process demo.
    backend: str = "redis-kafka"
    # `?cluster=1` at the end (redis://host:port/0?cluster=1): a Redis Cluster, the URL naming
    # any of its nodes (docs/decisions/0037-redis-cluster-keys.md).
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "sl:"
    # TLS to Redis (a rediss:// URL): the CA that signed the servers' certificates (empty:
    # the system's CAs) and, where Redis asks for client certificates (tls-auth-clients),
    # this client's certificate and key. Set with a redis:// URL they are refused.
    redis_ca_file: str = ""
    redis_cert_file: str = ""
    redis_key_file: str = ""
    # A user's live state (seen, disliked, history, kinds, folded-in vectors) expires this
    # long after their last feedback; 0 keeps it for ever.
    state_ttl_s: int = 90 * 86400
    kafka_bootstrap: str = "127.0.0.1:9092"
    feedback_topic: str = "shortlist.feedback"
    feedback_group: str = "shortlist-feedback"
    feedback_partitions: int = 4
    # Copies of each feedback partition when the service creates the topic (k8s: 3, with
    # the brokers' min.insync.replicas 2 behind acks=all); the local broker has one.
    feedback_replication: int = 1
    # 1: the feedback producer is idempotent (a retried send is written once). Apache Kafka
    # supports it (k8s turns it on); the local tansu broker refuses InitProducerId.
    kafka_idempotence: int = 0
    # Records the consumer cannot use are parked here; empty: "<feedback_topic>.dlq".
    feedback_dlq_topic: str = ""
    # Bigger feedback records are parked undecoded (an event is about 100 bytes).
    feedback_max_record_bytes: int = 16_384
    # Poison records (shortlist.feedback.worker): a batch whose apply raises (the store
    # answering, not away) is tried this many times with backoff from retry_backoff_ms
    # (doubling), then event by event; an event that still fails is parked with the reason.
    feedback_apply_attempts: int = 4
    feedback_retry_backoff_ms: int = 100
    # More poison records than this in a row, with no event applied between them, is taken
    # for a fault of the worker, not of the records: it stops parking and retries.
    feedback_poison_limit: int = 20
    # Readiness: the feedback service reports NOT_SERVING while its consumer has held
    # records for longer than this without committing them.
    feedback_stuck_s: int = 120
    gateway_addr: str = "127.0.0.1:50051"
    # The HTTP/JSON API (shortlist.services.http_api), served by the gateway process on its
    # own port; empty: none. Its calls go to the gateway's gRPC server over loopback.
    gateway_http_addr: str = "127.0.0.1:8080"
    # Deadline of a call that came in over HTTP (HTTP has no deadline header of its own).
    http_timeout_ms: int = 5000
    retrieval_addr: str = "127.0.0.1:50052"
    ranking_addr: str = "127.0.0.1:50053"
    feedback_addr: str = "127.0.0.1:50054"
    metrics_host: str = "127.0.0.1"
    gateway_metrics_port: int = 9101
    retrieval_metrics_port: int = 9102
    ranking_metrics_port: int = 9103
    feedback_metrics_port: int = 9104
    # 1: the gateway runs retrieval and ranking in its own process and calls them without
    # gRPC (one node, few cores: two hops' serialization and transport saved per call).
    colocate: int = 0
    # Gateway processes `shortlist up` starts on the one gateway port (SO_REUSEPORT; the
    # kernel spreads connections over them); worker w serves metrics on port + w.
    gateway_workers: int = 1
    # Non-zero: worker w also listens on its own port gateway_worker_port + w, so that a
    # client can spread calls evenly over the workers (gRPC round robin over addresses)
    # instead of relying on how the kernel hashes connections to the shared port.
    gateway_worker_port: int = 0
    # Servers close each client connection after this long (0: never), so that clients
    # resolve the name again and spread calls over pods added since (k8s: 30000).
    max_connection_age_ms: int = 0
    max_k: int = 100
    candidates: int = 200
    # Search results the retrieval service keeps per bundle (shortlist.retrieval.memo; exact:
    # a user's feedback changes the key); 4,096 take about 8 MB and hold the repeats a
    # worker sees in the 30 s load test; 0 turns the memo off.
    retrieval_memo_entries: int = 4_096
    # 1: a trained user whose vector feedback has not moved is answered from the bundle's
    # precomputed shortlist (shortlist.retrieval.precomputed) instead of an ANN search;
    # 0: always search.
    retrieval_precomputed: int = 1
    # How often the ranking service reads the items' live like counts
    # (shortlist.ranking.item_likes; the features lag feedback by about this much); 0 reads
    # them on every request.
    item_likes_refresh_ms: int = 1000
    max_candidates: int = 1000
    max_events: int = 1000
    max_id_length: int = 256
    max_context_entries: int = 32
    retrieval_timeout_ms: int = 150
    ranking_timeout_ms: int = 150
    publish_timeout_ms: int = 3000
    feedback_batch: int = 500
    # How long the broker may hold an empty fetch. tansu holds it the whole time even when
    # events arrive, so this bounds freshness; shorter waits cost idle CPU for tansu and the
    # consumer (docs/decisions/0014-feedback-fetch-wait.md).
    feedback_fetch_wait_ms: int = 40
    # The feedback archive (shortlist.feedback.archive): the archiver's own consumer group,
    # where its Parquet files go, and when a file is written: after this many events or
    # this long since the first unwritten one, whichever comes first.
    archive_group: str = "shortlist-archive"
    archive_path: str = ".run/archive"
    archive_file_events: int = 100_000
    archive_flush_ms: int = 60_000
    archiver_addr: str = "127.0.0.1:50055"  # grpc.health.v1 only
    archiver_metrics_port: int = 9105
    log_format: str = "text"
    # Security (shortlist.rpc.security). Plaintext and keyless serving of the gateway are allowed
    # on loopback addresses or with insecure=1 only.
    insecure: int = 0
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""  # set: clients must present a certificate signed by it
    internal_ca_file: str = ""  # gateway: verify internal services over TLS with this CA
    # sha256 hex of each accepted API key, comma-separated; `<hash>:recommend+feedback` limits
    # a key to those scopes (a hash alone keeps all public scopes: recommend and feedback).
    api_key_hashes: str = ""
    # User tokens (HS256 JWTs in `authorization: Bearer`): set, the gateway verifies a token
    # sent with a call and binds the call to its `sub`; empty: tokens are off.
    jwt_secret: str = ""
    jwt_audience: str = ""  # set: tokens must carry this `aud`
    jwt_issuer: str = ""  # set: tokens must carry this `iss`
    jwt_leeway_s: int = 0  # clock skew allowed on `exp`
    jwt_required: int = 0  # 1: every call needs a user token, even one with an API key
    internal_token: str = ""  # gateway: the credential it sends to internal services
    internal_token_hash: str = ""  # internal services: sha256 hex of the accepted token
    # Gateway: the client certificate it presents to internal services (mutual TLS);
    # empty: its own tls_cert_file / tls_key_file.
    internal_cert_file: str = ""
    internal_key_file: str = ""
    # Internal services: the client-certificate identities (a DNS/URI SAN, else the CN)
    # allowed to call them, comma-separated, e.g. the gateway's; empty: any certificate
    # the client CA signed. Needs tls_client_ca_file.
    internal_peer_names: str = ""
    # Kafka client security (every producer, consumer and admin client): PLAINTEXT, SSL,
    # SASL_PLAINTEXT or SASL_SSL; SASL user and password (e.g. SCRAM-SHA-512); for SSL and
    # SASL_SSL the CA that signed the brokers' certificates (empty: the system's CAs) and an
    # optional client certificate and key (brokers that ask for one). Set with a plaintext
    # protocol, the files are refused.
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_username: str = ""
    kafka_password: str = ""
    kafka_ca_file: str = ""
    kafka_cert_file: str = ""
    kafka_key_file: str = ""
    rate_limit_per_s: int = 0  # per client (API key, else peer address); 0: no limit
    rate_limit_burst: int = 0  # bucket size; 0: the same as rate_limit_per_s
    # Feedback events per second per client (a SendFeedback batch takes one per event);
    # 0: no limit. Burst 0: the larger of the rate and max_events. Both limits hold per
    # gateway process (pod or worker): the cluster allows the sum over processes.
    rate_limit_events_per_s: int = 0
    rate_limit_events_burst: int = 0
    # glibc malloc in a service process (shortlist.services.launch.tune_allocator): at most
    # this many arenas (0: glibc's 8 per core, one per busy thread), and blocks from this
    # many bytes up taken with mmap and unmapped when freed (0: glibc's threshold, which
    # rises to 32 MiB after the first large free, so that a swap's large temporaries then
    # stay in the heap).
    malloc_arena_max: int = 2
    malloc_mmap_threshold: int = 131_072
    bundle_poll_ms: int = 2000  # reload when <bundle>/LATEST changes; 0: only on SIGHUP
    # HMAC key bundles are signed with (training) and must be signed with (services);
    # empty: file digests are still checked, no signature asked for
    bundle_key: str = ""
    # 1: gRPC server reflection on the public gateway port too (grpcurl without .proto
    # files); off by default: it lists the API to anyone who can connect. The internal
    # services always offer it (behind mutual TLS). `shortlist up` turns it on (loopback).
    reflection: int = 0
    # A plaintext port serving grpc.health.v1 only (0: none): kubelet gRPC probes cannot
    # speak TLS, so a TLS server is probed there. It exposes nothing but health.
    health_port: int = 0
    # A/B test: a second bundle served to a stable ab_share_b (0..1) of users (shortlist.bundle.ab).
    ab_bundle_b: str = ""
    ab_share_b: float = 0.0
    ab_salt: str = "ab1"
    # Web console (shortlist.services.console): sha256 hex of the keys that may send likes and
    # dislikes from it (`<hash>:feedback` form as api_key_hashes; keys of api_key_hashes with
    # the feedback scope are accepted too); none configured: the console is read-only.
    console_key_hashes: str = ""
    # 1: the gateway's HTTP port also serves the web console at /console. Off unless set:
    # its pages show users' histories to whoever reaches the port (`shortlist up` turns it
    # on for its loopback stack).
    console: int = 0
    # The key the console sends with its own read calls when the gateway checks API keys.
    console_api_key: str = ""
    # Reports and plots the console links (`make bench-quality` writes here; point
    # `shortlist loadtest --plot` into it too).
    reports_dir: str = "reports"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        env = dict(os.environ if env is None else env)
        values: dict[str, str] = {}
        config_file = env.get(PREFIX + "CONFIG_FILE")
        if config_file:
            values.update(_read_env_file(Path(config_file)))
        values.update({k: v for k, v in env.items() if k.startswith(PREFIX)})
        kwargs: dict[str, object] = {}
        for f in fields(cls):
            raw = values.get(PREFIX + f.name.upper())
            if raw is None:
                continue
            try:
                if f.type in ("int", int):
                    kwargs[f.name] = int(raw)
                elif f.type in ("float", float):
                    kwargs[f.name] = float(raw)
                else:
                    kwargs[f.name] = raw
            except ValueError:
                kind = "an integer" if f.type in ("int", int) else "a number"
                raise ValueError(f"{PREFIX}{f.name.upper()} must be {kind}, got {raw!r}") from None
        kwargs.update(overrides)
        settings = cls(**kwargs)
        if not 0.0 <= settings.ab_share_b <= 1.0:
            raise ValueError(f"{PREFIX}AB_SHARE_B must be in 0..1, got {settings.ab_share_b}")
        return settings

    @property
    def dead_letter_topic(self) -> str:
        return self.feedback_dlq_topic or f"{self.feedback_topic}.dlq"

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The settings as environment variables, for starting child processes."""
        return {PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in fields(self)}


def _read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out
