"""`shortlist bench scale` (`make bench-scale`): training time and memory, in process and on
Dask, on generated data of Gowalla's shape at several multiples of its interactions.

Each scale's data is generated once (users and items both multiplied by x, each user's like
count drawn from Gowalla's likes-per-user distribution, items drawn from Gowalla's item
popularity within planted topics, a random fifth of each user's likes held out as test) and
written in the LightGCN text format. Then each engine trains the same bundle in its own
subprocess under a wall-time cap and a memory cap (the whole process tree's RSS, sampled
every half second; past either cap the tree is killed and the run recorded as null), and
the bundle's served NDCG@20 is measured on the held-out likes (a seeded sample of the
test users, or all of them with `test_users=0`; the same users for both engines). Each
child also writes its per-user NDCG@20, so the parent pairs the two engines user by user:
the Dask bundle's relative gap (mean Dask / mean in process - 1) with a 95% bootstrap
interval over users and a paired-t one (`paired_gap`). Each child also records the
pipeline's stages (`Stages`: seconds, and the driver's peak RSS after each); a run killed
at a cap is reported with how far it got (`{engine}_reached`: its wall seconds, peaks until
the kill, and the stages it began, which the child logs as they start).

Peak memory: in process, the process tree's RSS; on Dask, the largest worker process's RSS
(the driver's peak is reported beside it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shortlist.models.progress import track

GIB = 1024**3
# Gowalla (train + valid + test of the LightGCN split), used when ../shared/data is absent.
GOWALLA_USERS, GOWALLA_ITEMS, GOWALLA_LIKES = 29_858, 40_981, 1_027_370
ITEMS_PER_TOPIC = 800
IN_TOPIC = 0.7  # share of a user's likes from their own topic, the rest by global popularity
TEST_SHARE = 0.2
DEFAULT_TEST_USERS = 1000  # served NDCG@20 on a seeded sample of this many test users


@dataclass
class Shape:
    """Likes per user and likes per item (one entry per user / item)."""

    user_likes: np.ndarray
    item_likes: np.ndarray


def gowalla_shape(directory: Path | None) -> Shape:
    """The per-user and per-item like counts of Gowalla's split files, or a lognormal stand-in
    with Gowalla's sizes and mean when the files are absent."""
    if directory is not None and (directory / "train.txt").exists():
        user_counts: dict[str, int] = {}
        item_counts: dict[str, int] = {}
        for name in ("train.txt", "valid.txt", "test.txt"):
            path = directory / name
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) < 2:
                    continue
                user_counts[parts[0]] = user_counts.get(parts[0], 0) + len(parts) - 1
                for item in parts[1:]:
                    item_counts[item] = item_counts.get(item, 0) + 1
        return Shape(
            np.array(list(user_counts.values()), np.int64),
            np.array(list(item_counts.values()), np.int64),
        )
    rng = np.random.default_rng(0)
    mean_likes = GOWALLA_LIKES / GOWALLA_USERS
    users = np.maximum(10, rng.lognormal(np.log(mean_likes) - 0.5, 1.0, GOWALLA_USERS))
    items = np.maximum(1, rng.lognormal(np.log(GOWALLA_LIKES / GOWALLA_ITEMS) - 1.0, 1.4, 40_981))
    return Shape(users.astype(np.int64), items.astype(np.int64))


def generate_scaled(shape: Shape, x: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) like pairs, distinct, of `shape` with x times its users and items."""
    rng = np.random.default_rng(seed)
    n_users = int(round(len(shape.user_likes) * x))
    n_items = int(round(len(shape.item_likes) * x))
    counts = np.minimum(rng.choice(shape.user_likes, n_users), n_items // 2)
    popularity = rng.choice(shape.item_likes, n_items).astype(np.float64)
    n_topics = max(1, n_items // ITEMS_PER_TOPIC)
    item_topic = rng.integers(0, n_topics, n_items)
    by_topic = np.argsort(item_topic, kind="stable")
    cum_topic = np.cumsum(popularity[by_topic])
    edges = np.searchsorted(item_topic[by_topic], np.arange(n_topics + 1))
    low = np.concatenate([[0.0], cum_topic])[edges[:-1]]
    high = cum_topic[np.maximum(edges[1:] - 1, 0)]
    cum_all = np.cumsum(popularity)
    users = np.repeat(np.arange(n_users), counts)
    topic = rng.integers(0, n_topics, n_users)[users]
    own = rng.random(len(users)) < IN_TOPIC
    items = np.empty(len(users), np.int64)
    draw = low[topic[own]] + rng.random(own.sum()) * (high[topic[own]] - low[topic[own]])
    items[own] = by_topic[np.minimum(np.searchsorted(cum_topic, draw), n_items - 1)]
    draw = rng.random((~own).sum()) * cum_all[-1]
    items[~own] = np.minimum(np.searchsorted(cum_all, draw), n_items - 1)
    pairs = np.unique(users * n_items + items)
    return pairs // n_items, pairs % n_items


def write_split(users: np.ndarray, items: np.ndarray, directory: Path, seed: int = 0) -> int:
    """The pairs as a LightGCN-format train.txt / test.txt (a random TEST_SHARE of each
    user's likes held out, users with under 5 likes keep all); returns the like count."""
    directory.mkdir(parents=True, exist_ok=True)
    test = np.random.default_rng(seed + 1).random(len(users)) < TEST_SHARE
    counts = np.bincount(users)
    test &= counts[users] >= 5
    for name, mask in (("train.txt", ~test), ("test.txt", test)):
        u, i = users[mask], items[mask]
        starts = np.searchsorted(u, np.arange(counts.size + 1))
        with open(directory / name, "w") as fh:
            for row in range(counts.size):
                lo, hi = starts[row], starts[row + 1]
                if hi > lo:
                    fh.write(f"{row} " + " ".join(map(str, i[lo:hi].tolist())) + "\n")
    return int(len(users))


def bench_config() -> dict:
    """The TrainConfig both engines train with: the served pipeline (spectral, fusion with
    item-kNN, LambdaRank; the fusion grid searched whole), with DeepFM off and the ranker's
    lists capped so that a scale fits the benchmark's time on a shared 2-core host."""
    return {
        "model": "spectral",
        "deep_ranker": False,
        "ranker_max_lists": 4000,
        "fusion_budget": 3600.0,  # the whole grid: a time-cut choice would differ per run
        "tune_budget": 0.0,
    }


class Stages:
    """The pipeline's progress messages as stages: each one's seconds until the next
    message (or `close`) and the process's peak RSS when it ended (a stage that raised
    the peak shows as the first with the higher figure). The driver's process only: on
    Dask the workers' memory is sampled by `measured_run`. With `log`, each message is
    also appended there as it comes (a JSON line: stage, seconds since the first, peak
    GiB so far), so a run killed at a cap still shows how far it got."""

    def __init__(self, log: Path | None = None) -> None:
        self.marks: list[tuple[str, float, float]] = []
        self.log = log

    @staticmethod
    def _peak_gib() -> float:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux

    def __call__(self, message: str) -> None:
        self.marks.append((message, time.perf_counter(), self._peak_gib()))
        if self.log is not None:
            _, at, peak = self.marks[-1]
            since = round(at - self.marks[0][1], 1)
            line = {"stage": message, "at_s": since, "peak_gib": round(peak, 2)}
            with open(self.log, "a") as fh:
                fh.write(json.dumps(line) + "\n")

    def close(self) -> list[dict]:
        ends = [t for _, t, _ in self.marks[1:]] + [time.perf_counter()]
        peaks = [p for _, _, p in self.marks[1:]] + [self._peak_gib()]
        return [
            {"stage": m, "seconds": round(end - t, 1), "peak_gib_after": round(peak, 2)}
            for (m, t, _), end, peak in zip(self.marks, ends, peaks)
        ]


def stages_path(out: Path) -> Path:
    """Where the child beside `out` appends its stages as they start (`Stages.log`)."""
    return out.with_suffix(".stages.jsonl")


def read_stages(path: Path) -> list[dict]:
    """The stages a child logged so far (none when it logged nothing)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def per_user_path(out: Path) -> Path:
    """Where the child beside `out` writes its per-user NDCG@20 (users, ndcg)."""
    return out.with_suffix(".users.npz")


def run_one(
    data: Path, engine: str, out: Path, workers: int = 2, test_users: int = DEFAULT_TEST_USERS
) -> None:
    """Train on `data`'s train split on `engine`, measure served NDCG@20 on its test split
    (`test_users` sampled users, 0 = all), write {"seconds", "ndcg@20", "test_users",
    "stages" (`Stages`), "eval_seconds"} to `out` and the per-user NDCG@20 to
    `per_user_path(out)` (the child side of `bench_scale`)."""
    from shortlist.compute import engine_for
    from shortlist.data.loaders import load_lightgcn_dir
    from shortlist.evaluation.gate import served_per_user
    from shortlist.training.pipeline import TrainConfig, train_bundle

    split = load_lightgcn_dir(data)
    history = split.train_valid()
    started = time.perf_counter()
    stages = Stages(log=stages_path(out))
    with engine_for(engine, workers=workers):
        bundle = train_bundle(history, TrainConfig(**bench_config()), progress=stages)
        stage_seconds = stages.close()  # before the cluster's shutdown
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    users, per_user = served_per_user(bundle, history, split.test, max_users=test_users)
    ndcg = per_user["ndcg@20"]
    np.savez(per_user_path(out), users=users, ndcg=ndcg)
    result = {"seconds": round(seconds, 1), "ndcg@20": round(float(ndcg.mean()), 4)}
    result |= {"test_users": int(len(users)), "stages": stage_seconds}
    result |= {"eval_seconds": round(time.perf_counter() - started, 1)}
    out.write_text(json.dumps(result))


def paired_gap(
    users_a: np.ndarray,
    a: np.ndarray,
    users_b: np.ndarray,
    b: np.ndarray,
    resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """B against A on the users both measured, paired user by user: the mean of each, the
    relative gap mean(b) / mean(a) - 1, its 95% interval from a bootstrap over users (the
    same resampled users for both, percentile interval of the resampled ratio) and from a
    paired t on the per-user differences (divided by mean(a)), and the mean difference."""
    from scipy import stats

    common, ia, ib = np.intersect1d(users_a, users_b, return_indices=True)
    x, y = np.asarray(a, np.float64)[ia], np.asarray(b, np.float64)[ib]
    n = len(common)
    if n < 2 or x.mean() <= 0:
        raise ValueError(f"need at least 2 paired users with a positive mean, got {n}")
    diff = y - x
    mean_a, mean_b = float(x.mean()), float(y.mean())
    t_low, t_high = stats.ttest_rel(y, x).confidence_interval(0.95)
    boot = stats.bootstrap(
        (x, y),
        lambda xs, ys, axis=-1: ys.sum(axis) / np.maximum(xs.sum(axis), 1e-300) - 1.0,
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        batch=max(1, 5_000_000 // n),  # resampled rows per batch (8 bytes a cell)
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    low, high = boot.confidence_interval
    return {
        "users": int(n),
        "mean_a": mean_a,
        "mean_b": mean_b,
        "mean_diff": float(diff.mean()),
        "rel_gap": mean_b / mean_a - 1.0,
        "rel_gap_ci95_bootstrap": [float(low), float(high)],
        "rel_gap_ci95_paired_t": [float(t_low / mean_a), float(t_high / mean_a)],
        "resamples": int(resamples),
    }


@dataclass
class Measured:
    result: dict | None  # what the child wrote, None when it did not finish
    peak_gib: float  # the process tree's peak RSS (in process) or the driver's (Dask)
    worker_peak_gib: float  # the largest worker process's peak RSS (0 without workers)
    stopped: str  # "", "time cap", "memory cap" or "exit N"
    seconds: float  # wall time until the child exited or was killed


def _is_worker(cmdline: list[str]) -> bool:
    """A Dask worker process of a LocalCluster (spawned by multiprocessing)."""
    text = " ".join(cmdline)
    return "spawn_main" in text and "resource_tracker" not in text


def measured_run(command: list[str], out: Path, time_cap: float, mem_cap_gib: float) -> Measured:
    """Run `command`, sampling its process tree's RSS; kill the tree past either cap."""
    import psutil

    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak = worker_peak = 0.0
    stopped = ""
    started = time.monotonic()
    deadline = started + time_cap
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        total = driver = 0.0
        for p in tree:
            try:
                rss = p.memory_info().rss / GIB
                worker = _is_worker(p.cmdline())
            except psutil.Error:
                continue
            total += rss
            if worker:
                worker_peak = max(worker_peak, rss)
            else:
                driver += rss
        peak = max(peak, driver if worker_peak else total)
        if total > mem_cap_gib:
            stopped = "memory cap"
        elif time.monotonic() > deadline:
            stopped = "time cap"
        if stopped:
            for p in reversed(tree):
                with contextlib.suppress(psutil.Error):
                    p.kill()
            break
        time.sleep(0.5)
    code = proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    if not stopped and code != 0:
        stopped = f"exit {code}"
        sys.stderr.write(err[-2000:])
    result = json.loads(out.read_text()) if not stopped and out.exists() else None
    seconds = round(time.monotonic() - started, 1)
    return Measured(result, round(peak, 2), round(worker_peak, 2), stopped, seconds)


def bench_scale(
    scales: list[float],
    shape_dir: Path | None,
    data: Path | None,
    time_cap: float,
    mem_cap_gib: float,
    engines: tuple[str, ...] = ("inprocess", "dask"),
    say=print,
    test_users: int = DEFAULT_TEST_USERS,
    keep: Path | None = None,
) -> dict:
    """One row per scale (see the module docstring); `data` (a LightGCN directory) replaces
    the generated data, for one scale of x = 1; `keep`, a directory the per-user NDCG@20
    files (`x{x}-{engine}.users.npz`: users, ndcg) are copied to."""
    shape = gowalla_shape(shape_dir)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for x in track(scales, "scales"):
            if data is not None:
                where, likes = data, int(gowalla_shape(data).user_likes.sum())
            else:
                where = Path(tmp) / f"x{x:g}"
                users, items = generate_scaled(shape, x, seed=0)
                likes = write_split(users, items, where)
                del users, items
            row: dict = {"x": x, "interactions": likes, "data": str(data) if data else None}
            for engine in engines:
                out = Path(tmp) / f"x{x:g}-{engine}.json"
                command = [sys.executable, "-m", "shortlist.tools.bench.scale", str(where)]
                command += [engine, str(out), str(test_users)]
                say(f"x={x:g} {engine}: training under {time_cap:.0f} s / {mem_cap_gib} GiB")
                m = measured_run(command, out, time_cap, mem_cap_gib)
                done = m.result is not None
                key = "inprocess" if engine == "inprocess" else "dask"
                row[f"{key}_seconds"] = m.result["seconds"] if done else None
                if key == "inprocess":
                    row["inprocess_peak_gib"] = m.peak_gib if done else None
                else:
                    row["dask_peak_gib_per_worker"] = m.worker_peak_gib if done else None
                    row["dask_driver_peak_gib"] = m.peak_gib if done else None
                row[f"ndcg@20_{key}"] = m.result["ndcg@20"] if done else None
                row[f"{key}_test_users"] = m.result.get("test_users") if done else None
                row[f"{key}_eval_seconds"] = m.result.get("eval_seconds") if done else None
                row[f"{key}_stopped"] = m.stopped or None
                row[f"{key}_stages"] = m.result.get("stages") if done else None
                if not done:  # how far it got: the stages it began, the peaks until the kill
                    row[f"{key}_reached"] = {
                        "seconds": m.seconds,
                        "peak_gib": m.peak_gib,
                        "worker_peak_gib": m.worker_peak_gib,
                        "stages": read_stages(stages_path(out)),
                    }
                if keep is not None and done and per_user_path(out).exists():
                    keep.mkdir(parents=True, exist_ok=True)
                    shutil.copy(per_user_path(out), keep / per_user_path(out).name)
                say(json.dumps(row))
            both = all(row.get(f"ndcg@20_{k}") is not None for k in ("inprocess", "dask"))
            row["ndcg@20_paired"] = _pair(tmp, x, say) if both else None
            rows.append(row)
    return {
        "scales": rows,
        "config": bench_config(),
        "test_users": test_users,
        "time_cap_s": time_cap,
        "mem_cap_gib": mem_cap_gib,
        "load_average": [round(v, 1) for v in os.getloadavg()],
        "cpus": os.cpu_count(),
    }


def _pair(tmp: str, x: float, say) -> dict | None:
    """Dask against in process at scale `x`, per user (`paired_gap`), when both finished."""
    files = [per_user_path(Path(tmp) / f"x{x:g}-{engine}.json") for engine in ("inprocess", "dask")]
    if not all(f.exists() for f in files):
        return None
    (a, b) = (np.load(f) for f in files)
    gap = paired_gap(a["users"], a["ndcg"], b["users"], b["ndcg"])
    say(f"x={x:g} paired NDCG@20, dask vs inprocess: {json.dumps(gap)}")
    return {
        "users": gap["users"],
        "rel_gap": round(gap["rel_gap"], 5),
        "rel_gap_ci95_bootstrap": [round(v, 5) for v in gap["rel_gap_ci95_bootstrap"]],
        "rel_gap_ci95_paired_t": [round(v, 5) for v in gap["rel_gap_ci95_paired_t"]],
        "mean_diff": round(gap["mean_diff"], 6),
    }


if __name__ == "__main__":  # the child: python -m shortlist.tools.bench.scale DATA ENGINE OUT [N]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else DEFAULT_TEST_USERS
    run_one(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), test_users=n)
