"""Shortlist: a two-stage recommender (FAISS retrieval, LightGBM ranking) served over gRPC."""

__version__ = "0.1.0"
