"""The archiver as a process on the real broker: SIGKILLed part-way and started again, it
loses no event, and the archive read for training holds each event once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.request import urlopen

import pyarrow.parquet as pq

from shortlist.data.events import BadEvents, read_logs
from shortlist.feedback.bus import KafkaEventPublisher, ensure_topic
from shortlist.feedback.events import Event, Kind
from shortlist.tools.stack import grpc_serving
from tests.conftest import eventually, free_port, unique

N = 3000
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
ROOT = Path(__file__).resolve().parents[2]


def feedback(start: int, stop: int) -> list[Event]:
    """Events a minute apart (three dates in all), likes and views of 40 users."""
    kinds = (Kind.LIKE, Kind.VIEW, Kind.LIKE, Kind.DISLIKE)
    return [
        Event(f"ev{n}", f"u{n % 40}", f"i{n % 97}", kinds[n % 4], (T0 + 60 * n) * 1000)
        for n in range(start, stop)
    ]


def archived_ids(root: Path) -> list[str]:
    try:
        return read_logs([root]).column("event_id").to_pylist()
    except BadEvents:  # no file yet
        return []


def start_archiver(env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "shortlist.services", "archiver"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_archiver_killed_part_way_loses_nothing_and_reads_once(broker, tmp_path):
    topic = unique("feedback")
    ensure_topic(broker.bootstrap, topic, 3)
    root = tmp_path / "archive"
    addr, metrics = f"127.0.0.1:{free_port()}", free_port()
    env = {
        **os.environ,
        "SHORTLIST_KAFKA_BOOTSTRAP": broker.bootstrap,
        "SHORTLIST_FEEDBACK_TOPIC": topic,
        "SHORTLIST_FEEDBACK_PARTITIONS": "3",
        "SHORTLIST_ARCHIVE_GROUP": unique("archive"),
        "SHORTLIST_ARCHIVE_PATH": str(root),
        "SHORTLIST_ARCHIVE_FILE_EVENTS": "100",
        "SHORTLIST_ARCHIVE_FLUSH_MS": "300",
        "SHORTLIST_FEEDBACK_BATCH": "50",
        "SHORTLIST_ARCHIVER_ADDR": addr,
        "SHORTLIST_ARCHIVER_METRICS_PORT": str(metrics),
    }
    log = tmp_path / "archiver.log"
    publisher = KafkaEventPublisher(broker.bootstrap, topic)
    publisher.publish(feedback(0, N // 2), timeout_s=10)

    first = start_archiver(env, log)
    try:
        eventually(lambda: list(root.rglob("*.parquet")), timeout_s=30, interval=0.01)
        first.send_signal(signal.SIGKILL)  # mid-stream: files written, offsets maybe not
        assert first.wait(10) == -signal.SIGKILL
    finally:
        first.kill()
    before = len(set(archived_ids(root)))
    assert 0 < before <= N // 2

    publisher.publish(feedback(N // 2, N), timeout_s=10)
    publisher.close()
    second = start_archiver(env, log)
    try:
        eventually(lambda: grpc_serving(addr), timeout_s=30)
        eventually(lambda: len(set(archived_ids(root))) >= N, timeout_s=30, interval=0.2)
        with urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        assert "shortlist_feedback_events_archived_total" in text
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, log.read_text()[-3000:]
    finally:
        second.kill()

    ids = archived_ids(root)
    assert sorted(ids) == sorted(e.event_id for e in feedback(0, N))  # each once, none lost
    raw = pq.read_table(root).num_rows  # what the files hold, replays included
    assert raw >= N
    dates = sorted(p.name for p in root.iterdir())
    assert dates == ["date=2026-01-01", "date=2026-01-02", "date=2026-01-03"]
    assert not list(root.rglob("*.tmp"))
