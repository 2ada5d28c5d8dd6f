"""The KV block manager: allocation on admit, growth on decode, release, exhaustion."""
from __future__ import annotations

import pytest
from gptoss.actors.rank.block_manager import BlockManager


def test_grow_allocates_whole_blocks_on_demand():
    bm = BlockManager(num_blocks=8, block_size=4)
    table: list[int] = []
    assert bm.grow(table, 5) == [0, 1] and table == [0, 1]  # 5 positions -> 2 blocks
    assert bm.grow(table, 8) == []  # still fits in 2 blocks
    assert bm.grow(table, 9) == [2]
    assert bm.used == 3 and len(bm.free) == 5
    assert bm.blocks_for(0) == 0 and bm.blocks_for(1) == 1 and bm.blocks_for(4) == 1


def test_release_returns_every_block_and_reuses_them():
    bm = BlockManager(num_blocks=4, block_size=2)
    a: list[int] = []
    b: list[int] = []
    bm.grow(a, 4)
    bm.grow(b, 3)
    assert bm.used == 4 and set(a) | set(b) == {0, 1, 2, 3}
    bm.release(a)
    assert a == [] and bm.used == 2
    c: list[int] = []
    bm.grow(c, 4)
    assert sorted(c) == [0, 1] and bm.used == 4  # a's blocks, given to c


def test_exhaustion_is_visible_before_it_happens():
    bm = BlockManager(num_blocks=3, block_size=16)
    t: list[int] = []
    bm.grow(t, 40)  # 3 blocks
    assert not bm.can_grow(t, 49) and bm.can_grow(t, 48)
    with pytest.raises(MemoryError):
        bm.grow(t, 49)
    assert t == [0, 1, 2] and bm.used == 3  # a failed grow takes nothing
    assert bm.can_grow([], 0) and not bm.can_grow([], 1)


def test_rejects_an_empty_pool():
    with pytest.raises(ValueError):
        BlockManager(0, 16)


def test_reclaim_frees_what_nobody_owns():
    bm = BlockManager(num_blocks=6, block_size=4)
    kept: list[int] = []
    lost: list[int] = []
    bm.grow(kept, 8)
    bm.grow(lost, 12)  # its owner vanishes without a release
    bm.reclaim(set(kept))
    assert bm.used == 2 and set(bm.free) == set(range(6)) - set(kept)
