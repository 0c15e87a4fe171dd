"""`python -m shortlist.services [NAME]`: run one service in the foreground, with settings
from SHORTLIST_* environment variables. The container entrypoint (no tooling needed): without
NAME it serves the one SHORTLIST_SERVICE names (set by the image's build argument)."""

from __future__ import annotations

import os
import sys

from shortlist.config import Settings
from shortlist.rpc.logs import configure
from shortlist.services.launch import SERVICES, serve


def main(argv: list[str]) -> int:
    argv = argv or [os.environ.get("SHORTLIST_SERVICE", "")]
    if len(argv) != 1 or argv[0] not in SERVICES:
        print(f"usage: python -m shortlist.services {{{'|'.join(SERVICES)}}}", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    configure(settings.log_format)
    serve(argv[0], settings)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
