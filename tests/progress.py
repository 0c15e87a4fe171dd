"""Recording the progress bars a piece of work draws (through shortlist.models.progress's
`observe`), for the tests that fail naming a long step left without a bar."""

from __future__ import annotations

from shortlist.models.progress import observe

Run = list[tuple[int, int]]


def record(work) -> list[tuple[str, Run]]:
    """The bars `work` drew, in order, each as its (done, total) updates."""
    events: list[tuple[str, int, int]] = []
    with observe(lambda label, done, total: events.append((label, done, total))):
        work()
    runs: list[tuple[str, Run]] = []
    open_runs: dict[str, Run] = {}
    for label, done, total in events:
        run = open_runs.get(label)
        if run is None or done <= run[-1][0]:  # a new bar of the same label
            run = open_runs[label] = []
            runs.append((label, run))
        run.append((done, total))
        if done == total:
            del open_runs[label]
    return runs


def climbs_to_total(label: str, run: Run) -> None:
    done = [d for d, _ in run]
    assert len({t for _, t in run}) == 1, (label, run)
    assert done[0] >= 1 and all(b > a for a, b in zip(done, done[1:])), (label, run)
    assert done[-1] == run[-1][1], f"{label} stopped at {done[-1]} of {run[-1][1]}"
