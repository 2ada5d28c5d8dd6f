"""The router's picture of which prompt prefixes each rank holds in its KV cache, and the rank choice from it.

What it knows: for every rank, the 64-bit prefixes of the block hashes (actors/rank/block_manager.py's
chain, with the seed and block size the rank reports) of the prompts we routed there, in LRU order, at
most as many as the rank's pool has blocks (it cannot cache more) and never more than MAX_BLOCKS; and the
blocks the rank reports it evicted, which are dropped. It is a hint, never a correctness matter: a
stale entry costs a cache miss on the rank, nothing else.

The choice, among the candidates the router would use anyway (ready, not draining, least loaded first):
1. a rank's load is its requests in flight plus `pressure_weight` x the share of its KV blocks held (the
   memory guard's kv_used_frac: a rank near full counts as that many more requests); a rank is "much busier"
   when its load exceeds `busy_factor` x the least loaded one's plus `busy_slack`; such ranks are only used
   when nothing else is (the router's own order applies then). These three are the profile's routing
   weights (configs/server_config.yaml `routing`): small ones balance load first (a cached prefix only
   decides between ranks about as busy), large ones follow cached prefixes through more load;
2. of the others, the one with the longest cached prefix of this prompt, in whole blocks;
3. when that cannot tell (no prefix cached anywhere, or a tie, e.g. every rank holds the system prompt):
   the rank this request's session went to last (the `session` field: X-Session-ID, prompt_cache_key or
   user), so a conversation stays where its history is;
4. else, for a prompt of at least LONG_PROMPT_TOKENS, a rank that spans several GPUs (a pipeline or
   tensor group: it has the memory and the compute for long prefills), least loaded first;
5. else the least loaded.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

from .rank.block_manager import block_hashes

LONG_PROMPT_TOKENS = 2048  # prompts this long prefer a multi-GPU rank
MAX_BLOCKS = 1 << 18  # per rank, whatever its pool: 2 MB of keys at most
MAX_SESSIONS = 1 << 16


class _Rank:
    def __init__(self, seed: bytes, block_size: int) -> None:
        self.seed, self.block_size = seed, block_size
        self.blocks: OrderedDict[int, None] = OrderedDict()  # hash prefix -> None, least recently routed first
        self.limit = MAX_BLOCKS
        self.devices = 1


class PrefixIndex:
    def __init__(self, busy_factor: float, busy_slack: float, pressure_weight: float) -> None:
        self.busy_factor, self.busy_slack, self.pressure_weight = busy_factor, busy_slack, pressure_weight
        self.ranks: dict[str, _Rank] = {}
        self.sessions: OrderedDict[str, str] = OrderedDict()  # session -> rank it last went to

    def report(self, rank: str, load: dict[str, Any]) -> None:
        """A rank's load report: its hashing parameters, pool size, GPU count and evictions."""
        seed, bs = load.get("prefix_seed"), load.get("block_size")
        try:
            seed = bytes.fromhex(seed)
        except (TypeError, ValueError):
            return  # a rank without prefix caching data: nothing to index
        if not isinstance(bs, int) or bs < 1:
            return
        r = self.ranks.get(rank)
        if r is None or (r.seed, r.block_size) != (seed, bs):
            r = self.ranks[rank] = _Rank(seed, bs)
        r.limit = min(MAX_BLOCKS, max(1, int(load.get("kv_blocks_total", MAX_BLOCKS))))
        r.devices = int(load.get("devices", 1))
        for h in load.get("evicted", ()):
            r.blocks.pop(h, None)
        while len(r.blocks) > r.limit:
            r.blocks.popitem(last=False)

    def forget(self, rank: str) -> None:
        """The rank is gone or restarting: its cache is empty."""
        self.ranks.pop(rank, None)

    def order(self, p: Prompt, candidates: list[str], busy: dict[str, int],
              kv: dict[str, float] | None = None) -> list[str]:
        """`candidates` (least loaded first) with the rank this request should go to moved to the front.
        busy: requests in flight per rank; kv: share of each rank's KV blocks held (0 when unknown)."""
        if len(candidates) < 2:
            return candidates
        load = {c: busy.get(c, 0) + self.pressure_weight * (kv or {}).get(c, 0.0) for c in candidates}
        least = min(load.values())
        ok = [c for c in candidates if load[c] <= self.busy_factor * least + self.busy_slack]
        score = {}
        for c in ok:
            r = self.ranks.get(c)
            n = 0
            if r is not None:
                for h in p.hashes(r):
                    if h not in r.blocks:
                        break
                    n += 1
            score[c] = n
        best = max(score.values())
        tied = [c for c in ok if score[c] == best]
        pick = tied[0]
        multi = [c for c in tied if c in self.ranks and self.ranks[c].devices > 1]
        if p.session is not None and self.sessions.get(p.session) in tied:
            pick = self.sessions[p.session]
        elif multi and len(p.tokens) >= LONG_PROMPT_TOKENS:
            pick = multi[0]
        return [pick] + [c for c in candidates if c != pick]

    def routed(self, rank: str, p: Prompt) -> None:
        """The request went to `rank`: its prompt's blocks will be cached there."""
        if p.session is not None:
            self.sessions[p.session] = rank
            self.sessions.move_to_end(p.session)
            if len(self.sessions) > MAX_SESSIONS:
                self.sessions.popitem(last=False)
        r = self.ranks.get(rank)
        if r is None:
            return
        for h in p.hashes(r):
            r.blocks[h] = None
            r.blocks.move_to_end(h)
        while len(r.blocks) > r.limit:
            r.blocks.popitem(last=False)


class Prompt:
    """One request's prompt as the index sees it; its block hashes are computed once per (seed, block size)."""

    def __init__(self, tokens: list[int], session: str | None) -> None:
        self.tokens, self.session = tokens, session
        self._memo: dict[tuple[bytes, int], list[int]] = {}

    def hashes(self, r: _Rank) -> list[int]:
        key = (r.seed, r.block_size)
        if key not in self._memo:
            try:
                self._memo[key] = [int.from_bytes(h[:8], "big") for h in block_hashes(self.tokens, r.block_size, r.seed)]
            except (OverflowError, TypeError):  # not int64 token ids: no preference (the rank refuses the request)
                self._memo[key] = []
        return self._memo[key]
