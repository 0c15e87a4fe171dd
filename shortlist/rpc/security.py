"""Transport security and access control for the gRPC servers.

- TLS: a server certificate and key from files (Kubernetes Secrets mount as files); with a
  client CA the server requires client certificates signed by it (mutual TLS).
- The public gateway checks API keys (`authorization: Bearer <key>` or `x-api-key`); only
  their sha256 hex digests are configured (`api_key_hashes`, comma-separated), so revoking a
  key is removing its hash. Internal services (retrieval, ranking, feedback admin) accept
  only calls carrying the shared internal token (`x-shortlist-internal`), whose hash they
  hold and which only the gateway's channels send.
- Per-client token buckets (by API key, or by peer address when no keys are configured).
- Health checks and server reflection stay open; keys and tokens are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

API_KEY_HEADER = "x-api-key"
INTERNAL_HEADER = "x-shortlist-internal"
OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]", "ip6-localhost"}


class InsecureConfiguration(RuntimeError):
    """The settings would expose a plaintext or unauthenticated server beyond loopback."""


def hash_key(key: str) -> str:
    """The form in which keys and tokens are configured: sha256 hex of the UTF-8 key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_hashes(value: str) -> frozenset[str]:
    hashes = frozenset(h.strip().lower() for h in value.split(",") if h.strip())
    bad = [h for h in hashes if len(h) != 64 or any(c not in "0123456789abcdef" for c in h)]
    if bad:
        # Do not echo the value: a raw key pasted by mistake must not land in a log.
        raise ValueError(f"{len(bad)} configured key hash(es) are not sha256 hex digests")
    return hashes


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0] if ":" in address else address
    host = host.strip()
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def server_credentials(settings: Any) -> grpc.ServerCredentials | None:
    """TLS credentials from `tls_cert_file`/`tls_key_file` (None: plaintext); with
    `tls_client_ca_file` clients must present a certificate signed by that CA."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if not cert and not key:
        if settings.tls_client_ca_file:
            raise InsecureConfiguration("tls_client_ca_file needs tls_cert_file and tls_key_file")
        return None
    if not (cert and key):
        raise InsecureConfiguration("TLS needs both tls_cert_file and tls_key_file")
    client_ca = _read(settings.tls_client_ca_file) if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(_read(key), _read(cert))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def check_gateway_policy(settings: Any, address: str) -> None:
    """Plaintext or keyless serving is allowed on loopback (local development) or when
    `insecure=1` says so explicitly; anywhere else it is refused."""
    if settings.insecure or is_loopback(address):
        return
    missing = []
    if not settings.tls_cert_file:
        missing.append("TLS (tls_cert_file/tls_key_file)")
    if not settings.api_key_hashes.strip():
        missing.append("API keys (api_key_hashes)")
    if missing:
        raise InsecureConfiguration(
            f"the gateway would listen on {address} without {' and '.join(missing)}; "
            "configure them, or set SHORTLIST_INSECURE=1 for local development"
        )


def _abort_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str):
    """A handler of the same kind as `handler` that answers `code` without running it."""

    def abort(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort)
    return grpc.stream_stream_rpc_method_handler(abort)


def _metadata(details: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in details.invocation_metadata or ():
        if isinstance(value, str):
            out.setdefault(key.lower(), value)
    return out


def api_key_from(metadata: dict[str, str]) -> str | None:
    auth = metadata.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    key = metadata.get(API_KEY_HEADER, "").strip()
    return key or None


class KeyCheck:
    """Membership of a key's hash in the configured set, compared in constant time."""

    def __init__(self, hashes: Iterable[str]) -> None:
        self._hashes = [bytes.fromhex(h) for h in hashes]

    def client_of(self, key: str) -> str | None:
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        found = None
        for h in self._hashes:
            if hmac.compare_digest(digest, h):
                found = h.hex()[:16]  # the client's name in rate limits: a hash prefix
        return found


class AuthInterceptor(grpc.ServerInterceptor):
    """API keys on the public gateway: UNAUTHENTICATED without a configured key."""

    def __init__(self, hashes: Iterable[str]) -> None:
        self.check = KeyCheck(hashes)

    def intercept_service(self, continuation: Callable, details: Any) -> Any:
        handler = continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        key = api_key_from(_metadata(details))
        if key is None:
            return _abort_handler(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing API key: send metadata 'authorization: Bearer <key>' or 'x-api-key'",
            )
        if self.check.client_of(key) is None:
            log.debug("rejected a call to %s with an unknown API key", details.method)
            return _abort_handler(
                handler, grpc.StatusCode.UNAUTHENTICATED, "invalid or revoked API key"
            )
        return handler


class InternalTokenInterceptor(grpc.ServerInterceptor):
    """Internal services: only callers with the shared internal token (the gateway)."""

    def __init__(self, token_hash: str) -> None:
        self.check = KeyCheck(parse_hashes(token_hash))

    def intercept_service(self, continuation: Callable, details: Any) -> Any:
        handler = continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        token = _metadata(details).get(INTERNAL_HEADER, "")
        if not token or self.check.client_of(token) is None:
            return _abort_handler(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "internal service: calls are accepted from the gateway only "
                f"(missing or wrong {INTERNAL_HEADER} credential)",
            )
        return handler


class TokenBuckets:
    """One token bucket per client: `rate` tokens a second up to `burst`. Bounded memory:
    the least recently seen clients are forgotten beyond `max_clients` (a forgotten client
    starts again with a full bucket)."""

    def __init__(
        self,
        rate: float,
        burst: float,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = float(rate)
        self.burst = float(max(burst, 1))
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0 when a token was taken, else the seconds until the next one."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(client)
            if bucket is None:
                bucket = [self.burst, now]
                self._buckets[client] = bucket
                if len(self._buckets) > self.max_clients:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(client)
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
            if tokens >= 1:
                bucket[0] = tokens - 1
                return 0.0
            bucket[0] = tokens
            return (1 - tokens) / self.rate if self.rate > 0 else float("inf")

    def __len__(self) -> int:
        return len(self._buckets)


def peer_host(peer: str) -> str:
    """'ipv4:127.0.0.1:5123' -> 'ipv4:127.0.0.1'; 'ipv6:[::1]:5123' -> 'ipv6:[::1]'."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer


class RateLimitInterceptor(grpc.ServerInterceptor):
    """RESOURCE_EXHAUSTED once a client's bucket is empty. The client is its API key (by hash
    prefix) when one is sent, otherwise its peer address without the port."""

    def __init__(self, rate: float, burst: float, hashes: Iterable[str] = ()) -> None:
        self.buckets = TokenBuckets(rate, burst)
        self.check = KeyCheck(hashes)
        self.by_key = bool(self.check._hashes)

    def intercept_service(self, continuation: Callable, details: Any) -> Any:
        handler = continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        if handler.unary_unary is None:
            return handler
        client = None
        if self.by_key:
            key = api_key_from(_metadata(details))
            client = self.check.client_of(key) if key else None
        inner = handler.unary_unary
        buckets = self.buckets

        def limited(request: Any, context: grpc.ServicerContext) -> Any:
            name = client or peer_host(context.peer())
            wait = buckets.take(name)
            if wait:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"rate limit of {buckets.rate:g} calls/s (burst {buckets.burst:g}) "
                    f"exceeded; retry in {wait:.3f}s",
                )
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            limited,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def server_interceptors(name: str, settings: Any) -> list[grpc.ServerInterceptor]:
    """Access control for service `name` from the settings (outermost first)."""
    if name == "gateway":
        hashes = parse_hashes(settings.api_key_hashes)
        out: list[grpc.ServerInterceptor] = []
        if hashes:
            out.append(AuthInterceptor(hashes))
        if settings.rate_limit_per_s > 0:
            burst = settings.rate_limit_burst or settings.rate_limit_per_s
            out.append(RateLimitInterceptor(settings.rate_limit_per_s, burst, hashes))
        return out
    if settings.internal_token_hash:
        return [InternalTokenInterceptor(settings.internal_token_hash)]
    return []


class _MetadataClientInterceptor(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, pairs: tuple[tuple[str, str], ...]) -> None:
        self.pairs = pairs

    def intercept_unary_unary(self, continuation, client_call_details, request):
        metadata = list(client_call_details.metadata or ()) + list(self.pairs)
        details = client_call_details._replace(metadata=metadata)
        return continuation(details, request)


def with_metadata(channel: grpc.Channel, pairs: tuple[tuple[str, str], ...]) -> grpc.Channel:
    """A channel that sends `pairs` with every unary call (the internal token, an API key)."""
    return grpc.intercept_channel(channel, _MetadataClientInterceptor(pairs))


def channel_credentials(settings: Any) -> grpc.ChannelCredentials | None:
    """TLS to the internal services when `internal_ca_file` is set; the process's own
    certificate is presented as the client certificate (mutual TLS) when it has one."""
    if not settings.internal_ca_file:
        return None
    cert = _read(settings.tls_cert_file) if settings.tls_cert_file else None
    key = _read(settings.tls_key_file) if settings.tls_key_file else None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(settings.internal_ca_file), private_key=key, certificate_chain=cert
    )
