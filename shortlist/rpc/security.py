"""Transport security and access control for the gRPC servers.

- TLS: a server certificate and key from files (Kubernetes Secrets mount as files); with a
  client CA the server requires client certificates signed by it (mutual TLS).
- The public gateway checks API keys (`authorization: Bearer <key>` or `x-api-key`); only
  their sha256 hex digests are configured (`api_key_hashes`, comma-separated), so revoking a
  key is removing its hash. A key may be limited to scopes (`<hash>:recommend+feedback`);
  one configured without scopes keeps all public scopes. The `admin` scope, given only
  explicitly, opens the FeedbackAdmin calls on the gateway's HTTP port (`AdminAccess`).
  An optional user token (HS256 JWT, `authorization: Bearer <jwt>`, secret `jwt_secret`)
  binds a call to its `sub`: the request's user ids must equal it, and its `scope` claim
  limits the call further
  (docs/decisions/0026-key-scopes-and-user-binding.md). Internal services (retrieval,
  ranking, feedback admin) accept only calls carrying the shared internal token
  (`x-shortlist-internal`), whose hash they hold and which only the gateway's channels send,
  and, with `internal_peer_names`, only from a client certificate naming the gateway; beyond
  loopback they refuse to start without mutual TLS and the token (`insecure=1` overrides).
- Per-client token buckets (by API key or token subject, else by peer address), one set per
  gateway process, shared by its gRPC server and its HTTP front door's admin calls.
- Health checks stay open, and server reflection where it is on (not on the gateway
  unless `reflection=1`, see shortlist.rpc.server); keys and tokens are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt

from shortlist.rpc.client_tls import ClientTLSFiles
from shortlist.rpc.telemetry import TLS_RELOADS

log = logging.getLogger(__name__)

API_KEY_HEADER = "x-api-key"
INTERNAL_HEADER = "x-shortlist-internal"
OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]", "ip6-localhost"}

SCOPE_RECOMMEND = "recommend"
SCOPE_FEEDBACK = "feedback"
# The FeedbackAdmin calls over the gateway's HTTP port (docs/decisions/0039-admin-over-http.md):
# granted only to keys configured with it, never by default nor by a user token.
SCOPE_ADMIN = "admin"
# What a key configured without scopes may do (the admin RPCs are on the internal plane).
PUBLIC_SCOPES = frozenset({SCOPE_RECOMMEND, SCOPE_FEEDBACK})
KEY_SCOPES = PUBLIC_SCOPES | {SCOPE_ADMIN}  # what a key's `:scope+scope` may name
METHOD_SCOPES = {
    "/shortlist.v1.Gateway/Recommend": SCOPE_RECOMMEND,
    "/shortlist.v1.Gateway/SimilarItems": SCOPE_RECOMMEND,
    "/shortlist.v1.Gateway/SendFeedback": SCOPE_FEEDBACK,
}
# The user ids of a request that a user token's subject must equal, with their field names.
REQUEST_USERS: dict[str, Callable[[Any], list[tuple[str, str]]]] = {
    "/shortlist.v1.Gateway/Recommend": lambda r: [("user_id", r.user_id)],
    "/shortlist.v1.Gateway/SendFeedback": lambda r: [
        (f"events[{n}].user_id", e.user_id) for n, e in enumerate(r.events)
    ],
}
KEY_ID_HEX = 12  # the non-secret id of a key: this many hex digits of its sha256
MIN_JWT_SECRET_BYTES = 32  # RFC 7518: an HS256 key at least as long as the hash output


@dataclass(frozen=True)
class Caller:
    """Who a gateway call is from, as the auth interceptor established it.

    `key_id` names the caller's dedup namespace for event ids: the API key's id (12 hex of
    its hash), else "t" + a hash of the token subject, else "open" (no auth configured)."""

    key_id: str
    scopes: frozenset[str]
    subject: str | None = None


OPEN_CALLER = Caller("open", PUBLIC_SCOPES)
_CALLER: ContextVar[Caller] = ContextVar("shortlist_caller", default=OPEN_CALLER)


def current_caller() -> Caller:
    """The caller of the gateway call this thread is serving (OPEN_CALLER without auth)."""
    return _CALLER.get()


def subject_key_id(subject: str) -> str:
    """A token caller's namespace: hashed so that subjects with ':' cannot collide."""
    return "t" + hashlib.blake2b(subject.encode("utf-8"), digest_size=8).hexdigest()


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


def parse_keys(value: str) -> dict[str, frozenset[str]]:
    """`api_key_hashes` as {sha256 hex: scopes}. Entries are comma-separated, each a hash
    optionally followed by `:scope+scope` (of KEY_SCOPES); a hash without scopes keeps all
    public scopes (not admin), so configurations from before scopes keep working."""
    keys: dict[str, frozenset[str]] = {}
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        digest, sep, scope_text = entry.partition(":")
        (digest,) = parse_hashes(digest)
        if sep:
            scopes = frozenset(x.strip().lower() for x in scope_text.split("+") if x.strip())
            unknown = sorted(scopes - KEY_SCOPES)
            if unknown or not scopes:
                raise ValueError(
                    f"API key {digest[:KEY_ID_HEX]}: scopes must be some of "
                    f"{'+'.join(sorted(KEY_SCOPES))}, got {scope_text.strip()!r}"
                )
        else:
            scopes = PUBLIC_SCOPES
        if keys.get(digest, scopes) != scopes:
            raise ValueError(
                f"API key {digest[:KEY_ID_HEX]} is configured twice, with other scopes"
            )
        keys[digest] = scopes
    return keys


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0] if ":" in address else address
    host = host.strip()
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


class CertificateFiles:
    """A server's certificate, key and optional client CA, re-read when a file changes.

    `fetch` is gRPC's certificate-configuration fetcher: gRPC calls it before each new TLS
    handshake, and it answers a new configuration only when a file's (mtime, size, inode)
    changed, None otherwise (one stat per file). A new pair is used only once it loads and
    its key matches its certificate, and only if the files did not change while it was
    read: a rotation caught halfway (certificate written, key not yet) keeps the old
    configuration until the next handshake looks again. Connections already open keep the
    certificate they were made with."""

    def __init__(self, cert_file: str, key_file: str, client_ca_file: str = "") -> None:
        self.paths = tuple(p for p in (cert_file, key_file, client_ca_file) if p)
        self.cert_file, self.key_file, self.client_ca_file = cert_file, key_file, client_ca_file
        self.reloads = 0
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._refused: tuple | None = None  # the stamp of files that did not load

    def _stamps(self) -> tuple:
        out = []
        for path in self.paths:
            st = Path(path).stat()
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def _load(self) -> tuple[tuple, grpc.ServerCertificateConfiguration]:
        """(the files' stamp, their configuration); OSError or ValueError when they do not
        load, do not match, or changed while being read."""
        stamp = self._stamps()
        cert, key = _read(self.cert_file), _read(self.key_file)
        client_ca = _read(self.client_ca_file) if self.client_ca_file else None
        try:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.cert_file, self.key_file)  # parses, checks the pair
            if self.client_ca_file:
                context.load_verify_locations(self.client_ca_file)
        except ssl.SSLError as exc:
            raise ValueError(f"TLS files do not load: {exc}") from exc
        if self._stamps() != stamp:
            raise ValueError("TLS files changed while being read")
        return stamp, grpc.ssl_server_certificate_configuration([(key, cert)], client_ca)

    def initial(self) -> grpc.ServerCertificateConfiguration:
        """The configuration at start; raises when the files do not load."""
        with self._lock:
            self._stamp, config = self._load()
            return config

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            stamp = None
            try:
                stamp = self._stamps()
                if stamp in (self._stamp, self._refused):
                    return None
                stamp, config = self._load()
            except (OSError, ValueError) as exc:
                if stamp != self._refused:
                    log.warning("TLS files changed but are not used (keeping the old): %s", exc)
                    self._refused = stamp
                return None
            self._stamp = stamp
            self.reloads += 1
            TLS_RELOADS.inc()
            log.info("TLS certificate reloaded from %s", self.cert_file)
            return config


def server_credentials(settings: Any) -> grpc.ServerCredentials | None:
    """TLS credentials from `tls_cert_file`/`tls_key_file` (None: plaintext), re-read when
    the files change (CertificateFiles: new handshakes get the new certificate, no
    restart); with `tls_client_ca_file` clients must present a certificate signed by that
    CA."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if not cert and not key:
        if settings.tls_client_ca_file:
            raise InsecureConfiguration("tls_client_ca_file needs tls_cert_file and tls_key_file")
        return None
    if not (cert and key):
        raise InsecureConfiguration("TLS needs both tls_cert_file and tls_key_file")
    files = CertificateFiles(cert, key, settings.tls_client_ca_file)
    return grpc.dynamic_ssl_server_credentials(
        files.initial(),
        files.fetch,
        require_client_authentication=bool(settings.tls_client_ca_file),
    )


def check_gateway_policy(settings: Any, address: str) -> None:
    """Plaintext or keyless serving is allowed on loopback (local development) or when
    `insecure=1` says so explicitly; anywhere else it is refused."""
    if settings.insecure or is_loopback(address):
        return
    missing = []
    if not settings.tls_cert_file:
        missing.append("TLS (tls_cert_file/tls_key_file)")
    if not settings.api_key_hashes.strip() and not settings.jwt_secret:
        missing.append("API keys (api_key_hashes) or user tokens (jwt_secret)")
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


def looks_like_jwt(value: str) -> bool:
    """A compact JWS has three dot-separated parts; API keys for a gateway that also takes
    user tokens must not (send them in 'x-api-key' to be safe)."""
    return value.count(".") == 2


def credentials_from(metadata: dict[str, str], keys_on: bool, tokens_on: bool):
    """(API key, user token) from the metadata. The bearer value is the token when tokens
    are configured and it is JWT-shaped (or keys are off), else the key."""
    auth = metadata.get("authorization", "")
    bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    header_key = metadata.get(API_KEY_HEADER, "").strip() or None
    if bearer and tokens_on and (not keys_on or looks_like_jwt(bearer)):
        return header_key, bearer
    return (bearer or header_key), None


class KeyCheck:
    """Membership of a key's hash in the configured set, compared in constant time."""

    def __init__(self, hashes: Iterable[str]) -> None:
        self._hashes = [bytes.fromhex(h) for h in hashes]

    def match(self, key: str) -> str | None:
        """The configured hash (hex) the key matches, else None."""
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        found = None
        for h in self._hashes:
            if hmac.compare_digest(digest, h):
                found = h.hex()
        return found

    def client_of(self, key: str) -> str | None:
        found = self.match(key)
        return found[:16] if found else None  # the client's name in rate limits


class InvalidToken(Exception):
    """A user token that does not verify; the message is safe to return to the caller."""


class TokenCheck:
    """HS256 user tokens (PyJWT): signature, `exp` (required), `sub` (required), and the
    audience and issuer when configured. Returns the subject and the `scope` claim."""

    def __init__(
        self, secret: str, audience: str = "", issuer: str = "", leeway_s: float = 0
    ) -> None:
        if len(secret.encode("utf-8")) < MIN_JWT_SECRET_BYTES:
            raise ValueError(f"jwt_secret must be at least {MIN_JWT_SECRET_BYTES} bytes long")
        self._secret = secret
        self.audience = audience or None
        self.issuer = issuer or None
        self.leeway_s = leeway_s
        self._require = ["exp", "sub"] + ["aud"] * bool(audience) + ["iss"] * bool(issuer)

    def verify(self, token: str) -> tuple[str, frozenset[str]]:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],  # fixed: never what the token's header asks for
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": self._require},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("user token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"invalid user token: {exc}") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise InvalidToken("invalid user token: 'sub' must be a non-empty string")
        scope = claims.get("scope", "")
        if isinstance(scope, str):
            scopes = scope.split()
        elif isinstance(scope, list) and all(isinstance(x, str) for x in scope):
            scopes = scope
        else:
            raise InvalidToken("invalid user token: 'scope' must be a string or a list")
        return subject, frozenset(scopes) & PUBLIC_SCOPES


class AuthInterceptor(grpc.ServerInterceptor):
    """Authentication and authorization on the public gateway.

    API keys (when configured) and user tokens (when configured) are each verified when
    sent; at least one is needed (a token always when `require_token`): UNAUTHENTICATED
    otherwise. The call's scopes are the intersection of its credentials' scopes:
    PERMISSION_DENIED naming the missing one. With a token, the request's user ids must
    equal its subject: PERMISSION_DENIED. The servicer reads the result, `current_caller()`.
    """

    def __init__(
        self,
        keys: Mapping[str, frozenset[str]] | Iterable[str],
        tokens: TokenCheck | None = None,
        require_token: bool = False,
    ) -> None:
        self.keys = dict(keys) if isinstance(keys, Mapping) else dict.fromkeys(keys, PUBLIC_SCOPES)
        self.check = KeyCheck(self.keys)
        self.tokens = tokens
        self.require_token = require_token and tokens is not None

    def _deny(self, handler, code: grpc.StatusCode, message: str, method: str):
        log.debug("refused a call to %s: %s", method, code.name)
        return _abort_handler(handler, code, message)

    def intercept_service(self, continuation: Callable, details: Any) -> Any:
        handler = continuation(details)
        method = details.method
        if handler is None or method.startswith(OPEN_SERVICES):
            return handler
        unauthenticated = grpc.StatusCode.UNAUTHENTICATED
        keys_on, tokens_on = bool(self.keys), self.tokens is not None
        key, token = credentials_from(_metadata(details), keys_on, tokens_on)
        if keys_on and not tokens_on and key is None:
            return self._deny(
                handler,
                unauthenticated,
                "missing API key: send metadata 'authorization: Bearer <key>' or 'x-api-key'",
                method,
            )
        if tokens_on and token is None and (self.require_token or not keys_on or key is None):
            how = "'authorization: Bearer <jwt>'"
            if keys_on and not self.require_token:
                message = f"missing credentials: send an API key ('x-api-key') or {how}"
            else:
                message = f"missing user token: send metadata {how}"
            return self._deny(handler, unauthenticated, message, method)
        scopes, key_id, subject = PUBLIC_SCOPES, None, None
        needed = METHOD_SCOPES.get(method)
        if needed is None:
            return self._deny(
                handler, grpc.StatusCode.PERMISSION_DENIED, f"no scope grants {method}", method
            )
        if keys_on and key is not None:
            digest = self.check.match(key)
            if digest is None:
                return self._deny(handler, unauthenticated, "invalid or revoked API key", method)
            scopes, key_id = self.keys[digest], digest[:KEY_ID_HEX]
            if needed not in scopes:
                return self._deny(
                    handler,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"API key {key_id} lacks scope '{needed}' (needed by "
                    f"{method.rsplit('/', 1)[-1]}); it has: {'+'.join(sorted(scopes)) or 'none'}",
                    method,
                )
        if self.tokens is not None and token is not None:
            try:
                subject, token_scopes = self.tokens.verify(token)
            except InvalidToken as exc:
                return self._deny(handler, unauthenticated, str(exc), method)
            if needed not in token_scopes:
                return self._deny(
                    handler,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"user token lacks scope '{needed}' (needed by "
                    f"{method.rsplit('/', 1)[-1]}); its scope claim grants: "
                    f"{' '.join(sorted(token_scopes)) or 'none'}",
                    method,
                )
            scopes = scopes & token_scopes
            key_id = key_id or subject_key_id(subject)
        caller = Caller(key_id or OPEN_CALLER.key_id, scopes, subject)
        return self._bound(handler, caller, method)

    def _bound(self, handler: grpc.RpcMethodHandler, caller: Caller, method: str):
        """The handler run with `caller` as current_caller(), after the user binding check."""
        if handler.unary_unary is None:
            return _abort_handler(
                handler, grpc.StatusCode.PERMISSION_DENIED, f"{method} is not authorized"
            )
        inner = handler.unary_unary
        users = REQUEST_USERS.get(method) if caller.subject is not None else None

        def authorized(request: Any, context: grpc.ServicerContext) -> Any:
            if users is not None:
                for field, user_id in users(request):
                    if user_id != caller.subject:
                        context.abort(
                            grpc.StatusCode.PERMISSION_DENIED,
                            f"{field} does not match the user token's subject: a token "
                            "acts for its own user only",
                        )
            reset = _CALLER.set(caller)
            try:
                return inner(request, context)
            finally:
                _CALLER.reset(reset)

        return grpc.unary_unary_rpc_method_handler(
            authorized,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class AdminAccess:
    """Who may call the FeedbackAdmin calls through the gateway's HTTP port.

    With API keys or user tokens configured: only an API key configured with the `admin`
    scope (401 without a valid key, 403 naming the missing scope otherwise; user tokens
    never grant it). With none configured (local development): open on a loopback address,
    as the internal feedback service is to local callers without the internal token; on any
    other address refused, even with `insecure=1`, since nothing would tell callers apart."""

    def __init__(self, settings: Any, address: str) -> None:
        self.keys = parse_keys(settings.api_key_hashes)
        self.check = KeyCheck(self.keys)
        self.tokens_on = bool(settings.jwt_secret)
        self.open = not self.keys and not self.tokens_on
        self.address = address
        self.loopback = is_loopback(address)

    def refusal(self, metadata: Mapping[str, str]) -> tuple[grpc.StatusCode, str] | None:
        """None when the call may go on, else (code, message) to answer with."""
        denied = grpc.StatusCode.PERMISSION_DENIED
        if self.open:
            if self.loopback:
                return None
            return denied, (
                f"admin calls are not served on {self.address} without API keys: configure "
                f"api_key_hashes with a key of scope '{SCOPE_ADMIN}' "
                "(they are open only on a loopback address, for local development)"
            )
        key, token = credentials_from(dict(metadata), bool(self.keys), self.tokens_on)
        if key is None:
            if token is not None:
                return denied, (
                    f"user tokens do not grant scope '{SCOPE_ADMIN}': send an API key with it"
                )
            return grpc.StatusCode.UNAUTHENTICATED, (
                f"missing API key: admin calls need a key with scope '{SCOPE_ADMIN}' "
                "('authorization: Bearer <key>' or 'x-api-key')"
            )
        digest = self.check.match(key)
        if digest is None:
            return grpc.StatusCode.UNAUTHENTICATED, "invalid or revoked API key"
        scopes = self.keys[digest]
        if SCOPE_ADMIN not in scopes:
            return denied, (
                f"API key {digest[:KEY_ID_HEX]} lacks scope '{SCOPE_ADMIN}' (needed by the "
                f"admin calls); it has: {'+'.join(sorted(scopes)) or 'none'}"
            )
        return None

    def client(self, metadata: Mapping[str, str], host: str) -> str:
        """The rate limits' name for an admitted caller: its key's id, else (keys off, on
        loopback) its address, as the gateway's RateLimitInterceptor names callers."""
        if not self.open:
            key, _token = credentials_from(dict(metadata), bool(self.keys), self.tokens_on)
            digest = self.check.match(key) if key is not None else None
            if digest is not None:
                return digest[:KEY_ID_HEX]
        return address_client(host)


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


def peer_names(auth_context: Mapping[str, Any]) -> frozenset[str]:
    """The identities a verified client certificate names (its SANs and CN), from gRPC's
    auth context; empty without a client certificate."""
    names: set[str] = set()
    for key, values in auth_context.items():
        if key == "x509_common_name" or key.endswith("subject_alternative_name"):
            names.update(
                v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values
            )
    return frozenset(names)


class PeerIdentityInterceptor(grpc.ServerInterceptor):
    """Internal services: the caller's client certificate (verified by mutual TLS) must name
    one of the allowed identities (the gateway's): PERMISSION_DENIED otherwise, even with
    the internal token. Health stays open (probes have no certificate)."""

    def __init__(self, allowed: Iterable[str]) -> None:
        self.allowed = frozenset(allowed)

    def intercept_service(self, continuation: Callable, details: Any) -> Any:
        handler = continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        if handler.unary_unary is None:
            return _abort_handler(
                handler, grpc.StatusCode.PERMISSION_DENIED, f"{details.method} is not allowed"
            )
        inner, allowed = handler.unary_unary, self.allowed

        def checked(request: Any, context: grpc.ServicerContext) -> Any:
            names = peer_names(context.auth_context())
            if not names & allowed:
                shown = ", ".join(sorted(names)[:4]) or "no client certificate"
                context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"internal service: calls are accepted from {', '.join(sorted(allowed))} "
                    f"only; the client certificate names {shown}",
                )
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            checked,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def parse_names(value: str) -> frozenset[str]:
    return frozenset(n.strip() for n in value.split(",") if n.strip())


def check_internal_policy(settings: Any, address: str) -> None:
    """An internal service beyond loopback needs mutual TLS (a client CA) and the internal
    token, unless `insecure=1` says so explicitly; identities need a client CA."""
    if parse_names(settings.internal_peer_names) and not settings.tls_client_ca_file:
        raise InsecureConfiguration(
            "internal_peer_names needs tls_client_ca_file: identities come from client certificates"
        )
    if settings.insecure or is_loopback(address):
        return
    missing = []
    if not settings.tls_client_ca_file:
        missing.append("mutual TLS (tls_cert_file/tls_key_file/tls_client_ca_file)")
    if not settings.internal_token_hash:
        missing.append("the internal token (internal_token_hash)")
    if missing:
        raise InsecureConfiguration(
            f"an internal service would listen on {address} without {' and '.join(missing)}; "
            "configure them, or set SHORTLIST_INSECURE=1 for local development"
        )


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

    def take(self, client: str, cost: float = 1.0) -> float:
        """0 when `cost` tokens were taken, else the seconds until there are enough (inf
        when `cost` exceeds the burst: never)."""
        if cost > self.burst:
            return float("inf")
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
            if tokens >= cost:
                bucket[0] = tokens - cost
                return 0.0
            bucket[0] = tokens
            return (cost - tokens) / self.rate if self.rate > 0 else float("inf")

    def __len__(self) -> int:
        return len(self._buckets)


def peer_host(peer: str) -> str:
    """'ipv4:127.0.0.1:5123' -> 'ipv4:127.0.0.1'; 'ipv6:[::1]:5123' -> 'ipv6:[::1]'."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer


def calls_exceeded(buckets: TokenBuckets, wait: float) -> str:
    """The message of a call refused by `buckets`, over gRPC and HTTP alike."""
    return (
        f"rate limit of {buckets.rate:g} calls/s (burst {buckets.burst:g}) "
        f"exceeded; retry in {wait:.3f}s"
    )


# The RPCs whose requests carry events, and how many (rate limits by events). DeleteUser
# (an admin call, over the HTTP front door) writes one FORGET event to the feedback topic.
REQUEST_EVENTS: dict[str, Callable[[Any], int]] = {
    "/shortlist.v1.Gateway/SendFeedback": lambda r: len(r.events),
    "/shortlist.v1.FeedbackAdmin/DeleteUser": lambda _r: 1,
}


def address_client(host: str) -> str:
    """The rate limits' name of a caller known by its address alone, as gRPC's peer string
    names it without the port ('ipv4:127.0.0.1', 'ipv6:[::1]'): an HTTP caller and a gRPC
    caller from the same host share a bucket."""
    host = host.strip("[]")
    return f"ipv6:[{host}]" if ":" in host else f"ipv4:{host}"


class RateLimits:
    """The gateway process's per-client limits: a bucket of calls and, for calls that carry
    events (REQUEST_EVENTS), one of events (a batch takes as many tokens as it has events).
    One object per gateway process, asked by the gRPC RateLimitInterceptor and by the HTTP
    front door's admin calls alike, so a key's calls draw from the same buckets whichever
    way they come (docs/decisions/0049-one-rate-limiter-for-grpc-and-http.md). The buckets
    live in this process: the limits hold per gateway process, not cluster-wide."""

    def __init__(
        self, rate: float, burst: float, events_rate: float = 0, events_burst: float = 0
    ) -> None:
        self.calls = TokenBuckets(rate, burst) if rate > 0 else None
        self.events = TokenBuckets(events_rate, events_burst) if events_rate > 0 else None

    @classmethod
    def from_settings(cls, settings: Any) -> RateLimits | None:
        """The limits `rate_limit_*` configure; None when both rates are 0 (no limits)."""
        calls, events = settings.rate_limit_per_s, settings.rate_limit_events_per_s
        if calls <= 0 and events <= 0:
            return None
        return cls(
            calls,
            settings.rate_limit_burst or calls,
            events,
            settings.rate_limit_events_burst or max(events, settings.max_events),
        )

    def refusal(self, client: str, method: str, request: Any) -> str | None:
        """None when `client` may make this call to `method` (its tokens taken), else the
        RESOURCE_EXHAUSTED message to answer with, over gRPC and HTTP alike."""
        calls = self.calls
        wait = calls.take(client) if calls is not None else 0.0
        if wait:
            return calls_exceeded(calls, wait)
        count = REQUEST_EVENTS.get(method)
        if self.events is None or count is None:
            return None
        n = count(request)
        wait = self.events.take(client, n)
        if wait == float("inf"):
            return (
                f"a batch of {n} events exceeds the rate limit's burst of "
                f"{self.events.burst:g} events: send smaller batches"
            )
        if wait:
            return (
                f"rate limit of {self.events.rate:g} events/s (burst {self.events.burst:g}) "
                f"exceeded by a batch of {n}; retry in {wait:.3f}s"
            )
        return None


class RateLimitInterceptor(grpc.ServerInterceptor):
    """RESOURCE_EXHAUSTED once a client's bucket of `limits` is empty. The client is the
    caller the auth interceptor (which runs first) established: its API key or token
    subject, by id; otherwise its peer address without the port."""

    def __init__(self, limits: RateLimits) -> None:
        self.limits = limits

    def intercept_service(self, continuation: Callable, details: Any) -> Any:
        handler = continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        if handler.unary_unary is None:
            return handler
        inner, limits, method = handler.unary_unary, self.limits, details.method

        def limited(request: Any, context: grpc.ServicerContext) -> Any:
            caller = current_caller()
            name = caller.key_id if caller is not OPEN_CALLER else peer_host(context.peer())
            refused = limits.refusal(name, method, request)
            if refused is not None:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            limited,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def server_interceptors(
    name: str, settings: Any, rate_limits: RateLimits | None = None
) -> list[grpc.ServerInterceptor]:
    """Access control for service `name` from the settings (outermost first). The gateway's
    `rate_limits`: the process's limits shared with its HTTP front door (default: built
    from the settings)."""
    if name == "gateway":
        keys = parse_keys(settings.api_key_hashes)
        tokens = None
        if settings.jwt_secret:
            tokens = TokenCheck(
                settings.jwt_secret,
                settings.jwt_audience,
                settings.jwt_issuer,
                settings.jwt_leeway_s,
            )
        out: list[grpc.ServerInterceptor] = []
        if keys or tokens:
            out.append(AuthInterceptor(keys, tokens, bool(settings.jwt_required)))
        limits = rate_limits or RateLimits.from_settings(settings)
        if limits is not None:
            out.append(RateLimitInterceptor(limits))
        return out
    out = []
    names = parse_names(settings.internal_peer_names)
    if names:
        out.append(PeerIdentityInterceptor(names))
    if settings.internal_token_hash:
        out.append(InternalTokenInterceptor(settings.internal_token_hash))
    return out


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


def client_tls_files(settings: Any) -> ClientTLSFiles | None:
    """The TLS files of channels to the internal services: their CA (`internal_ca_file`;
    None when unset: plaintext) and the client certificate of mutual TLS,
    `internal_cert_file`/`internal_key_file`, else the process's own certificate, when it
    has one. Channels re-read them when they change (shortlist.rpc.client_tls)."""
    if not settings.internal_ca_file:
        return None
    cert_file = settings.internal_cert_file or settings.tls_cert_file
    key_file = settings.internal_key_file or settings.tls_key_file
    return ClientTLSFiles(settings.internal_ca_file, cert_file, key_file)
