"""Calling a servicer in this process as if through a stub (the co-located gateway).

`LocalStub(servicer).Retrieve(request, timeout=0.15)` runs the servicer's method on the
calling thread: no serialization, no transport. It keeps the stub's contract where the
gateway relies on it: an abort raises `grpc.RpcError` with the servicer's code and details,
an unexpected exception becomes INTERNAL, and a reply later than `timeout` is dropped as
DEADLINE_EXCEEDED (the work cannot be interrupted, but the caller falls back as it would).
"""

from __future__ import annotations

import time
from typing import Any

import grpc


class LocalRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class LocalContext:
    """What the servicers use of grpc.ServicerContext, for a call made in process."""

    def __init__(self, timeout: float | None) -> None:
        self._deadline = None if timeout is None else time.monotonic() + timeout

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise LocalRpcError(code, details)

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())


class LocalStub:
    def __init__(self, servicer: Any) -> None:
        self.servicer = servicer

    def __getattr__(self, method: str):
        handler = getattr(self.servicer, method)

        def call(request: Any, timeout: float | None = None) -> Any:
            context = LocalContext(timeout)
            try:
                reply = handler(request, context)
            except LocalRpcError:
                raise
            except Exception as exc:
                raise LocalRpcError(grpc.StatusCode.INTERNAL, f"{method}: {exc!r}") from exc
            if context.time_remaining() == 0.0:
                raise LocalRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, f"{method}: past {timeout}s")
            return reply

        return call
