"""The one progress mechanism for long fits: a rich bar with ETA on stderr.

Every model and ranker reports its long steps (epochs, batches, boosting rounds, solve
phases) through `bar`. The bar draws only when stderr is a terminal and vanishes when done,
so logs, pipes and tests stay clean. `observe` lets a caller (a test, a dashboard) receive
the same updates as (label, completed, total) without a terminal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

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
