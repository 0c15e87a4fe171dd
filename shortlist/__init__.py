"""Shortlist: a two-stage recommender (FAISS retrieval, LightGBM ranking) served over gRPC."""

import os

# OpenMP threads (LightGBM's and torch's) that find no work spin before they sleep. On a
# host shared with other work the spinning threads take the cores the working ones need: a
# 2-thread LambdaRank fit at load average 33 took 223 s against 8 s with passive waiting (and
# 19 s on one thread). Set before LightGBM or torch load their OpenMP runtime; an explicit
# setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

__version__ = "0.1.0"
