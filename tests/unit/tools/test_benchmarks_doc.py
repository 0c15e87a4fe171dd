"""docs/benchmarks.md stays true: every row names a command that exists with the options it
gives, and where the command's JSON output is kept (docs/results/<command slug>.json) the
row's key is in it and its value is the one the JSON holds."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import typer

from shortlist.tools.cli import app

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "docs" / "results"
HEADER = ["area", "metric", "value", "key", "command", "host"]


def rows() -> list[dict[str, str]]:
    out, header = [], None
    for line in DOC.read_text().splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            assert header == HEADER, line
        elif not set(line) <= set("|- "):
            assert len(cells) == len(HEADER), line
            out.append(dict(zip(HEADER, cells)))
    return out


def code(cell: str) -> str:
    match = re.fullmatch(r"`([^`]+)`", cell)
    assert match, f"not one code span: {cell!r}"
    return match.group(1)


def slug(command: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", command.lower()).strip("-")


def lookup(data, key: str):
    """A dotted path into the JSON; `name[field=value,...]` picks the matching list element."""
    for part in re.findall(r"[^.\[]+(?:\[[^\]]*\])?", key):
        name, _, selector = part.partition("[")
        if name not in data:  # keys such as "recall@20" or "ndcg@20_lift" hold no dot
            raise KeyError(f"{key}: no {name!r}")
        data = data[name]
        if selector:
            want = dict(p.split("=") for p in selector.rstrip("]").split(","))
            (data,) = [e for e in data if all(str(e.get(k)) == v for k, v in want.items())]
    return data


def first_number(value: str) -> float | None:
    match = re.search(r"[-+]?\d[\d,]*\.?\d*|[-+]?\.\d+", value)
    if match is None:
        return None
    number = float(match.group(0).replace(",", ""))
    return number / 100 if "%" in value[match.end() : match.end() + 1] else number


ALL = rows()


def test_the_document_has_rows_in_every_area():
    assert {r["area"] for r in ALL} >= {"quality", "ranking", "index", "serving", "feedback"}


@pytest.mark.parametrize("command", sorted({code(r["command"]) for r in ALL}))
def test_every_command_exists_with_the_options_it_gives(command):
    words = shlex.split(command)
    if words[0] == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M)
        assert words[1] in targets
        for assignment in words[2:]:
            name = assignment.split("=")[0]
            assert re.search(rf"^{name}\s*\?=", (ROOT / "Makefile").read_text(), re.M), name
        return
    assert words[0] == "shortlist", command
    group = typer.main.get_command(app)
    args = words[1:]
    while hasattr(group, "commands") and args and args[0] in group.commands:
        group = group.commands[args.pop(0)]
    assert not hasattr(group, "commands"), f"{command}: not a command"
    group.make_context(command, list(args))  # exits 2 on an unknown option or a bad value


def test_rows_agree_with_the_kept_json_outputs():
    checked = 0
    for row in ALL:
        path = RESULTS / f"{slug(code(row['command']))}.json"
        if not path.exists():
            continue
        found = lookup(json.loads(path.read_text()), code(row["key"]))
        expected = first_number(row["value"])
        if isinstance(found, bool) or expected is None:
            assert str(found).lower() in row["value"].lower() or found == {}, row
        else:
            assert found == pytest.approx(expected, rel=0.006, abs=6e-4), row
        checked += 1
    assert checked or not list(RESULTS.glob("*.json"))
