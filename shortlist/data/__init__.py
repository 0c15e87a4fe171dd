"""Datasets: interaction matrices with their id maps, loaders, splits and the built-in data."""

from shortlist.data.interactions import Interactions

__all__ = ["Interactions"]
