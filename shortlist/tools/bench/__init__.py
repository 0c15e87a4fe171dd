"""Benchmarks behind `shortlist bench ...`: each prints a readable report and a JSON last line."""
