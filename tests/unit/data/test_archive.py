"""The feedback archive on disk: written by shortlist.feedback.archive (Parquet by event
date, durable before the offsets move), read back by shortlist.data.events with duplicates
removed by event id and deleted users' tombstones applied across every log read."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from shortlist.bundle.files import load_bundle
from shortlist.config import Settings
from shortlist.data.events import BadEvents, load_events, read_logs
from shortlist.feedback import archive
from shortlist.feedback.archive import Archiver, write_events
from shortlist.feedback.bus.memory import InMemoryBus
from shortlist.feedback.events import Event, Kind
from shortlist.tools.cli import app

DAY = 86_400
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def event(n: int, user: str, item: str, kind: Kind = Kind.LIKE, at: float = T0) -> Event:
    return Event(f"e{n}", user, item, kind, int(at * 1000))


def write_history(path, rows):
    """A team's initial history: CSV without event ids."""
    lines = ["user_id,item_id,kind,timestamp"] + [",".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def pairs(data) -> set[tuple[str, str]]:
    pos = data.positives.tocoo()
    return {(data.users.id(int(u)), data.items.id(int(i))) for u, i in zip(pos.row, pos.col)}


def test_files_by_event_date_read_back_as_written(tmp_path):
    events = [
        event(1, "u1", "a", Kind.LIKE, T0 + 10.5),
        event(2, "u1", "b", Kind.DISLIKE, T0 + DAY + 1),
        event(3, "u2", "a", Kind.VIEW, T0 + DAY + 2),
        event(4, "u2", "", Kind.FORGET, T0 + 2 * DAY),
    ]
    files = write_events(tmp_path, events)
    assert sorted(f.parent.name for f in files) == [
        "date=2026-01-01",
        "date=2026-01-02",
        "date=2026-01-03",
    ]
    assert not list(tmp_path.rglob("*.tmp"))  # renamed into place
    day2 = pq.read_table(tmp_path / "date=2026-01-02").to_pylist()
    assert day2 == [
        {
            "event_id": "e2",
            "user_id": "u1",
            "item_id": "b",
            "kind": "dislike",
            "timestamp": T0 + DAY + 1,
        },
        {
            "event_id": "e3",
            "user_id": "u2",
            "item_id": "a",
            "kind": "view",
            "timestamp": T0 + DAY + 2,
        },
    ]
    logs = read_logs([tmp_path])
    # u2's view is before u2's tombstone: gone; the tombstone itself is not an event
    assert logs.column("event_id").to_pylist() == ["e1", "e2"]
    assert logs.column("seconds").to_pylist() == [T0 + 10.5, T0 + DAY + 1]
    assert logs.column("label").to_pylist() == [1, -1]
    assert logs.column_names == ["user_id", "item_id", "label", "seconds", "event_id"]


def test_an_event_written_twice_is_read_once(tmp_path):
    events = [event(n, f"u{n % 3}", f"i{n}", at=T0 + n) for n in range(12)]
    write_events(tmp_path, events[:8])
    write_events(tmp_path, events[5:])  # a replay after a crash: e5..e7 again, another file
    assert len(list(tmp_path.rglob("*.parquet"))) == 2
    ids = read_logs([tmp_path]).column("event_id").to_pylist()
    assert sorted(ids) == sorted(e.event_id for e in events) and len(ids) == 12
    once = tmp_path / "once"
    write_events(once, events)
    assert pairs(load_events([tmp_path])) == pairs(load_events([once]))


def test_a_tombstone_in_the_archive_deletes_the_user_from_every_log(tmp_path):
    history = write_history(
        tmp_path / "history.csv",
        [
            ("gone", "a", "like", T0),
            ("gone", "b", "like", T0 + 5),
            ("kept", "a", "like", T0 + 1),
            ("kept", "c", "like", T0 + 2),
        ],
    )
    root = tmp_path / "archive"
    write_events(
        root,
        [
            event(1, "gone", "c", Kind.LIKE, T0 + DAY),
            event(2, "kept", "b", Kind.LIKE, T0 + DAY),
            event(3, "gone", "", Kind.FORGET, T0 + DAY + 60),
            event(4, "gone", "d", Kind.LIKE, T0 + DAY + 61),  # after the deletion: stays
        ],
    )
    data = load_events([root, history])
    assert pairs(data) == {("kept", "a"), ("kept", "c"), ("kept", "b"), ("gone", "d")}
    # the tombstone names no item: it adds none to the catalogue, nor do deleted events
    assert "" not in data.items.to_list()
    # without the archive the history is trained on whole
    assert ("gone", "a") in pairs(load_events([history]))
    # a tombstone at exactly an event's time deletes it too
    write_events(root, [Event("e5", "kept", "", Kind.FORGET, (T0 + DAY) * 1000)])
    assert pairs(load_events([root, history])) == {("gone", "d")}


def test_only_a_tombstone_may_lack_an_item(tmp_path):
    history = write_history(tmp_path / "h.csv", [("u", "a", "like", T0), ("v", "", "like", T0)])
    with pytest.raises(BadEvents, match="row 2, column 'item_id': empty id"):
        load_events([history])
    ok = write_history(tmp_path / "ok.csv", [("u", "a", "like", T0), ("v", "", "forget", T0)])
    assert pairs(load_events([ok])) == {("u", "a")}


def test_a_log_of_only_deleted_users_has_no_likes(tmp_path):
    root = tmp_path / "archive"
    write_events(root, [event(1, "u", "a"), event(2, "u", "", Kind.FORGET, T0 + 1)])
    with pytest.raises(BadEvents, match="no likes to train on"):
        load_events([root])


def test_the_archiver_commits_only_what_is_durable(tmp_path, monkeypatch):
    bus = InMemoryBus()
    bus.publisher().publish([event(n, "u", f"i{n}", at=T0 + n) for n in range(7)], 1)
    bus.append([b"\xffnot an event"])
    settings = Settings(archive_file_events=4, archive_flush_ms=3_600_000, feedback_batch=4)
    archiver = Archiver(bus.consumer(), settings, tmp_path)
    archiver.run_once(10)  # 4 events: a file is due
    assert archiver.files == 1 and bus._committed == 4

    def disk_full(*_):
        raise OSError("no space left on device")

    monkeypatch.setattr(archive, "write_events", disk_full)
    archiver.run_once(10)  # 3 events and a malformed record, not due yet
    with pytest.raises(OSError):
        archiver.flush()
    assert bus._committed == 4 and archiver.malformed == 1  # nothing moved past the failure
    monkeypatch.undo()
    assert archiver.flush() == 3
    assert bus._committed == 8  # the malformed record is skipped with the rest
    assert read_logs([tmp_path]).column("event_id").to_pylist() == [f"e{n}" for n in range(7)]


def test_a_restart_removes_unfinished_files(tmp_path):
    write_events(tmp_path, [event(1, "u", "a")])
    leftover = tmp_path / "date=2026-01-01" / ".part-1-x.parquet.tmp"
    leftover.write_bytes(b"half a file")
    Archiver(InMemoryBus().consumer(), Settings(), tmp_path)
    assert not leftover.exists() and len(list(tmp_path.rglob("*.parquet"))) == 1


@pytest.mark.slow
def test_train_on_the_archive_and_a_history(tmp_path):
    """`shortlist train --events <archive> --events <history>`: both logs, the deleted user
    gone from the bundle."""
    users, items = [f"u{n}" for n in range(40)], [f"i{n}" for n in range(30)]
    history = write_history(
        tmp_path / "history.csv",
        [
            (u, items[(3 * n + k) % 30], "like", T0 + k)
            for n, u in enumerate(users)
            for k in range(5)
        ]
        + [("deleted", items[k], "like", T0 + k) for k in range(5)],
    )
    root = tmp_path / "archive"
    live = [
        event(100 * n + k, u, items[(3 * n + 7 + k) % 30], at=T0 + DAY + k)
        for n, u in enumerate(users)
        for k in range(3)
    ]
    write_events(root, [*live, Event("f", "deleted", "", Kind.FORGET, (T0 + 2 * DAY) * 1000)])
    out = tmp_path / "artifacts"
    args = ["train", "--events", str(root), "--events", str(history), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--model", "spectral", "--dim", "8"])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(out)
    trained = set(bundle.users.to_list())
    assert "deleted" not in trained and set(users) <= trained
    manifest = json.loads((out / bundle.version / "manifest.json").read_text())
    assert manifest["model"] == "spectral"
