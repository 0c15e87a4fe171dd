"""The retrieval stage: FAISS index, precomputed shortlists, search memo and `retrieve()`."""
