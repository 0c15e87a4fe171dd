"""`shortlist bench` sub-commands."""

import typer

bench_app = typer.Typer(help="Benchmarks that print figures (quality, serving, feedback).")
