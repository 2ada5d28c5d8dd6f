"""KV block manager for the paged full-attention layers (nano-vllm style, no prefix sharing).

The full-attention layers' K/V live in one pool of `num_blocks` blocks of `block_size` token positions.
Each request owns a block table (a plain list of block ids, kept on the request): position p of the
request is stored at `table[p // block_size] * block_size + p % block_size`. Blocks are taken on admission
and as the request grows (one new block every `block_size` decoded tokens) and returned when it finishes,
is aborted or is preempted. A free list (a stack, so recently freed blocks, likely still in cache, are
reused first) makes every operation O(blocks moved).
"""
from __future__ import annotations


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need at least one block of at least one token (got {num_blocks} x {block_size})")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free: list[int] = list(range(num_blocks - 1, -1, -1))

    @property
    def used(self) -> int:
        return self.num_blocks - len(self.free)

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def can_grow(self, table: list[int], n_tokens: int) -> bool:
        """Whether `table` can be extended to hold `n_tokens` positions from the free blocks."""
        return self.blocks_for(n_tokens) - len(table) <= len(self.free)

    def grow(self, table: list[int], n_tokens: int) -> list[int]:
        """Extend `table` in place to hold `n_tokens` positions; returns the blocks added (maybe none)."""
        need = self.blocks_for(n_tokens) - len(table)
        if need <= 0:
            return []
        if need > len(self.free):
            raise MemoryError(f"{need} KV blocks needed, {len(self.free)} free")
        new = self.free[-need:][::-1]
        del self.free[-need:]
        table.extend(new)
        return new

    def release(self, table: list[int]) -> None:
        """Give all of `table`'s blocks back and empty it."""
        self.free.extend(reversed(table))
        table.clear()

    def reclaim(self, owned: set[int]) -> None:
        """Free every block not in `owned` (recovery when tables were dropped without a release)."""
        self.free = [b for b in range(self.num_blocks - 1, -1, -1) if b not in owned]
