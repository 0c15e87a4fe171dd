"""The training primitives of `shortlist.compute` on a Dask cluster.

- Sparse matrices are cut into blocks of rows and scattered to the workers once
  (`split_rows`); products with them (`dot`, `tdot`) run block by block where the blocks
  live. `dot` returns a dask.array chunked by the same row blocks and `qr` is dask's
  tall-and-skinny QR, so the users-sized factors stay spread over the workers; only the
  items-sized ones (`tdot`, a tree sum of per-block products) come back.
- `map` runs a function per part on the workers with shared inputs broadcast once;
  `map_rows` runs one per scattered row block where it lives (the weighted MF's sweeps).
- `fit_lambdarank` is `lightgbm.dask.DaskLGBMRanker` over the lists cut into one chunk of
  whole lists per worker (LightGBM's data-parallel learner).
- `read_parquet` reads events with `dask.dataframe` (one partition per file or row group).
- `run_ranks` trains a torch model data-parallel: one rank per worker in a gloo process
  group whose rendezvous is rank 0's worker host and a port free there
  (`shortlist.compute.ranks`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import dask.dataframe as dd
import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
from distributed import Client, LocalCluster, as_completed, wait
from lightgbm.dask import DaskLGBMRanker

from shortlist.compute import ranks as torch_ranks
from shortlist.ports import free_port

# The stages place their data on purpose (one chunk of ranker lists per worker, so LightGBM
# trains one machine per worker); work stealing would move the small tasks that gather a
# chunk to another worker whenever the chunk's own worker is busy, and LightGBM would then
# train fewer machines than workers. An external scheduler needs the same setting
# (DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING=False, as deploy/k8s sets it).
NO_STEALING = {"distributed.scheduler.work-stealing": False}

# Non-zeros per scattered block: small enough that a worker holds several, large enough that
# per-task overhead stays small against the product.
BLOCK_NNZ = 2_000_000


def _dot(block: sp.csr_matrix, dense: np.ndarray) -> np.ndarray:
    return np.asarray(block @ dense, dtype=np.float32)


def _worker_threads() -> int:
    from distributed import get_worker

    return int(get_worker().state.nthreads)


def _tdot(block: sp.csr_matrix, part: np.ndarray) -> np.ndarray:
    return np.asarray(block.T @ part, dtype=np.float32)


def _rank_task(
    train: Callable[..., Any],
    rank: int,
    world: int,
    address: str,
    port: int,
    timeout_s: float,
    *args: Any,
) -> Any:
    return torch_ranks.run_rank(
        train, rank, world, address, port, _worker_threads(), timeout_s, *args
    )


class DaskRows:
    """A sparse matrix as scattered row blocks: their futures and row counts."""

    def __init__(self, blocks: list[Any], sizes: list[int], n_cols: int) -> None:
        self.blocks, self.sizes, self.n_cols = blocks, sizes, n_cols


class DaskEngine:
    name = "dask"
    distributed = True

    def __init__(
        self, client: Client, cluster: LocalCluster | None = None, lightgbm_port: int = 0
    ) -> None:
        self.client, self.cluster, self.lightgbm_port = client, cluster, lightgbm_port

    @classmethod
    def connect(cls, scheduler: str | None, workers: int = 2, lightgbm_port: int = 0) -> DaskEngine:
        """A client of the scheduler at `scheduler`, or of a new LocalCluster of `workers`
        single-threaded worker processes (each its own memory, as on separate machines).
        `lightgbm_port`: where each worker's LightGBM listens (0: free ports found per fit,
        as workers sharing a machine need)."""
        if scheduler:
            return cls(Client(scheduler, timeout="30s"), lightgbm_port=lightgbm_port)
        with dask.config.set(NO_STEALING):  # read when the scheduler starts
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
        return cls(Client(cluster), cluster)

    @property
    def workers(self) -> int:
        return max(1, len(self.client.scheduler_info(n_workers=-1)["workers"]))

    def split_rows(self, matrix: sp.csr_matrix, min_rows: int = 1) -> DaskRows:
        a = matrix.tocsr()
        n = a.shape[0]
        count = max(self.workers, -(-a.nnz // BLOCK_NNZ))
        count = max(1, min(count, n // max(min_rows, 1)))
        bounds = np.linspace(0, n, count + 1).astype(int)
        parts = [a[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
        blocks = self.client.scatter(parts)
        return DaskRows(blocks, [p.shape[0] for p in parts], a.shape[1])

    def dot(self, rows: DaskRows, dense: np.ndarray) -> da.Array:
        shared = self.client.scatter(np.asarray(dense, np.float32), broadcast=True)
        width = dense.shape[1]
        parts = [
            da.from_delayed(self.client.submit(_dot, b, shared), (n, width), np.float32)
            for b, n in zip(rows.blocks, rows.sizes)
        ]
        return da.concatenate(parts, axis=0)

    def qr(self, row_array: da.Array) -> da.Array:
        q, _ = da.linalg.qr(row_array.rechunk({1: -1}))
        return q.persist()

    def tdot(self, rows: DaskRows, row_array: da.Array) -> np.ndarray:
        pieces = row_array.rechunk({0: tuple(rows.sizes), 1: -1}).to_delayed().ravel()
        width = row_array.shape[1]
        parts = [
            da.from_delayed(dask.delayed(_tdot)(b, p), (rows.n_cols, width), np.float32)
            for b, p in zip(rows.blocks, pieces)
        ]
        return np.asarray(da.stack(parts).sum(axis=0, split_every=4).compute())

    def _broadcast(self, shared: dict[str, Any]) -> dict[str, Any]:
        """Each value on every worker, under a fresh key: a repeated call hashing an equal
        value (a float) to the same key races the release of the previous call's copy
        ("lost dependencies")."""
        return {k: self.client.scatter(v, broadcast=True, hash=False) for k, v in shared.items()}

    def map_rows(
        self, fn: Callable[..., np.ndarray], rows: DaskRows, *arrays: np.ndarray, **shared: Any
    ) -> np.ndarray:
        """fn(block, *arrays' rows of that block, **shared) on the worker holding each block
        (the arrays' slices scattered there, `shared` broadcast once); stacked by rows."""
        scattered = self._broadcast(shared)
        holders = self.client.who_has(rows.blocks)
        bounds = np.concatenate([[0], np.cumsum(rows.sizes)])
        futures, pieces = [], []  # the pieces held until the results are in
        for block, lo, hi in zip(rows.blocks, bounds[:-1], bounds[1:]):
            where = list(holders.get(block.key, ())) or None
            pieces.append([self.client.scatter(a[lo:hi], workers=where) for a in arrays])
            futures.append(self.client.submit(fn, block, *pieces[-1], pure=False, **scattered))
        return np.concatenate(self.client.gather(futures), axis=0)

    def map(self, fn: Callable[..., Any], parts: Sequence[Any], **shared: Any) -> list[Any]:
        scattered = self._broadcast(shared)
        futures = self.client.map(fn, list(parts), pure=False, **scattered)
        wait(futures)
        return self.client.gather(futures)

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
        """DaskLGBMRanker with `params` (LightGBM names) for `rounds` rounds; whole lists
        per chunk, each chunk scattered to a worker of its own: LightGBM trains one machine
        per worker holding data, and chunks left to the scheduler could share a worker (a
        one-machine fit, not data-parallel). Progress callbacks do not cross to the workers."""
        workers = sorted(self.client.scheduler_info(n_workers=-1)["workers"])
        chunks = max(1, min(len(workers), len(groups)))
        list_bounds = np.linspace(0, len(groups), chunks + 1).astype(int)
        row_bounds = np.concatenate([[0], np.cumsum(groups)])[list_bounds]

        def pinned(parts: list[np.ndarray]) -> da.Array:
            arrays = []
            for part, worker in zip(parts, workers):
                future = self.client.scatter(part, workers=[worker], hash=False)
                arrays.append(da.from_delayed(future, shape=part.shape, dtype=part.dtype))
            return da.concatenate(arrays)

        rows = list(zip(row_bounds[:-1], row_bounds[1:]))
        lists = list(zip(list_bounds[:-1], list_bounds[1:]))
        dx = pinned([x[a:b].astype(np.float32) for a, b in rows])
        dy = pinned([y[a:b].astype(np.float32) for a, b in rows])
        dg = pinned([groups[a:b].astype(np.int64) for a, b in lists])
        local = dict(params)
        local.pop("num_threads", None)
        ranker = DaskLGBMRanker(client=self.client, n_estimators=rounds, n_jobs=1, **local)
        ranker.fit(dx, dy, group=dg, feature_name=feature_names)
        return ranker.to_local().booster_

    def read_parquet(self, path: Path) -> pa.Table:
        """A Parquet file or directory of partitions read by dask.dataframe, in file order;
        partition columns (key=value folders) come back as text."""
        frame = dd.read_parquet(str(path)).compute()
        for column in frame.columns:
            if isinstance(frame[column].dtype, pd.CategoricalDtype):
                frame[column] = frame[column].astype(str)
        return pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)

    def run_ranks(self, train: Callable[..., Any], *args: Any, timeout_s: float = 1800.0) -> Any:
        """`train(ranks, *args)` once on every worker, each a rank of one gloo process group
        (rank 0 on the first worker by address, whose host and a port free there are the
        rendezvous); each rank uses its worker's thread count. Rank 0's result."""
        workers = sorted(self.client.scheduler_info(n_workers=-1)["workers"])
        if not workers:
            raise RuntimeError("the Dask cluster has no workers")
        first = workers[0]
        address = first.split("://", 1)[-1].rsplit(":", 1)[0]
        port = self.client.submit(free_port, workers=[first], pure=False).result()
        shared = [self.client.scatter(a, broadcast=True) for a in args]
        futures = [
            self.client.submit(
                _rank_task,
                train,
                rank,
                len(workers),
                address,
                port,
                timeout_s,
                *shared,
                workers=[worker],
                allow_other_workers=False,
                pure=False,
            )
            for rank, worker in enumerate(workers)
        ]
        for future in as_completed(futures):  # a failed rank's error, not the others' timeout
            if future.status == "error":
                self.client.cancel(futures)
                future.result()
        return futures[0].result()

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
