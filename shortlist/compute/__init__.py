"""Where the training stages run: in this process (the default) or on a Dask cluster.

The stages (the spectral filter's SVD, the weighted MF's sweeps, the item-item table, the
ranker fit, reading Parquet events) are written once against the few primitives of
`Engine`; `using(engine)` selects which engine they run on for a block of code.
`InProcess` is the single-machine path the project always had;
`shortlist.compute.dask_engine.DaskEngine` runs the same steps on Dask workers (`shortlist
train --engine dask`).

A "row array" is what `dot` and `qr` return: a dense matrix split by rows the way the
engine keeps it (one NumPy array in process, a dask.array chunked by row blocks on Dask), so
the users-sized side of a factorisation never has to fit on one machine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import scipy.sparse as sp
import torch


class InProcess:
    """Every primitive in this process, on whole matrices."""

    name = "inprocess"
    distributed = False

    def split_rows(self, matrix: sp.csr_matrix, min_rows: int = 1) -> Any:
        """`matrix` kept for `dot`/`tdot` in blocks of at least `min_rows` rows (here: one
        block, it and its transpose, both CSR)."""
        a = matrix.tocsr()
        return a, a.T.tocsr()

    def dot(self, rows: Any, dense: np.ndarray) -> np.ndarray:
        """rows @ dense, as a row array."""
        return rows[0] @ dense

    def tdot(self, rows: Any, row_array: np.ndarray) -> np.ndarray:
        """rows^T @ row_array (columns x width), in this process."""
        return rows[1] @ row_array

    def qr(self, row_array: np.ndarray) -> np.ndarray:
        """An orthonormal basis (Q of a reduced QR) of a row array's columns."""
        q, _ = torch.linalg.qr(torch.from_numpy(np.ascontiguousarray(row_array)))
        return q.numpy()

    def map(self, fn: Callable[..., Any], parts: Sequence[Any], **shared: Any) -> list[Any]:
        """[fn(part, **shared) for part in parts]."""
        return [fn(part, **shared) for part in parts]

    def map_rows(
        self, fn: Callable[..., np.ndarray], rows: Any, *arrays: np.ndarray, **shared: Any
    ) -> np.ndarray:
        """fn(block, *arrays' rows of that block, **shared) per row block of `rows` (from
        `split_rows`), the results stacked by rows (here: one block, the whole matrix)."""
        return fn(rows[0], *arrays, **shared)

    def fit_lambdarank(
        self,
        params: dict,
        x: np.ndarray,
        y: np.ndarray,
        groups: np.ndarray,
        rounds: int,
        feature_names: list[str],
        callbacks: list | None = None,
    ) -> lgb.Booster:
        dataset = lgb.Dataset(x, y, group=groups, feature_name=feature_names)
        return lgb.train(params, dataset, num_boost_round=rounds, callbacks=callbacks or [])

    def read_parquet(self, path: Path) -> pa.Table | None:
        """None: the caller reads it (DuckDB) in this process."""
        return None

    def close(self) -> None:
        pass


Engine = InProcess  # the interface: DaskEngine offers the same methods

_IN_PROCESS = InProcess()
_CURRENT: ContextVar[Any] = ContextVar("shortlist_compute_engine", default=None)


def current() -> Any:
    """The engine the training stages run on (InProcess unless inside `using`)."""
    engine = _CURRENT.get()
    return _IN_PROCESS if engine is None else engine


@contextmanager
def using(engine: Any) -> Iterator[Any]:
    """Run the training stages inside the block on `engine`."""
    token = _CURRENT.set(engine)
    try:
        yield engine
    finally:
        _CURRENT.reset(token)


ENGINES = ("inprocess", "dask")


@contextmanager
def engine_for(
    name: str, scheduler: str | None = None, workers: int = 2, lightgbm_port: int = 0
) -> Iterator[Any]:
    """The named engine, selected for the block and closed after it: "inprocess", or "dask"
    on the scheduler at `scheduler` (a `distributed.LocalCluster` of `workers` processes
    when None; `lightgbm_port` as `DaskEngine.connect`)."""
    if name not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {name!r}")
    if name == "inprocess":
        if scheduler:
            raise ValueError("--scheduler goes with --engine dask")
        with using(InProcess()) as engine:
            yield engine
        return
    from shortlist.compute.dask_engine import DaskEngine

    engine = DaskEngine.connect(scheduler, workers, lightgbm_port)
    try:
        with using(engine):
            yield engine
    finally:
        engine.close()
