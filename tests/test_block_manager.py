"""The KV block manager: allocation on admit, growth on decode, sliding blocks released out of the window,
release, exhaustion, and the prefix cache (hash chain, sharing by reference count, LRU eviction)."""
from __future__ import annotations

import pytest
from gptoss.actors.rank.block_manager import FULL, SLIDING, BlockManager, block_hashes

SEED = b"model"


def test_grow_allocates_whole_blocks_on_demand():
    bm = BlockManager(num_blocks=8, block_size=4)
    full: list[int] = []
    assert bm.grow(full, [], 5) == [(FULL, 0, 0), (FULL, 1, 1)] and full == [0, 1]  # 5 positions -> 2 blocks
    assert bm.grow(full, [], 8) == []  # still fits in 2 blocks
    assert bm.grow(full, [], 9) == [(FULL, 2, 2)]
    assert bm.used == 3 and bm.available == 5
    assert bm.blocks_for(0) == 0 and bm.blocks_for(1) == 1 and bm.blocks_for(4) == 1


def test_sliding_blocks_leave_the_window():
    bm = BlockManager(num_blocks=16, block_size=4, window=8)
    full: list[int] = []
    sw: list[int] = []
    assert bm.need(0, 0, 12) == 3 + 3
    bm.grow(full, sw, 12)
    assert bm.used == 6
    bm.trim(sw, 12)  # a query at 12 sees 5..12: block 0 (0..3) is out
    assert sw[0] == -1 and sw[1] >= 0 and bm.used == 5
    assert bm.need(len(full), len(sw), 13) == 2  # one full + one sliding for positions 12..15
    # a request alone needs its full blocks and one window's sliding blocks (ceil(7 / 4) + 1)
    assert bm.alone(40) == 10 + 3 and bm.alone(4) == 1 + 1
    bm.release(full, sw)
    assert full == sw == [] and bm.used == 0


def test_exhaustion_is_visible_before_it_happens():
    bm = BlockManager(num_blocks=3, block_size=16)
    t: list[int] = []
    bm.grow(t, [], 40)  # 3 blocks
    assert bm.need(len(t), 0, 49) > bm.available and bm.need(len(t), 0, 48) == 0
    with pytest.raises(MemoryError):
        bm.grow(t, [], 49)
    assert bm.fit(0, 0) == 0 and bm.need(0, 0, 0) == 0


def test_rejects_an_empty_pool():
    with pytest.raises(ValueError):
        BlockManager(0, 16)


def test_hash_chain_names_the_whole_prefix():
    a = block_hashes(list(range(10)), 4, SEED)
    assert len(a) == 2  # complete blocks only
    assert block_hashes(list(range(8)) + [99, 99], 4, SEED) == a  # the partial block does not count
    assert block_hashes([0, 1, 2, 3, 9, 5, 6, 7], 4, SEED)[0] == a[0] != block_hashes([0, 1, 2, 3, 9, 5, 6, 7], 4, SEED)[1]
    assert block_hashes(list(range(8)), 4, b"other model")[0] != a[0]  # the seed is part of every hash
    assert block_hashes(list(range(12)), 4, SEED, list(a))[:2] == a  # extending keeps the known ones


def test_prefix_is_shared_then_cached_then_evicted_lru():
    bm = BlockManager(num_blocks=8, block_size=4)
    toks = list(range(13))
    h = block_hashes(toks, 4, SEED)
    full: list[int] = []
    bm.grow(full, [], 13)
    assert bm.match(h, 13) == 0  # nothing is registered before its K/V are written
    bm.register(h, full, [], 0, 3)
    assert bm.match(h, 13) == 3 and bm.match(h, 12) == 2  # at least the last token is computed
    other: list[int] = []
    bm.take_cached(h, 3, other, [])
    assert other == full[:3] and bm.used == 4  # shared, not copied
    bm.release(full, [])
    assert bm.used == 3 and len(bm.lru) == 0  # still held by `other`
    bm.release(other, [])
    assert bm.used == 0 and len(bm.lru) == 3 and len(bm.cached) == 3
    # new blocks come from never-registered ones first, then the least recently released cached ones
    t: list[int] = []
    bm.grow(t, [], 5 * 4)
    assert len(bm.cached) == 3 and bm.take_evicted() == []
    bm.grow(t, [], 6 * 4)
    assert len(bm.cached) == 2 and bm.take_evicted() == [h[2]]  # the tail went first
    assert bm.match(h, 13) == 2  # blocks 0 and 1 are still there


def test_sliding_hit_needs_the_window_before_the_reuse_point():
    bm = BlockManager(num_blocks=32, block_size=4, window=8)
    toks = list(range(24))
    h = block_hashes(toks, 4, SEED)
    full: list[int] = []
    sw: list[int] = []
    bm.grow(full, sw, 24)
    bm.register(h, full, sw, 0, 6)
    bm.release(full, sw)
    assert bm.match(h, 25) == 6
    del bm.cached[(SLIDING, h[3])]  # a query at 24 sees 17..24 (blocks 4, 5): block 3 is not needed
    assert bm.match(h, 25) == 6
    del bm.cached[(SLIDING, h[4])]  # ... block 4 is: the longest usable hit is 4 blocks (16 sees 9..16)
    assert bm.match(h, 25) == 3  # 4 blocks would need sliding block 3, gone too
    f2: list[int] = []
    s2: list[int] = []
    entries = bm.take_cached(h, 3, f2, s2)
    assert len(f2) == 3 and s2[0] == -1 and s2[1] >= 0 and s2[2] >= 0  # query at 12 sees 5..12
    assert sorted(e[0] for e in entries) == [FULL] * 3 + [SLIDING] * 2


def test_caching_off_never_matches():
    bm = BlockManager(num_blocks=8, block_size=4, caching=False)
    h = block_hashes(list(range(9)), 4, SEED)
    full: list[int] = []
    bm.grow(full, [], 9)
    bm.register(h, full, [], 0, 2)
    bm.release(full, [])
    assert bm.match(h, 9) == 0 and not bm.cached and bm.available == 8


def test_reclaim_frees_what_nobody_owns():
    bm = BlockManager(num_blocks=6, block_size=4)
    kept: list[int] = []
    lost: list[int] = []
    bm.grow(kept, [], 8)
    bm.grow(lost, [], 12)  # its owner vanishes without a release
    h = block_hashes(list(range(12)), 4, SEED)
    bm.register(h, lost, [], 0, 1)
    bm.reclaim([kept])
    assert bm.used == 2 and bm.available == 4 and len(bm.lru) == 1  # the registered one stays cached


def test_forget_frees_unheld_cached_blocks_of_both_kinds_and_reports_them():
    bm = BlockManager(num_blocks=16, block_size=4, window=8)
    h = block_hashes(list(range(16)), 4, SEED)
    full: list[int] = []
    sw: list[int] = []
    bm.grow(full, sw, 16)
    bm.register(h, full, sw, 0, 4)
    keep: list[int] = []
    keep_sw: list[int] = []
    bm.take_cached(h, 1, keep, keep_sw)  # another request still reads block 0 (full and sliding)
    bm.release(full, sw)
    assert len(bm.cached) == 8 and bm.used == 2
    assert bm.forget(h + [b"\0" * 32]) == 6  # blocks 1..3 of both kinds; unknown hashes are ignored
    assert set(bm.cached) == {(FULL, h[0]), (SLIDING, h[0])}  # held: left alone, still findable
    assert bm.take_evicted() == h[1:]  # the router's index drops them like LRU evictions
    assert bm.available == 14 and len(bm.lru) == 0 and bm.used == 2
    bm.release(keep, keep_sw)
    assert bm.forget(h[:1]) == 2 and bm.cached == {} and bm.available == 16
