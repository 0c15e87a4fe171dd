"""A team's own event log in: Parquet (a file or a directory of partitions), CSV or JSON
lines, read with DuckDB.

DuckDB reads all three formats (and hive-partitioned directories) with one engine, infers
types, parses ISO-8601 times, and hands back Arrow columns without a copy; pyarrow alone
would need a reader per format, and polars would add a second dataframe library. No row is
parsed by hand here.

Events: `user_id`, `item_id`, `kind` (like, dislike, view, skip; or a number, a rating
compared with `RatingThresholds`), `timestamp` (epoch seconds or ISO-8601 text); any other
column is request context recorded with the event (`Interactions.context`). Likes and
dislikes train; views and skips carry no training label, so they never overwrite one. For a
(user, item) pair the latest like or dislike wins.

The feedback archive (shortlist.feedback.archive, Parquet partitioned by `date=`) reads as
any log, with two more rules that apply across all the logs read together: rows that share
an `event_id` are one event (the archive is written at least once), and a `forget` row
(a deleted user's tombstone, no item) drops every event of that user at or before its time,
in every log; tombstones never train.

Items (optional): `item_id` plus attribute columns. Numbers become standardised features, a
text column with few distinct values (`MAX_CATEGORIES`) one column per value, and free text
(titles, descriptions) is left out of the features.

On a Dask engine (`shortlist train --engine dask`, `shortlist.compute`) Parquet is read with
dask.dataframe instead, partitions in parallel on the workers; the checks below are the same.

Every problem raises `BadEvents`, naming the file, the row (1-based, header not counted)
and the column.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shortlist import compute
from shortlist.data.interactions import Interactions
from shortlist.data.loaders import RatingThresholds, events_to_interactions

log = logging.getLogger(__name__)

REQUIRED = ("user_id", "item_id", "kind", "timestamp")
LABELS = {"like": 1, "dislike": -1}
UNLABELLED = {"view", "skip"}
NOT_CONTEXT = {"event_id"}
FORGET = 3  # the label of a tombstone (kind `forget`)
# read_events' columns before the context ones
COLUMNS = ("user_id", "item_id", "label", "seconds", "event_id")
# Request-context keys the ranker derives itself (from the timestamp) or reads from the
# request only: a column of that name in the log is not a free-form context key.
DERIVED_CONTEXT = {"hour", "day_of_week", "device"}
CONTEXT_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")
MAX_CATEGORIES = 50


class BadEvents(ValueError):
    """Input that cannot be trained on; the message names file, row and column."""

    def __init__(self, path: Path, message: str, row: int | None = None, column: str = ""):
        where = str(path)
        if row is not None:
            where += f", row {row}"
        if column:
            where += f", column {column!r}"
        super().__init__(f"{where}: {message}")


def read_table(path: Path) -> pa.Table:
    """The file (or directory of Parquet partitions) as an Arrow table, rows in file order.
    CSV and JSON are read as text, so that a bad value is reported here, not guessed."""
    path = Path(path)
    con = duckdb.connect()
    suffix = path.suffix.lower()
    try:
        if path.is_dir():
            files = sorted(path.rglob("*.parquet"))
            if not files:
                raise BadEvents(path, "a directory must hold .parquet files (partitions)")
            read = compute.current().read_parquet(path)  # dask.dataframe on a Dask engine
            if read is not None:
                return read
            rel = con.read_parquet(
                [str(f) for f in files], hive_partitioning=True, union_by_name=True
            )
        elif not path.exists():
            raise BadEvents(path, "no such file or directory")
        elif suffix == ".parquet":
            read = compute.current().read_parquet(path)
            if read is not None:
                return read
            rel = con.read_parquet(str(path))
        elif suffix in {".csv", ".tsv"}:
            rel = con.read_csv(str(path), header=True, all_varchar=True)
        elif suffix in {".jsonl", ".ndjson", ".json"}:
            rel = con.read_json(str(path), format="newline_delimited")
        else:
            raise BadEvents(path, "not .parquet, .csv, .tsv, .jsonl, .ndjson or .json")
        return rel.to_arrow_table()
    except (duckdb.Error, OSError, pa.ArrowException) as exc:
        raise BadEvents(path, f"unreadable: {exc}") from None


def _text(table: pa.Table, column: str) -> list[str | None]:
    return [None if v is None else str(v) for v in table.column(column).to_pylist()]


def _first_bad(path: Path, column: str, bad: np.ndarray, message: str) -> None:
    if bad.any():
        raise BadEvents(path, message, int(np.flatnonzero(bad)[0]) + 1, column)


def _labels(path: Path, table: pa.Table, thresholds: RatingThresholds) -> np.ndarray:
    """1 like, -1 dislike, 0 a rating between the thresholds, 2 a view or skip, 3 (FORGET)
    a tombstone."""
    con = duckdb.connect()
    con.register("kinds", pa.table({"k": table.column("kind").cast(pa.string())}))
    parsed = con.sql(
        "SELECT lower(trim(k)) AS name, TRY_CAST(k AS DOUBLE) AS rating FROM kinds"
    ).to_arrow_table()
    name = np.asarray(parsed.column("name").to_pylist(), dtype=object)
    rating = parsed.column("rating").cast(pa.float64()).to_numpy(zero_copy_only=False)
    known = np.isin(name, [*LABELS, *UNLABELLED, "forget"])
    bad = ~known & np.isnan(rating)
    if bad.any():
        n = int(np.flatnonzero(bad)[0])
        raw = table.column("kind")[n].as_py()
        raise BadEvents(
            path,
            f"unknown kind {raw!r}: like, dislike, view, skip, forget or a numeric rating",
            n + 1,
            "kind",
        )
    by_rating = np.where(
        rating >= thresholds.like, 1, np.where(rating <= thresholds.dislike, -1, 0)
    )
    by_name = np.select([name == "like", name == "dislike", name == "forget"], [1, -1, FORGET], 2)
    return np.where(known, by_name, by_rating).astype(np.int64)


def _seconds(path: Path, table: pa.Table) -> np.ndarray:
    """Epoch seconds (float) of `timestamp`: numbers as they are, text as a number or
    ISO-8601 (parsed by DuckDB); an unparseable value names its row."""
    column = table.column("timestamp")
    if pa.types.is_timestamp(column.type):
        millis = column.cast(pa.timestamp("ms")).cast(pa.int64()).to_numpy(zero_copy_only=False)
        return millis / 1000
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        _first_bad(path, "timestamp", np.isnan(values), "missing timestamp")
        return values
    con = duckdb.connect()
    con.register("times", pa.table({"t": column.cast(pa.string())}))
    seconds = con.sql(
        "SELECT coalesce(TRY_CAST(t AS DOUBLE), epoch(TRY_CAST(t AS TIMESTAMPTZ))) AS s FROM times"
    ).to_arrow_table()
    values = seconds.column("s").cast(pa.float64()).to_numpy(zero_copy_only=False)
    _first_bad(
        path,
        "timestamp",
        np.isnan(values),
        "not a time: epoch seconds or ISO-8601 (YYYY-MM-DDTHH:MM:SSZ)",
    )
    return values


def read_events(path: Path, thresholds: RatingThresholds) -> pa.Table:
    """One log as columns user_id, item_id, label (as `_labels`), seconds (float),
    event_id (null where the log has none) and its context columns (text)."""
    table = read_table(path)
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise BadEvents(path, f"missing column(s) {', '.join(missing)} (needs {REQUIRED})")
    if table.num_rows == 0:
        raise BadEvents(path, "no events")
    labels = _labels(path, table, thresholds)
    users, items = _text(table, "user_id"), _text(table, "item_id")
    for name, values in (("user_id", users), ("item_id", items)):
        empty = np.array([v is None or not v.strip() for v in values])
        if name == "item_id":
            empty &= labels != FORGET  # a tombstone names no item
        _first_bad(path, name, empty, "empty id")
    seconds = _seconds(path, table)
    partitions = {d.name.split("=")[0] for d in path.rglob("*=*")} if path.is_dir() else set()
    columns: dict[str, pa.Array | list | np.ndarray] = {
        "user_id": [u.strip() for u in users],
        "item_id": ["" if i is None else i.strip() for i in items],
        "label": labels,
        "seconds": seconds,
        "event_id": _event_ids(table),
    }
    for column in table.column_names:
        if column in REQUIRED or column in NOT_CONTEXT or column in partitions:
            continue
        if column in DERIVED_CONTEXT:
            log.info("%s: column %r is derived by the ranker, not a context key", path, column)
            continue
        if not CONTEXT_KEY.fullmatch(column):
            raise BadEvents(
                path, "a context column's name must match [A-Za-z0-9_]{1,64}", column=column
            )
        columns[column] = ["" if v is None else v for v in _text(table, column)]
    return pa.table(columns)


def _event_ids(table: pa.Table) -> pa.Array:
    """The `event_id` column as text, null where empty or absent (such rows are distinct)."""
    if "event_id" not in table.column_names:
        return pa.nulls(table.num_rows, pa.string())
    ids = pc.utf8_trim_whitespace(table.column("event_id").cast(pa.string()))
    return pc.if_else(pc.equal(ids, ""), None, ids).combine_chunks()


def read_logs(paths: Sequence[Path], thresholds: RatingThresholds | None = None) -> pa.Table:
    """The events training sees in these logs, in log and row order: one row per event id
    (the first), and no tombstone nor any event of its user at or before its time, across
    all the logs. Columns as `read_events`; a context column a log lacks is ""."""
    th = thresholds or RatingThresholds()
    logs = pa.concat_tables([read_events(Path(p), th) for p in paths], promote_options="default")
    logs = logs.append_column("n", pa.array(np.arange(logs.num_rows, dtype=np.int64)))
    con = duckdb.connect()
    con.register("logs", logs)
    kept = con.sql(
        f"""
        WITH unique_events AS (
            SELECT * FROM logs
            QUALIFY event_id IS NULL OR row_number() OVER (PARTITION BY event_id ORDER BY n) = 1
        ), forgotten AS (
            SELECT user_id, max(seconds) AS until FROM unique_events
            WHERE label = {FORGET} GROUP BY user_id
        )
        SELECT e.* EXCLUDE (n) FROM unique_events e LEFT JOIN forgotten f USING (user_id)
        WHERE e.label <> {FORGET} AND (f.until IS NULL OR e.seconds > f.until)
        ORDER BY e.n
        """
    ).to_arrow_table()
    for name in kept.column_names[len(COLUMNS) :]:  # context columns: "" where a log has none
        where = kept.column_names.index(name)
        kept = kept.set_column(where, name, pc.fill_null(kept.column(name), ""))
    return kept


def read_attribute_values(path: Path, key: str) -> tuple[list[str], dict[str, list[str]]]:
    """Ids (column `key`) and every other column as text, "" where empty: the attributes
    request rules filter on (free text included)."""
    table = read_table(path)
    if key not in table.column_names:
        raise BadEvents(path, f"missing column {key}")
    ids = [(v or "").strip() for v in _text(table, key)]
    values = {}
    for column in table.column_names:
        if column != key:
            values[column] = [(v or "").strip() for v in _text(table, column)]
    return ids, values


def read_attributes(path: Path, key: str) -> tuple[list[str], dict[str, np.ndarray]]:
    """Ids (column `key`: item_id or user_id) and their attribute features: numbers
    standardised, categories one-hot, free text (too many distinct values) left out."""
    table = read_table(path)
    if key not in table.column_names:
        raise BadEvents(path, f"missing column {key}")
    ids = _text(table, key)
    empty = np.array([v is None or not v.strip() for v in ids])
    _first_bad(path, key, empty, "empty id")
    ids = [v.strip() for v in ids]
    seen: set[str] = set()
    for n, one in enumerate(ids):
        if one in seen:
            raise BadEvents(path, f"{key.removesuffix('_id')} {one!r} listed twice", n + 1, key)
        seen.add(one)
    features: dict[str, np.ndarray] = {}
    for column in table.column_names:
        if column == key:
            continue
        numbers = _as_numbers(table.column(column))
        if numbers is not None:
            mean = np.nanmean(numbers) if not np.isnan(numbers).all() else 0.0
            filled = np.where(np.isnan(numbers), mean, numbers)
            features[column] = ((filled - filled.mean()) / (filled.std() + 1e-6)).astype(np.float32)
            continue
        values = _text(table, column)
        categories = sorted({v for v in values if v})
        if len(categories) > MAX_CATEGORIES:
            log.info("%s: column %r is free text, not a feature", path, column)
            continue
        onehot = np.zeros((len(ids), len(categories)), np.float32)
        where = {c: k for k, c in enumerate(categories)}
        for n, v in enumerate(values):
            if v:
                onehot[n, where[v]] = 1.0
        features[column] = onehot
    return ids, features


def _as_numbers(column: pa.ChunkedArray) -> np.ndarray | None:
    """The column as floats (NaN where empty), or None when any value is not a number."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = pc.if_else(pc.equal(pc.utf8_trim_whitespace(column), ""), None, column)
    try:
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def load_events(
    paths: Sequence[Path],
    items: Path | None = None,
    thresholds: RatingThresholds | None = None,
    users: Path | None = None,
) -> Interactions:
    """Interactions from one or more event logs (`read_logs`: their union, duplicates and
    deleted users removed), with item attributes and user attributes (of the users the
    events hold; others listed are ignored)."""
    events = read_logs(paths, thresholds)
    item_ids = events.column("item_id").to_pylist()
    catalogue, features = (None, {}) if items is None else read_attributes(Path(items), "item_id")
    known = sorted(set(item_ids) | set(catalogue or []))
    label = events.column("label").to_numpy()
    keep = np.flatnonzero(label != 2)  # views and skips carry no training label
    if not len(keep) or not (label[keep] == 1).any():
        raise BadEvents(Path(paths[0]), "no likes to train on")
    trained = events.take(pa.array(keep))
    data = events_to_interactions(
        trained.column("user_id").to_pylist(),
        trained.column("item_id").to_pylist(),
        label[keep],
        np.floor(trained.column("seconds").to_numpy()).astype(np.int64),
        item_ids=known,
        context={
            k: trained.column(k).to_pylist() for k in sorted(trained.column_names[len(COLUMNS) :])
        },
    )
    if catalogue is not None:
        position = {item: n for n, item in enumerate(known)}
        rows = np.array([position[i] for i in catalogue], np.int64)
        data.item_features = {
            name: _spread(table, rows, len(known)) for name, table in features.items()
        }
        listed, values = read_attribute_values(Path(items), "item_id")
        data.item_attribute_values = {}
        for name, column in values.items():
            spread = [""] * len(known)
            for item, value in zip(listed, column):
                spread[position[item]] = value
            data.item_attribute_values[name] = spread
    if users is not None:
        listed, user_features = read_attributes(Path(users), "user_id")
        pairs = [(n, data.users.get(u)) for n, u in enumerate(listed)]
        pairs = [(n, u) for n, u in pairs if u is not None]
        take = np.array([n for n, _ in pairs], np.int64)
        rows = np.array([u for _, u in pairs], np.int64)
        data.user_features = {
            name: _spread(table[take], rows, data.n_users) for name, table in user_features.items()
        }
    return data


def _spread(table: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """A per-listed-item table as a per-catalogue-item one (0 for unlisted items)."""
    out = np.zeros((n, *table.shape[1:]), np.float32)
    out[rows] = table
    return out
