"""scipy CSR matrices as torch CSR tensors, for torch's sparse kernels (threaded, and the
sampled product that numpy and scipy do not have)."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch


def csr_tensor(m: sp.csr_matrix, dtype: np.dtype | type = np.float32) -> torch.Tensor:
    """`m` as a torch CSR tensor of `dtype` (indices sorted, as torch's kernels assume)."""
    m = m.tocsr().astype(dtype)  # a copy: sorting it leaves the caller's matrix alone
    m.sort_indices()
    with warnings.catch_warnings():  # "sparse CSR support is in beta" on every call
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr.astype(np.int64)),
            torch.from_numpy(m.indices.astype(np.int64)),
            torch.from_numpy(m.data),
            size=m.shape,
            check_invariants=False,
        )
