"""KV block manager of one rank: one pool of blocks for both kinds of gpt-oss layers, with prefix caching.

Pool (vLLM's hybrid KV cache manager, in small): every block is `block_size` token positions of one K/V
page per layer PAIR (a sliding-window layer and a full-attention layer share their storage, attention.py),
so a block serves either kind. A request holds two tables, kept on it: `blocks` (full layers: every
position 0..len) and `sw` (sliding layers: only the blocks its next queries can still see; the entries of
blocks that fell out of the 128-token window are released and set to -1). So a request costs ~len + window
positions of pool, as the per-slot rings it replaces did, and the sliding K/V before any point of a
sequence stays in the pool (cached) for reuse until it is evicted.

Prefix caching (vLLM's design, docs/design/prefix_caching.md): each complete block of a sequence has a
content hash chained over the token ids of all blocks up to it and a `seed` naming what else decides its
K/V (model, dtype, shard). Once a block's K/V are written (after the step that completes it), the full
block and the sliding block of that index are registered under (kind, hash). A block whose last holder
releases it keeps its content and registration and goes to an LRU list of cached free blocks; it is
evicted (registration dropped) when a new block is needed and no never-registered free block is left, or
when the memory guard names an idle session whose blocks they are (`forget`, scheduler.py).
A new request reuses the longest run of leading blocks whose full blocks are all registered AND whose
sliding blocks covering the window before the reuse point are too (sliding layers need exactly those to
continue); at least one token is always computed, so the last prompt token's logits come from a forward.
Registered blocks are never written again (writes start at the reuse point, a block boundary), so sharing
them is exact.

Reference counts make sharing safe: a block is free (and can be evicted) only at zero. Every operation is
O(blocks moved).
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque

FULL, SLIDING = 0, 1
EVICTED_KEPT = 4096  # evictions remembered for the next load report (the router's index); older ones drop


def block_hashes(tokens: list[int], block_size: int, seed: bytes, have: list[bytes] | None = None) -> list[bytes]:
    """The chained hashes of every complete block of `tokens`, extending `have` (the hashes of its first
    blocks, already computed) in place and returning it. sha256, not Python's hash: a prompt crafted to
    collide with another user's prefix would read that user's K/V."""
    out = [] if have is None else have
    parent = out[-1] if out else seed
    for j in range(len(out), len(tokens) // block_size):
        parent = hashlib.sha256(parent + array("q", tokens[j * block_size:(j + 1) * block_size]).tobytes()).digest()
        out.append(parent)
    return out


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, window: int = 0, caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need at least one block of at least one token (got {num_blocks} x {block_size})")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.window = window  # the sliding layers' window (0: no sliding layers)
        self.caching = caching
        self.ref = [0] * num_blocks
        self.key: list[tuple[int, bytes] | None] = [None] * num_blocks  # (kind, hash) a block is registered as
        self.cached: dict[tuple[int, bytes], int] = {}  # (kind, hash) -> block
        self.free: list[int] = list(range(num_blocks - 1, -1, -1))  # never registered (a stack: warm first)
        self.lru: OrderedDict[int, None] = OrderedDict()  # registered, unreferenced: oldest first
        self.evicted: deque[bytes] = deque(maxlen=EVICTED_KEPT)  # full-block hashes evicted since the last report

    @property
    def available(self) -> int:
        return len(self.free) + len(self.lru)

    @property
    def used(self) -> int:
        return self.num_blocks - self.available

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def first_visible(self, pos: int) -> int:
        """The first sliding block a query at `pos` can see (every block before it may go)."""
        return max(0, pos - self.window + 1) // self.block_size if self.window else 0

    def need(self, have_full: int, have_sw: int, n_tokens: int) -> int:
        """New blocks tables of these lengths (the sliding one already trimmed) need for positions up to
        `n_tokens`: every position's block of both kinds is written, blocks out of the window go later."""
        want = self.blocks_for(n_tokens)
        return max(0, want - have_full) + (max(0, want - have_sw) if self.window else 0)

    def fit(self, have_full: int, have_sw: int, taken: int = 0) -> int:
        """The most positions (from 0) tables of these lengths can grow to from the available blocks, less
        `taken` of them that are spoken for."""
        left = self.available - taken
        if not self.window:
            return (left + have_full) * self.block_size
        return (left + have_full + have_sw) // 2 * self.block_size

    def alone(self, n_tokens: int) -> int:
        """Blocks one request of `n_tokens` positions needs at least: all its full blocks, and the sliding
        blocks one query's window spans."""
        full = self.blocks_for(n_tokens)
        return full + (min(full, -(-(self.window - 1) // self.block_size) + 1) if self.window else 0)

    def _take(self) -> int:
        if self.free:
            b = self.free.pop()
        elif self.lru:
            b, _ = self.lru.popitem(last=False)
            kind, h = self.key[b]
            del self.cached[(kind, h)]
            self.key[b] = None
            if kind == FULL:
                self.evicted.append(h)
        else:
            raise MemoryError("no free KV block")
        self.ref[b] = 1
        return b

    def _hold(self, b: int) -> None:
        if self.ref[b] == 0:
            del self.lru[b]
        self.ref[b] += 1

    def _drop(self, b: int) -> None:
        self.ref[b] -= 1
        if self.ref[b] == 0:
            if self.key[b] is None:
                self.free.append(b)
            else:
                self.lru[b] = None

    def grow(self, full: list[int], sw: list[int], n_tokens: int) -> list[tuple[int, int, int]]:
        """Extend both tables in place to hold positions up to `n_tokens`; returns the entries added as
        (kind, index, block). The caller checked `need` against `available`."""
        added = []
        want = self.blocks_for(n_tokens)
        for kind, table in ((FULL, full), (SLIDING, sw)) if self.window else ((FULL, full),):
            while len(table) < want:
                b = self._take()
                added.append((kind, len(table), b))
                table.append(b)
        return added

    def trim(self, sw: list[int], start: int) -> None:
        """Release the sliding blocks no query from `start` on can see (they stay cached if registered)."""
        for j in range(min(self.first_visible(start), len(sw))):
            if sw[j] >= 0:
                self._drop(sw[j])
                sw[j] = -1

    def release(self, full: list[int], sw: list[int]) -> None:
        """Give back every block of both tables and empty them. Tail blocks first, so the LRU evicts a
        sequence's end before its (more widely shared) beginning."""
        for table in (sw, full):
            for b in reversed(table):
                if b >= 0:
                    self._drop(b)
            table.clear()

    def match(self, hashes: list[bytes], seq_len: int) -> int:
        """How many leading blocks of a sequence of `seq_len` tokens with these block hashes are cached and
        usable: all their full blocks, and the sliding blocks a query right after them can see."""
        top = 0
        limit = min(len(hashes), (seq_len - 1) // self.block_size)  # compute at least the last token
        while self.caching and top < limit and (FULL, hashes[top]) in self.cached:
            top += 1
        for n in range(top, 0, -1):
            if not self.window or all((SLIDING, hashes[j]) in self.cached
                                      for j in range(self.first_visible(n * self.block_size), n)):
                return n
        return 0

    def _hits(self, hashes: list[bytes], n: int) -> list[tuple[int, int, int]]:
        """(kind, index, block) of the n hit blocks: all full ones, the visible sliding ones."""
        out = [(FULL, j, self.cached[(FULL, hashes[j])]) for j in range(n)]
        if self.window:
            out += [(SLIDING, j, self.cached[(SLIDING, hashes[j])])
                    for j in range(self.first_visible(n * self.block_size), n)]
        return out

    def cached_free(self, hashes: list[bytes], n: int) -> int:
        """How many of the n hit blocks are unreferenced now (taking them makes them unavailable)."""
        return sum(self.ref[b] == 0 for _, _, b in self._hits(hashes, n))

    def take_cached(self, hashes: list[bytes], n: int, full: list[int], sw: list[int]) -> list[tuple[int, int, int]]:
        """Fill the empty tables with the n hit blocks (shared: ref counted); returns their entries."""
        hits = self._hits(hashes, n)
        if self.window:
            sw.extend([-1] * n)
        for kind, j, b in hits:
            self._hold(b)
            if kind == FULL:
                full.append(b)
            else:
                sw[j] = b
        return hits

    def register(self, hashes: list[bytes], full: list[int], sw: list[int], done: int, upto: int) -> None:
        """Blocks done..upto-1 of these tables now hold their final K/V: make them findable by hash. A
        content already registered under another block keeps that one (this copy is freed unregistered)."""
        if not self.caching:
            return
        for j in range(done, upto):
            for kind, table in ((FULL, full), (SLIDING, sw)):
                if j < len(table) and table[j] >= 0 and self.key[table[j]] is None:
                    k = (kind, hashes[j])
                    if k not in self.cached:
                        self.cached[k] = table[j]
                        self.key[table[j]] = k

    def reclaim(self, tables: list[list[int]]) -> None:
        """Recount holders from the tables still in use (after their owners were dropped without a release);
        every other block is free, still registered if it was (registered content is never rewritten)."""
        self.ref = [0] * self.num_blocks
        for t in tables:
            for b in t:
                if b >= 0:
                    self.ref[b] += 1
        self.free = [b for b in range(self.num_blocks - 1, -1, -1) if self.ref[b] == 0 and self.key[b] is None]
        self.lru = OrderedDict((b, None) for b in range(self.num_blocks) if self.ref[b] == 0 and self.key[b] is not None)

    def forget(self, hashes: list[bytes]) -> int:
        """Evict the cached blocks of these hashes (both kinds) that no request holds: unregistered and
        free at once, the full ones reported as evicted like LRU evictions. Held blocks are left alone (their
        holder still reads them; they stay findable). Returns how many blocks were freed."""
        n = 0
        for h in hashes:
            for kind in (FULL, SLIDING):
                b = self.cached.get((kind, h))
                if b is not None and self.ref[b] == 0:
                    del self.cached[(kind, h)]
                    del self.lru[b]
                    self.key[b] = None
                    self.free.append(b)
                    n += 1
                    if kind == FULL:
                        self.evicted.append(h)
        return n

    def take_evicted(self) -> list[bytes]:
        out = list(self.evicted)
        self.evicted.clear()
        return out
