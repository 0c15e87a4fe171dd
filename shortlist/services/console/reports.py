"""The reports and plots the benchmarks and the load test wrote, for the console to link.

`make bench-quality` writes its report and validation curves under `reports/`, and
`shortlist loadtest --plot reports/NAME.png` its latency plot; the console lists what is
there, newest first, and serves the files read-only (Starlette's StaticFiles, which keeps
requests inside the folder).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

SHOWN_SUFFIXES = (".png", ".svg", ".md", ".json", ".html")
MAX_LISTED = 50
MAX_DEPTH = 3


def list_reports(directory: Path) -> list[dict[str, Any]]:
    """Files under `directory` (up to MAX_DEPTH folders deep), newest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.rglob("*"):
        relative = path.relative_to(directory)
        if (
            path.suffix.lower() in SHOWN_SUFFIXES
            and len(relative.parts) <= MAX_DEPTH
            and not any(part.startswith(".") for part in relative.parts)
            and path.is_file()
        ):
            stat = path.stat()
            found.append((stat.st_mtime, relative.as_posix(), stat.st_size))
    found.sort(reverse=True)
    return [
        {
            "path": name,
            "bytes": size,
            "modified": time.strftime("%Y-%m-%d %H:%M", time.localtime(mtime)),
            "image": name.lower().endswith((".png", ".svg")),
        }
        for mtime, name, size in found[:MAX_LISTED]
    ]
