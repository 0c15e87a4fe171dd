"""Who may act in the console: reads are open, likes and dislikes need an admin key.

The key is typed into the page and sent as `x-api-key` (or `authorization: Bearer`) with each
action. It is checked here with the gateway's own code (shortlist.rpc.security): its sha256
must be among `console_key_hashes` or `api_key_hashes`, with the `feedback` scope. The
action is then sent to the gateway with the same key, so a gateway that checks keys applies
its own scopes, rate limits and event-id namespace too. With no key configured at all the
console is read-only (docs/decisions/0036-web-console.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shortlist.config import Settings
from shortlist.rpc import security


@dataclass(frozen=True)
class Refused(Exception):
    """An action the console will not forward: HTTP status and a message for the page."""

    status: int
    message: str


class ActionKeys:
    """The admin keys of a console: digest -> scopes, from the settings."""

    def __init__(self, settings: Settings) -> None:
        keys = security.parse_keys(settings.api_key_hashes)
        for digest, scopes in security.parse_keys(settings.console_key_hashes).items():
            keys[digest] = keys.get(digest, frozenset()) | scopes
        self.keys = keys
        self.check = security.KeyCheck(keys)

    @property
    def read_only(self) -> bool:
        return not self.keys

    def authorize(self, headers: Mapping[str, str]) -> str:
        """The caller's key when it may send feedback; `Refused` otherwise."""
        if self.read_only:
            raise Refused(
                403,
                "the console is read-only: no admin key is configured "
                "(set SHORTLIST_CONSOLE_KEY_HASHES to `shortlist hash-key KEY`)",
            )
        key = security.api_key_from({k.lower(): v for k, v in headers.items()})
        if key is None:
            raise Refused(401, "missing admin key: enter it in the key field")
        digest = self.check.match(key)
        if digest is None:
            raise Refused(401, "invalid or revoked admin key")
        if security.SCOPE_FEEDBACK not in self.keys[digest]:
            raise Refused(
                403,
                f"admin key {digest[: security.KEY_ID_HEX]} lacks scope "
                f"'{security.SCOPE_FEEDBACK}'",
            )
        return key
