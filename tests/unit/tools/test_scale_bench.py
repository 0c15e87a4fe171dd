"""`shortlist bench scale`: the generated data keeps the shape it copies, and a run past its
memory cap is killed and recorded as not finished, while one within it reports its result."""

from __future__ import annotations

import sys

import numpy as np

from shortlist.compute import InProcess, engine_for
from shortlist.tools.bench.scale import Shape, generate_scaled, measured_run


def test_generated_data_scales_users_and_items_and_keeps_likes_per_user():
    rng = np.random.default_rng(0)
    shape = Shape(rng.integers(10, 200, 3000), rng.integers(1, 300, 4000))
    users, items = generate_scaled(shape, 2.0, seed=1)
    assert users.max() + 1 == 6000 and items.max() < 8000
    assert len(set(zip(users.tolist(), items.tolist()))) == len(users)  # distinct pairs
    per_user = np.bincount(users)
    # duplicates drawn within a user are dropped: the median stays within a few likes
    assert abs(np.median(per_user) - np.median(shape.user_likes)) < 8
    assert per_user.min() >= 5


def test_a_run_past_the_memory_cap_is_killed_and_recorded_as_null(tmp_path):
    out = tmp_path / "out.json"
    hog = "import sys, time; x = bytearray(600 * 2**20); x[::4096] = b'1' * len(x[::4096]); "
    hog += "time.sleep(60); open(sys.argv[1], 'w').write('{}')"
    m = measured_run([sys.executable, "-c", hog, str(out)], out, time_cap=120, mem_cap_gib=0.3)
    assert m.stopped == "memory cap" and m.result is None and m.peak_gib > 0.3


def test_a_run_within_its_caps_reports_its_result(tmp_path):
    out = tmp_path / "out.json"
    ok = "import sys; open(sys.argv[1], 'w').write('{\"seconds\": 1.5, \"ndcg@20\": 0.25}')"
    m = measured_run([sys.executable, "-c", ok, str(out)], out, time_cap=120, mem_cap_gib=4)
    assert m.stopped == "" and m.result == {"seconds": 1.5, "ndcg@20": 0.25}


def test_an_unknown_engine_or_a_stray_scheduler_is_refused():
    for name, scheduler in (("spark", None), ("inprocess", "tcp://x:8786")):
        try:
            with engine_for(name, scheduler):
                pass
        except ValueError as exc:
            assert "engine" in str(exc) or "--scheduler" in str(exc)
        else:
            raise AssertionError(name)
    with engine_for("inprocess") as engine:
        assert isinstance(engine, InProcess)
