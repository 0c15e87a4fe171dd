"""The fault schedule and the soak's fault accounting (the faults themselves run on real
parts in tests/integration/test_faults_counted.py)."""

from __future__ import annotations

import time

import pytest
import typer

from shortlist.tools import loadtest as lt
from shortlist.tools.bench import soak_faults
from shortlist.tools.bench.cli import _fault_names
from shortlist.tools.faults import Fault, FaultSchedule


def test_schedule_injects_in_turn_and_records_failures():
    seen = []

    def broken() -> str:
        raise RuntimeError("no broker")

    faults = [Fault("a", lambda: seen.append("a") or "did a"), Fault("b", broken)]
    schedule = FaultSchedule(faults, every_s=0.05).start()
    deadline = time.monotonic() + 10
    while len(schedule.records) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    schedule.stop()
    names = [r["fault"] for r in schedule.records]
    assert names[:3] == ["a", "b", "a"]
    a, b = schedule.records[:2]
    assert a["ok"] and a["detail"] == "did a" and a["end_s"] >= a["start_s"]
    assert not b["ok"] and b["detail"] == "RuntimeError: no broker"


def test_missing_events_are_lost_with_the_broker_only_if_its_log_held_them():
    t0 = 1000.0
    sent = [
        ("u", "e1", "like", True, 5.0),  # acknowledged at 1005, 3 s before the first stop
        ("u", "e2", "like", True, 100.0),  # at 1100: after every stop
        ("u", "e3", "like", True, -20.0),  # at 980, 28 s before: the consumer lagged
        ("u", "e4", "like", True, 6.0),  # at 1006, applied at the stop, gone since
        ("u", "e5", "like", True, 30.0),  # at 1030: the second stop's log
    ]
    stops = [(1008.0, {"e4"}), (1050.0, {"e1", "e3", "e4"})]
    audit = {"missing": ["e1", "e2", "e3", "e4", "e5"]}
    lost = soak_faults.attribute(audit, sent, t0, stops)
    assert lost == {
        "lost_with_memory_broker": 3,  # e1, e3 (first stop), e5 (second)
        "lost_with_memory_broker_oldest_s": 28.0,
        "lost": 2,  # e2 (acknowledged after every stop), e4 (applied, then lost)
    }
    assert soak_faults.attribute({"missing": []}, sent, t0, stops)["lost"] == 0


def test_errors_are_split_by_fault_window():
    samples = lt.Samples()
    samples.t0 = 100.0
    # (sent offset, latency, code): one failure inside the window, one outside, one OK
    for sent, code in ((10.0, "UNAVAILABLE"), (30.0, "DEADLINE_EXCEEDED"), (11.0, "OK")):
        samples.add(sent, sent, 0.01, lt.RECOMMEND, code)
    records = [{"fault": "broker_restart", "start_s": 9.0, "end_s": 12.0}]
    inside, outside = soak_faults.errors_by_fault(samples, records, schedule_t0=100.0)
    assert inside == {"broker_restart": {"UNAVAILABLE": 1}}
    assert outside == {"DEADLINE_EXCEEDED": 1}


def test_fault_names_on_the_command_line():
    assert _fault_names("all") == soak_faults.FAULTS
    assert _fault_names("") == ()
    assert _fault_names("redis_sleep, hot_swap") == ("redis_sleep", "hot_swap")
    with pytest.raises(typer.Exit):
        _fault_names("redis_sleep,meteor")
