"""Data-parallel training of the torch models: one loop, run by one rank or by several.

Every torch model's training loop takes a `Ranks`: in process it is the single rank (no
process group, the module unwrapped, the whole batch), on Dask one rank runs on each worker
with a gloo process group (`DaskEngine.run_ranks`). The loop is the same either way:

- every rank draws the same random numbers (same seed, same calls), so the global batch
  order, the sampled negatives and the initial weights agree without messages;
- each rank computes the loss on its share of the global batch (`part`), scaled by
  `share` so that DistributedDataParallel's gradient average is the gradient of the loss on
  the whole batch, as one process would compute it;
- validation runs on rank 0 and the early-stopping decision is broadcast (`agree`), so all
  ranks stop at the same epoch; rank 0's weights are the result.
"""

from __future__ import annotations

import datetime
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather

BACKEND = "gloo"  # CPU tensors; NCCL would need a GPU per rank


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks training one model (rank 0 of 1 in process).
    `threads`: torch threads for this rank when the engine decides (a Dask worker's thread
    count), else None and the model's own setting holds."""

    rank: int = 0
    world: int = 1
    threads: int | None = None

    @property
    def main(self) -> bool:
        """Whether this rank validates, reports progress and returns the weights."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def torch_threads(self, configured: int) -> int:
        """The thread count to give torch: the engine's where it sets one."""
        return max(1, self.threads if self.threads is not None else configured)

    def part(self, batch: np.ndarray | torch.Tensor) -> Any:
        """This rank's contiguous share of a global batch (all of it with one rank)."""
        if self.world == 1:
            return batch
        lo, hi = self.bounds(len(batch))
        return batch[lo:hi]

    def bounds(self, total: int) -> tuple[int, int]:
        """Where this rank's part of a global batch of `total` starts and ends."""
        edges = np.linspace(0, total, self.world + 1).astype(int)
        return int(edges[self.rank]), int(edges[self.rank + 1])

    def gather(self, part: torch.Tensor, total: int) -> torch.Tensor:
        """The rows every rank computed for its part of a global batch of `total`, in batch
        order, with gradients flowing back to the rank that computed them (for losses whose
        negatives are the whole batch's). `part` itself with one rank."""
        if self.world == 1:
            return part
        edges = np.linspace(0, total, self.world + 1).astype(int)
        sizes = np.diff(edges)
        longest = int(sizes.max())  # all_gather wants equal shapes: pad, then drop the pad
        pad = part.new_zeros((longest - len(part), *part.shape[1:]))
        with warnings.catch_warnings():  # deprecated for a private API; still the public one
            warnings.simplefilter("ignore", FutureWarning)
            pieces = all_gather(torch.cat([part, pad]))
        return torch.cat([piece[:size] for piece, size in zip(pieces, sizes)])

    def share(self, local: int, total: int) -> float:
        """The factor on a loss averaged over `local` of a global batch's `total` examples
        that makes the ranks' averaged gradient the whole batch's mean-loss gradient (1.0
        with one rank). DistributedDataParallel averages over ranks, so local means are
        weighted by local / total and multiplied back by the world size."""
        if self.world == 1:
            return 1.0
        return local * self.world / max(total, 1)

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module as the loop calls it: DistributedDataParallel across the ranks (its
        gradients averaged in backward, rank 0's initial weights broadcast), or itself. The
        models' buffers are constants (features, masks), so they are not sent every step."""
        if self.world == 1:
            return module
        return torch.nn.parallel.DistributedDataParallel(module, forward_sync_buffers=False)

    def agree(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (a decision only rank 0 can take)."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


SINGLE = Ranks()


class Pair(torch.nn.Module):
    """Two modules called as one, so DistributedDataParallel sees one forward pass:
    `pair(x, y) == (first(x), second(y))`."""

    def __init__(self, first: torch.nn.Module, second: torch.nn.Module) -> None:
        super().__init__()
        self.first, self.second = first, second

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.first(x), self.second(y)


_HERE: ContextVar[bool] = ContextVar("shortlist_torch_here", default=False)


@contextmanager
def in_this_process() -> Iterator[None]:
    """Torch fits inside the block run here with the single rank, whatever the engine: for
    the options search, whose budget counts this process's CPU seconds (fits on the ranks
    would not spend them, so the search would run further on Dask than in process)."""
    token = _HERE.set(True)
    try:
        yield
    finally:
        _HERE.reset(token)


def data_parallel(train: Callable[..., Any], *args: Any) -> Any:
    """`train(ranks, *args)` on the current engine: once here with the single rank, or once
    per worker on Dask with a gloo process group (rank 0's return value comes back)."""
    from shortlist import compute

    engine = compute.current()
    if getattr(engine, "distributed", False) and not _HERE.get():
        return engine.run_ranks(train, *args)
    return train(SINGLE, *args)


def run_rank(
    train: Callable[..., Any],
    rank: int,
    world: int,
    address: str,
    port: int,
    threads: int | None,
    timeout_s: float,
    *args: Any,
) -> Any:
    """One rank's part: join the gloo group at rank 0's `address:port`, train, leave the
    group. Only rank 0's result is returned (the others return None)."""
    dist.init_process_group(
        BACKEND,
        init_method=f"tcp://{address}:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    try:
        result = train(Ranks(rank, world, threads), *args)
        dist.barrier()
        return result if rank == 0 else None
    finally:
        dist.destroy_process_group()


def fit_model(model: Any, data: Any, validate: Any = None) -> Any:
    """`model._train(ranks, data, validate)` on the current engine (see `data_parallel`);
    on Dask the trained model comes back from rank 0 and replaces `model`'s state. Returns
    the fit report."""
    trained, report = data_parallel(_train_model, model, data, validate)
    if trained is not model:
        model.__dict__.update(trained.__dict__)
    return report


def _train_model(ranks: Ranks, model: Any, data: Any, validate: Any) -> tuple[Any, Any]:
    report = model._train(ranks, data, validate)
    return model, report
