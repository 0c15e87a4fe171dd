"""Event logs in (shortlist.data.events): the same events in every format give the same
data; each kind of bad input names its file, row and column; `shortlist train --events`
exits 2 on it and writes nothing."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from shortlist.data.events import BadEvents, load_events
from shortlist.data.loaders import RatingThresholds
from shortlist.tools.cli import app

EVENTS = [  # user, item, kind, timestamp (ISO), moment
    ("u1", "a", "like", "2026-01-01T10:00:00Z", "home"),
    ("u1", "b", "dislike", "2026-01-01T11:00:00Z", "home"),
    ("u1", "a", "view", "2026-01-02T09:00:00Z", ""),  # a view never undoes a like
    ("u2", "a", "like", "2026-01-01T08:00:00Z", "commute"),
    ("u2", "a", "dislike", "2026-01-03T08:00:00Z", "commute"),  # the later one wins
    ("u2", "c", "LIKE", "2026-01-02T08:00:00+01:00", "commute"),
    ("u3", "c", "skip", "2026-01-04T08:00:00Z", "home"),
    ("u3", "b", "like", "2026-01-04T09:00:00Z", ""),
]
COLUMNS = ["user_id", "item_id", "kind", "timestamp", "moment"]


def write_csv(path, rows, columns=COLUMNS):
    lines = [",".join(columns)] + [",".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_jsonl(path, rows, columns=COLUMNS):
    path.write_text("".join(json.dumps(dict(zip(columns, r))) + "\n" for r in rows))
    return path


def table(rows, columns=COLUMNS) -> pa.Table:
    return pa.table({c: [r[n] for r in rows] for n, c in enumerate(columns)})


def summary(data):
    """Everything the trainer reads, in id terms (independent of id order)."""
    pos, neg = data.positives.tocoo(), data.negatives.tocoo()
    likes = {
        (data.users.id(int(u)), data.items.id(int(i))): (int(t), m)
        for u, i, t, m in zip(pos.row, pos.col, data.timestamps, data.context["moment"])
    }
    dislikes = {(data.users.id(int(u)), data.items.id(int(i))) for u, i in zip(neg.row, neg.col)}
    return likes, dislikes, data.items.to_list()


def test_every_format_gives_the_same_data(tmp_path):
    parts = tmp_path / "parts"
    for day in ("2026-01-01", "2026-01-02"):
        rows = [r for r in EVENTS if r[3][:10] == day] or EVENTS[:1]
        (parts / f"date={day}").mkdir(parents=True)
        pq.write_table(table(rows), parts / f"date={day}" / "events.parquet")
    rest = [r for r in EVENTS if r[3][:10] not in {"2026-01-01", "2026-01-02"}]
    (parts / "date=2026-01-03").mkdir()
    pq.write_table(table(rest), parts / "date=2026-01-03" / "events.parquet")
    pq.write_table(table(EVENTS), tmp_path / "events.parquet")
    found = [
        summary(load_events([p]))
        for p in (
            write_csv(tmp_path / "events.csv", EVENTS),
            write_jsonl(tmp_path / "events.jsonl", EVENTS),
            tmp_path / "events.parquet",
            parts,
        )
    ]
    assert all(f == found[0] for f in found[1:])
    likes, dislikes, items = found[0]
    jan1 = 1767225600  # 2026-01-01T00:00:00Z
    assert likes == {
        ("u1", "a"): (jan1 + 10 * 3600, "home"),
        ("u2", "c"): (jan1 + 86400 + 7 * 3600, "commute"),  # +01:00 is 07:00 UTC
        ("u3", "b"): (jan1 + 3 * 86400 + 9 * 3600, ""),
    }
    assert dislikes == {("u1", "b"), ("u2", "a")}
    assert items == ["a", "b", "c"]


def test_epoch_seconds_and_iso_text_are_the_same_time(tmp_path):
    iso = write_csv(tmp_path / "iso.csv", [("u", "a", "like", "2026-01-01T00:00:10Z", "x")])
    epoch = write_csv(tmp_path / "epoch.csv", [("u", "a", "like", "1767225610", "x")])
    assert load_events([iso]).timestamps.tolist() == load_events([epoch]).timestamps.tolist()


def test_ratings_map_to_likes_and_dislikes_by_thresholds(tmp_path):
    rows = [("u", "a", 5, 1, ""), ("u", "b", 3, 2, ""), ("u", "c", 1, 3, ""), ("v", "a", 4, 4, "")]
    path = write_jsonl(tmp_path / "ratings.jsonl", rows)
    likes, dislikes, _ = summary(load_events([path]))
    assert set(likes) == {("u", "a"), ("v", "a")} and dislikes == {("u", "c")}
    likes, dislikes, _ = summary(load_events([path], thresholds=RatingThresholds(5, 3)))
    assert set(likes) == {("u", "a")} and dislikes == {("u", "b"), ("u", "c")}


def test_several_logs_are_trained_on_together(tmp_path):
    first = write_csv(tmp_path / "history.csv", EVENTS[:4])
    later = write_jsonl(tmp_path / "live.jsonl", EVENTS[4:])
    assert summary(load_events([first, later])) == summary(
        load_events([write_csv(tmp_path / "all.csv", EVENTS)])
    )


@pytest.mark.parametrize(
    ("rows", "columns", "row", "column", "message"),
    [
        (EVENTS, ["user_id", "item_id", "kind", "time", "moment"], None, None, "timestamp"),
        (
            [*EVENTS[:2], ("u1", "z", "likee", "2026-01-01T10:00:00Z", "")],
            COLUMNS,
            3,
            "kind",
            "unknown kind 'likee'",
        ),
        (
            [*EVENTS[:3], ("u1", "z", "like", "yesterday", "")],
            COLUMNS,
            4,
            "timestamp",
            "not a time",
        ),
        ([*EVENTS[:1], ("", "z", "like", "1", "")], COLUMNS, 2, "user_id", "empty id"),
        ([], COLUMNS, None, None, "no events"),
        ([("u", "a", "view", "1", "")], COLUMNS, None, None, "no likes"),
    ],
    ids=["missing-column", "unknown-kind", "bad-time", "empty-id", "empty", "no-likes"],
)
def test_bad_input_names_file_row_and_column(tmp_path, rows, columns, row, column, message):
    path = write_csv(tmp_path / "bad.csv", rows, columns)
    with pytest.raises(BadEvents) as bad:
        load_events([path])
    text = str(bad.value)
    assert text.startswith(str(path)) and message in text
    if row is not None:
        assert f"row {row}" in text and f"column {column!r}" in text


def test_unknown_formats_and_missing_files_are_refused(tmp_path):
    (tmp_path / "events.xlsx").write_text("x")
    for path in (tmp_path / "events.xlsx", tmp_path / "absent.csv", tmp_path):
        with pytest.raises(BadEvents, match=str(path)):
            load_events([path])


def test_item_attributes_numbers_categories_and_free_text(tmp_path):
    events = write_csv(tmp_path / "events.csv", EVENTS)
    titles = [f"A long title number {n}, with commas" for n in range(60)]
    items = pa.table(
        {
            "item_id": ["a", "b", "c", "d"],
            "price": [1.0, 3.0, None, 5.0],
            "genre": ["jazz", "rock", "jazz", None],
            "title": titles[:4],
        }
    )
    pq.write_table(items, tmp_path / "items.parquet")
    data = load_events([events], tmp_path / "items.parquet")
    assert data.items.to_list() == ["a", "b", "c", "d"]  # d: listed, no events yet
    assert set(data.item_features) == {"price", "genre", "title"}  # 4 titles: categories
    assert data.item_features["genre"].tolist() == [[1, 0], [0, 1], [1, 0], [0, 0]]
    price = data.item_features["price"]
    assert price[2] == pytest.approx(np.mean(price[[0, 1, 3]]))  # missing: the mean
    many = pa.table({"item_id": [f"i{n}" for n in range(60)], "title": titles})
    pq.write_table(many, tmp_path / "many.parquet")
    assert "title" not in load_events([events], tmp_path / "many.parquet").item_features
    duplicated = write_csv(tmp_path / "dup.csv", [("a", 1), ("a", 2)], ["item_id", "price"])
    with pytest.raises(BadEvents, match="row 2, column 'item_id'"):
        load_events([events], duplicated)


def test_user_attributes_reach_the_users_of_the_events(tmp_path):
    events = write_csv(tmp_path / "events.csv", EVENTS)
    users = write_csv(
        tmp_path / "users.csv",
        [("u3", 40, "F"), ("u1", 20, "M"), ("u9", 99, "M")],  # u9: no events, ignored
        ["user_id", "age", "gender"],
    )
    data = load_events([events], users=users)
    assert set(data.user_features) == {"age", "gender"}
    gender = {data.users.id(n): row.tolist() for n, row in enumerate(data.user_features["gender"])}
    assert gender == {"u1": [0, 1], "u2": [0, 0], "u3": [1, 0]}  # u2 unlisted: zeros
    no_id = write_csv(tmp_path / "no_id.csv", [("x", 1)], ["id", "age"])
    with pytest.raises(BadEvents, match="missing column user_id"):
        load_events([events], users=no_id)


def test_train_from_events_exits_2_on_bad_input_and_writes_nothing(tmp_path):
    bad = write_csv(tmp_path / "bad.csv", [*EVENTS[:2], ("u", "z", "love", "1", "")])
    out = tmp_path / "artifacts"
    result = CliRunner().invoke(app, ["train", "--events", str(bad), "--out", str(out)])
    assert result.exit_code == 2
    assert "row 3" in result.output and "'kind'" in result.output and "love" in result.output
    assert not out.exists()


@pytest.mark.slow
def test_train_from_events_uses_context_and_item_attributes(tmp_path):
    rng = np.random.default_rng(0)
    users, items = [f"u{n}" for n in range(60)], [f"i{n}" for n in range(40)]
    rows = [
        (u, items[int(i)], "like", 1767225600 + 3600 * t, ["home", "commute"][t % 2])
        for t, u in enumerate(users * 6)
        for i in [rng.integers(0, 40)]
    ]
    events = write_csv(tmp_path / "events.csv", rows)
    catalogue = write_csv(
        tmp_path / "items.csv",
        [(i, n % 3, ["x", "y"][n % 2]) for n, i in enumerate(items)],
        ["item_id", "size", "colour"],
    )
    out = tmp_path / "artifacts"
    args = ["train", "--events", str(events), "--items", str(catalogue), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--epochs", "2", "--dim", "8"])
    assert result.exit_code == 0, result.output
    version = (out / "LATEST").read_text().strip()
    manifest = json.loads((out / version / "manifest.json").read_text())
    assert manifest["item_feature_names"] == ["colour_0", "colour_1", "size"]
    assert manifest["context_values"] == {"moment": ["commute", "home"]}
