"""A client channel whose TLS files (CA, client certificate and key) are re-read when they
change: the gateway's mutual-TLS identity towards the internal services rotates without a
restart, as the servers' certificates do (shortlist.rpc.security.CertificateFiles).

gRPC reads channel credentials once, when the channel is made, and has no client-side
equivalent of `dynamic_ssl_server_credentials`. So `ReloadingChannel` holds a channel made
from the files and, at most once per `check_s`, compares the files' (mtime, size, inode)
before a call: when they changed and the new pair loads and matches, it makes a new channel
from them and sends calls there; the old channel is closed `grace_s` later, so calls in
flight on it finish. A rotation caught halfway (certificate written, key not yet), or files
that do not load, keep the old channel until the next check finds good files. Stubs made
before a rotation follow it: their methods pick the current channel on every call.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from shortlist.rpc.telemetry import TLS_CLIENT_RELOADS

log = logging.getLogger(__name__)
CHECK_S = 1.0  # how often a call may look at the files (one stat per file)
GRACE_S = 30.0  # how long a replaced channel stays open for the calls it carries


class ClientTLSFiles:
    """The CA, and optionally the client certificate and key, of a TLS client."""

    def __init__(self, ca_file: str, cert_file: str = "", key_file: str = "") -> None:
        if bool(cert_file) != bool(key_file):
            raise ValueError("a client certificate needs both its certificate and key files")
        self.ca_file, self.cert_file, self.key_file = ca_file, cert_file, key_file
        self.paths = tuple(p for p in (ca_file, cert_file, key_file) if p)
        self._stamp: tuple | None = None
        self._refused: tuple | None = None  # the stamp of files that did not load

    def stamp(self) -> tuple:
        out = []
        for path in self.paths:
            st = Path(path).stat()
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def _load(self) -> tuple[tuple, grpc.ChannelCredentials]:
        """(the files' stamp, credentials from them); OSError or ValueError when they do not
        load, the key does not match the certificate, or they changed while being read."""
        stamp = self.stamp()
        ca = Path(self.ca_file).read_bytes()
        cert = Path(self.cert_file).read_bytes() if self.cert_file else None
        key = Path(self.key_file).read_bytes() if self.key_file else None
        try:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_verify_locations(cadata=ca.decode("ascii", "replace"))
            if self.cert_file:
                context.load_cert_chain(self.cert_file, self.key_file)  # the pair matches
        except ssl.SSLError as exc:
            raise ValueError(f"TLS files do not load: {exc}") from exc
        if self.stamp() != stamp:
            raise ValueError("TLS files changed while being read")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )
        return stamp, credentials

    def initial(self) -> grpc.ChannelCredentials:
        """Credentials at start; raises when the files do not load (nothing to fall back to)."""
        self._stamp, credentials = self._load()
        return credentials

    def fetch(self) -> grpc.ChannelCredentials | None:
        """New credentials when the files changed since the last ones and load; None
        otherwise (one stat per file). Not thread-safe: callers hold their own lock."""
        stamp = None
        try:
            stamp = self.stamp()
            if stamp in (self._stamp, self._refused):
                return None
            stamp, credentials = self._load()
        except (OSError, ValueError) as exc:
            if stamp != self._refused:
                log.warning("client TLS files changed but are not used (keeping the old): %s", exc)
                self._refused = stamp
            return None
        self._stamp = stamp
        TLS_CLIENT_RELOADS.inc()
        log.info("client TLS certificate reloaded from %s", self.cert_file or self.ca_file)
        return credentials


class _UnaryUnary(grpc.UnaryUnaryMultiCallable):
    """A method of a `ReloadingChannel`: each call goes to the channel current then."""

    def __init__(self, owner: ReloadingChannel, args: tuple, kwargs: dict) -> None:
        self._owner, self._args, self._kwargs = owner, args, kwargs
        self._generation = -1
        self._inner: grpc.UnaryUnaryMultiCallable | None = None

    def _target(self) -> grpc.UnaryUnaryMultiCallable:
        channel, generation = self._owner.current()
        inner = self._inner
        if inner is None or generation != self._generation:
            inner = channel.unary_unary(*self._args, **self._kwargs)
            self._inner, self._generation = inner, generation
        return inner

    def __call__(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        return self._target()(request, *args, **kwargs)

    def with_call(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        return self._target().with_call(request, *args, **kwargs)

    def future(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        return self._target().future(request, *args, **kwargs)


class ReloadingChannel(grpc.Channel):
    """A TLS channel to `target` re-made from `files` when they change (module docstring).
    Unary-unary methods follow rotations call by call (every internal RPC is one); the
    streaming kinds are bound to the channel current when the method is looked up."""

    def __init__(
        self,
        target: str,
        files: ClientTLSFiles,
        options: Sequence[tuple[str, Any]] = (),
        check_s: float = CHECK_S,
        grace_s: float = GRACE_S,
    ) -> None:
        self.target, self.files, self.options = target, files, list(options)
        self.check_s, self.grace_s = check_s, grace_s
        self.reloads = 0
        self._lock = threading.Lock()
        self._channel = self._make(files.initial())
        self._generation = 0
        self._checked_at = time.monotonic()
        self._retired: list[grpc.Channel] = []
        self._closed = False

    def _make(self, credentials: grpc.ChannelCredentials) -> grpc.Channel:
        return grpc.secure_channel(self.target, credentials, options=self.options)

    def current(self) -> tuple[grpc.Channel, int]:
        """The channel calls go to now and its generation, after a look at the files when
        the last one is `check_s` old."""
        now = time.monotonic()
        if now - self._checked_at < self.check_s or self._closed:
            return self._channel, self._generation
        with self._lock:
            if now - self._checked_at >= self.check_s and not self._closed:
                self._checked_at = now
                self._reload()
            return self._channel, self._generation

    def _reload(self) -> None:
        credentials = self.files.fetch()
        if credentials is None:
            return
        old, self._channel = self._channel, self._make(credentials)
        self._generation += 1
        self.reloads += 1
        self._retire(old)

    def _retire(self, old: grpc.Channel) -> None:
        """Close `old` once the calls it carries are done (after `grace_s`)."""
        self._retired.append(old)

        def close() -> None:
            with self._lock:
                if old in self._retired:
                    self._retired.remove(old)
            old.close()

        timer = threading.Timer(self.grace_s, close)
        timer.daemon = True
        timer.start()

    # --- grpc.Channel --------------------------------------------------------------------

    def unary_unary(self, *args: Any, **kwargs: Any) -> grpc.UnaryUnaryMultiCallable:
        return _UnaryUnary(self, args, kwargs)

    def unary_stream(self, *args: Any, **kwargs: Any) -> grpc.UnaryStreamMultiCallable:
        return self.current()[0].unary_stream(*args, **kwargs)

    def stream_unary(self, *args: Any, **kwargs: Any) -> grpc.StreamUnaryMultiCallable:
        return self.current()[0].stream_unary(*args, **kwargs)

    def stream_stream(self, *args: Any, **kwargs: Any) -> grpc.StreamStreamMultiCallable:
        return self.current()[0].stream_stream(*args, **kwargs)

    def subscribe(self, callback: Callable, try_to_connect: bool = False) -> None:
        self.current()[0].subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Callable) -> None:
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels, self._retired = [self._channel, *self._retired], []
        for channel in channels:
            channel.close()

    def __enter__(self) -> ReloadingChannel:
        return self

    def __exit__(self, *exc: object) -> bool:
        self.close()
        return False
