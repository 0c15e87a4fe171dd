"""Offline evaluation: top-K metrics and the two benchmark protocols."""

from shortlist.evaluation.metrics import evaluate, per_user_metrics

__all__ = ["evaluate", "per_user_metrics"]
