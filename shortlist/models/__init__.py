"""Retrieval models: each learns user and item vectors whose dot product is the score."""
