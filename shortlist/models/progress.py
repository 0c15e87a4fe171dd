"""The one progress mechanism for long steps: a rich bar with ETA on stderr.

Every model and ranker reports its long steps (epochs, batches, boosting rounds, solve
phases) through `bar`, and so do the pipeline's and benchmarks' loops outside fits (ranking
features, top-k batches, the fusion and option searches, evaluation and bench loops), most
through `track`, a loop's one-line wrap. The bar draws only when stderr is a terminal and
vanishes when done, so logs, pipes and tests stay clean. `observe` lets a caller (a test, a
dashboard) receive the same updates as (label, completed, total) without a terminal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
Sink = Callable[[str, int, int], None]
Advance = Callable[..., None]

_SINK: ContextVar[Sink | None] = ContextVar("shortlist_progress_sink", default=None)


@contextmanager
def observe(sink: Sink) -> Iterator[None]:
    """Send every bar's updates inside the block to `sink` as well."""
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)


@contextmanager
def bar(
    label: str, total: int, *, enabled: bool = True, detail: str = "", **fields: object
) -> Iterator[Advance]:
    """A bar of `total` steps; yields `advance(n=1, **fields)`. `detail` is a rich format
    string over `fields` (e.g. "loss {task.fields[loss]:.4f}"). On a normal exit the bar
    is completed (early stopping skips steps that no longer need doing)."""
    console = Console(stderr=True)
    columns = [TextColumn(f"[bold]{label}[/]"), BarColumn(), MofNCompleteColumn()]
    if detail:
        columns.append(TextColumn(detail))
    columns += [TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    sink = _SINK.get()
    done = 0
    with Progress(
        *columns,
        console=console,
        disable=not enabled or not console.is_terminal,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=total, **fields)

        def advance(n: int = 1, **update: object) -> None:
            nonlocal done
            done = min(total, done + n)
            progress.update(task, completed=done, **update)
            if sink is not None and n:
                sink(label, done, total)

        yield advance
        if done < total:
            advance(total - done)


def track(
    items: Iterable[T],
    label: str,
    total: int | None = None,
    *,
    every: int = 1,
    min_total: int = 1,
) -> Iterator[T]:
    """`items`, one step of a bar per item (`total`: their count, default `len(items)`);
    the bar moves every `every` items (per-item loops too quick to pay for an update each).
    Loops of fewer than `min_total` items run without a bar."""
    if total is None:
        total = len(items) if isinstance(items, Sized) else 0
    if total < max(min_total, 1):
        yield from items
        return
    with bar(label, total) as advance:
        pending = 0
        for item in items:
            yield item
            pending += 1
            if pending >= every:
                advance(pending)
                pending = 0
