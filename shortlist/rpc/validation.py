"""Input checks shared by the servicers; each failure names the field that was wrong."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc


class InvalidInput(ValueError):
    """A client mistake: answered with `code` and this message."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT):
        super().__init__(message)
        self.code = code


def require_id(value: str, field: str, max_length: int) -> str:
    if not value or not value.strip():
        raise InvalidInput(f"{field} must not be empty")
    if len(value) > max_length:
        raise InvalidInput(f"{field} is longer than {max_length} characters")
    return value


def require_range(value: int, field: str, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise InvalidInput(f"{field} must be in {lo}..{hi}, got {value}")
    return value


def require_ids(values: Sequence[str], field: str, max_count: int, max_length: int) -> list[str]:
    if len(values) > max_count:
        raise InvalidInput(f"{field} has {len(values)} entries, at most {max_count} allowed")
    for n, v in enumerate(values):
        require_id(v, f"{field}[{n}]", max_length)
    return list(values)


def require_context(context: Mapping[str, str], max_entries: int, max_length: int) -> None:
    if len(context) > max_entries:
        raise InvalidInput(f"context has {len(context)} entries, at most {max_entries} allowed")
    for key, value in context.items():
        if not key or len(key) > max_length or len(value) > max_length:
            raise InvalidInput(f"context key/value {key[:32]!r} is empty or too long")


def abort_invalid(context: grpc.ServicerContext, exc: InvalidInput) -> None:
    context.abort(exc.code, str(exc))
