"""`shortlist bench scale`: the generated data keeps the shape it copies, and a run past its
memory cap is killed and recorded as not finished, while one within it reports its result;
the two engines' per-user NDCG is paired user by user into a relative gap and its intervals."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from shortlist.compute import InProcess, engine_for
from shortlist.tools.bench import scale
from shortlist.tools.bench.scale import Shape, generate_scaled, measured_run, paired_gap


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
    # killed at the first sample above the cap: the peak is reported to 2 decimals, so a
    # sample a little over .3 GiB reads .3
    assert m.stopped == "memory cap" and m.result is None and m.peak_gib >= 0.3


def test_a_run_within_its_caps_reports_its_result(tmp_path):
    out = tmp_path / "out.json"
    ok = "import sys; open(sys.argv[1], 'w').write('{\"seconds\": 1.5, \"ndcg@20\": 0.25}')"
    m = measured_run([sys.executable, "-c", ok, str(out)], out, time_cap=120, mem_cap_gib=4)
    assert m.stopped == "" and m.result == {"seconds": 1.5, "ndcg@20": 0.25}


def test_a_killed_run_still_shows_the_stages_it_logged_before_the_cap(tmp_path):
    out = tmp_path / "out.json"
    slow = (
        "import sys, time; from pathlib import Path; from shortlist.tools.bench import scale; "
        "stages = scale.Stages(log=scale.stages_path(Path(sys.argv[1]))); "
        "stages('split'); stages('fit spectral'); time.sleep(60)"
    )
    m = measured_run([sys.executable, "-c", slow, str(out)], out, time_cap=3, mem_cap_gib=4)
    assert m.stopped == "time cap" and m.result is None and 3 <= m.seconds < 30
    logged = scale.read_stages(scale.stages_path(out))
    assert [s["stage"] for s in logged] == ["split", "fit spectral"]
    assert logged[0]["at_s"] == 0.0 and logged[1]["peak_gib"] > 0


def test_stages_time_each_progress_message_until_the_next(monkeypatch):
    clock = iter([10.0, 12.5, 20.0, 21.0])
    monkeypatch.setattr(scale.time, "perf_counter", lambda: next(clock))
    peaks = iter([1.0, 1.5, 3.0, 3.25])
    monkeypatch.setattr(scale.Stages, "_peak_gib", staticmethod(lambda: next(peaks)))
    stages = scale.Stages()
    for message in ("split", "fit", "precompute"):
        stages(message)
    assert stages.close() == [
        {"stage": "split", "seconds": 2.5, "peak_gib_after": 1.5},
        {"stage": "fit", "seconds": 7.5, "peak_gib_after": 3.0},
        {"stage": "precompute", "seconds": 1.0, "peak_gib_after": 3.25},
    ]


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


def test_the_paired_gap_and_its_t_interval_match_a_hand_computed_case():
    # a = .2 .4 .6 .8 (mean .5), b = .3 .4 .7 .8 (mean .55): differences .1 0 .1 0, mean .05,
    # sd sqrt(4 * .05^2 / 3) = .0577350, se .0288675, t(.975, 3) = 3.182446, half-width .0918693;
    # relative to mean(a): gap +10%, interval (.05 -+ .0918693) / .5 = [-.0837386, .2837386].
    users = np.array([3, 5, 7, 9])
    a = np.array([0.2, 0.4, 0.6, 0.8])
    b = np.array([0.3, 0.4, 0.7, 0.8])
    gap = paired_gap(users, a, users, b)
    assert gap["users"] == 4 and gap["mean_a"] == pytest.approx(0.5)
    assert gap["mean_b"] == pytest.approx(0.55) and gap["mean_diff"] == pytest.approx(0.05)
    assert gap["rel_gap"] == pytest.approx(0.1)
    assert gap["rel_gap_ci95_paired_t"] == pytest.approx([-0.0837386, 0.2837386], abs=1e-6)
    low, high = gap["rel_gap_ci95_bootstrap"]
    # resampled ratios of sums of these four users lie in [1, 1.5] (b >= a everywhere)
    assert 0.0 <= low <= 0.1 <= high <= 0.5


def test_pairs_follow_the_user_ids_not_the_order_and_only_shared_users_count():
    # b is a's users in another order plus one b alone; every shared user gains exactly 10%,
    # so every bootstrap resample's ratio is 1.1: a zero-width interval at +10%.
    a = np.array([0.1, 0.2, 0.4, 0.3])
    gap = paired_gap(
        np.array([1, 2, 4, 8]),
        a,
        np.array([8, 4, 2, 1, 6]),
        np.array([0.33, 0.44, 0.22, 0.11, 0.9]),
    )
    assert gap["users"] == 4 and gap["rel_gap"] == pytest.approx(0.1)
    assert gap["rel_gap_ci95_bootstrap"] == pytest.approx([0.1, 0.1])
    assert gap["mean_diff"] == pytest.approx(0.025)  # (.01 + .02 + .04 + .03) / 4


def test_the_bootstrap_interval_covers_the_t_interval_on_many_users():
    rng = np.random.default_rng(3)
    a = rng.random(5000) * 0.4
    b = np.clip(a + rng.normal(0.0, 0.05, 5000), 0, 1)
    gap = paired_gap(np.arange(5000), a, np.arange(5000), b, resamples=1000)
    (bl, bh), (tl, th) = gap["rel_gap_ci95_bootstrap"], gap["rel_gap_ci95_paired_t"]
    assert bl < gap["rel_gap"] < bh and tl < gap["rel_gap"] < th
    assert abs(bl - tl) < 0.003 and abs(bh - th) < 0.003  # large n: the two agree
    with pytest.raises(ValueError):
        paired_gap(np.array([1]), np.array([0.5]), np.array([1]), np.array([0.5]))
