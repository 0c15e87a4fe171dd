"""`shortlist.compute.ranks` without a process group: the single rank changes nothing, and
the shares of a global batch cover it once with weights that average to the whole batch's
mean (the arithmetic the data-parallel loops rely on; the ranks themselves run in
tests/integration/test_torch_distributed.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shortlist.compute import InProcess, using
from shortlist.compute.ranks import SINGLE, Ranks, data_parallel, in_this_process


def test_the_single_rank_takes_everything_and_wraps_nothing():
    batch = np.arange(7)
    module = torch.nn.Linear(2, 1)
    assert SINGLE.main and not SINGLE.distributed
    assert SINGLE.part(batch) is batch and SINGLE.wrap(module) is module
    assert SINGLE.share(7, 7) == 1.0 and SINGLE.agree("x") == "x"
    rows = torch.ones(7, 2)
    assert SINGLE.gather(rows, 7) is rows
    assert SINGLE.torch_threads(3) == 3 and Ranks(threads=1).torch_threads(3) == 1


@pytest.mark.parametrize("world,total", [(2, 9), (3, 10), (4, 3)])
def test_shares_cover_the_batch_once_and_weight_to_its_mean(world, total):
    ranks = [Ranks(rank, world) for rank in range(world)]
    batch = np.arange(total)
    parts = [r.part(batch) for r in ranks]
    assert np.array_equal(np.concatenate(parts), batch)
    assert [r.bounds(total) for r in ranks][0][0] == 0 and ranks[-1].bounds(total)[1] == total
    # each rank's loss is a mean over its part times its share; DDP averages over ranks
    values = np.random.default_rng(0).normal(size=total)
    averaged = np.mean(
        [
            v.mean() * r.share(len(v), total) if len(v) else 0.0
            for r, v in zip(ranks, [values[p] for p in parts])
        ]
    )
    assert averaged == pytest.approx(values.mean())


def test_data_parallel_in_process_is_one_call_with_the_single_rank():
    with using(InProcess()):
        assert data_parallel(lambda ranks, x: (ranks, x + 1), 1) == (SINGLE, 2)


class _Cluster:
    """An engine that would run the ranks elsewhere."""

    name, distributed = "fake", True

    def run_ranks(self, train, *args):
        return ("ranks", args)


def test_a_distributed_engine_gets_the_ranks_unless_the_block_keeps_them_here():
    with using(_Cluster()):
        assert data_parallel(lambda ranks, x: (ranks, x), 1) == ("ranks", (1,))
        with in_this_process():  # the options search: its budget is this process's CPU
            assert data_parallel(lambda ranks, x: (ranks, x), 1) == (SINGLE, 1)
        assert data_parallel(lambda ranks, x: (ranks, x), 1) == ("ranks", (1,))
