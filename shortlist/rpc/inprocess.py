"""A stage called in this process keeps the contract of one called over gRPC.

`in_process("Rank", timeout, fn, ...)` runs `fn` on the calling thread and raises what a gRPC
stub would: `grpc.RpcError` with the code of an `InvalidInput` (its message as details),
INTERNAL for any other exception, DEADLINE_EXCEEDED for a reply later than `timeout` (the
work cannot be interrupted, but the caller falls back as it would). `status_on_error` turns
those back into the servicer's status when the same stage serves a gRPC call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc

from shortlist.rpc.validation import InvalidInput

T = TypeVar("T")


class LocalRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def in_process(method: str, timeout: float | None, fn: Callable[..., T], *args: Any) -> T:
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        reply = fn(*args)
    except LocalRpcError:
        raise
    except InvalidInput as exc:
        raise LocalRpcError(exc.code, str(exc)) from exc
    except Exception as exc:
        raise LocalRpcError(grpc.StatusCode.INTERNAL, f"{method}: {exc!r}") from exc
    if deadline is not None and time.monotonic() >= deadline:
        raise LocalRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, f"{method}: past {timeout}s")
    return reply


@contextmanager
def status_on_error(context: grpc.ServicerContext) -> Iterator[None]:
    """Abort the call with the status of an `InvalidInput` or an in-process stage error."""
    try:
        yield
    except InvalidInput as exc:
        context.abort(exc.code, str(exc))
    except LocalRpcError as exc:
        context.abort(exc.code(), exc.details())
