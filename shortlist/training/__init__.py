"""The offline pipeline that trains retrieval and the rankers and builds a bundle."""
