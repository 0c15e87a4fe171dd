"""Tooling above everything else and never imported by it: the `shortlist` CLI, the demo, the local
stack, the load test and the benchmarks.
"""
