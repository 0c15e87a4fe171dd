"""Offline pipeline tests: metrics, loaders, splits, models and the quality bench."""
