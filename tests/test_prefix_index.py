"""The router's prefix index and rank choice (pure: no sockets): longest cached prefix, the busy threshold
(the profile's routing weights: two profiles route the same request differently), session affinity, long
prompts to a multi-GPU rank, evictions and bounds."""
from __future__ import annotations

from gptoss.actors.prefix_index import LONG_PROMPT_TOKENS, PrefixIndex, Prompt
from gptoss.actors.rank.block_manager import block_hashes
from gptoss.supervisor import config

SEED = b"\x01" * 32
BS = 16


def report(total: int = 1000, devices: int = 1, evicted: list[int] | None = None) -> dict:
    return {"prefix_seed": SEED.hex(), "block_size": BS, "kv_blocks_total": total, "devices": devices,
            "evicted": evicted or []}


def weights(profile: str = "balanced") -> dict[str, float]:
    return config.defaults()["profiles"][profile]["routing"]


def index(*ranks: str, profile: str = "balanced", **kw) -> PrefixIndex:
    ix = PrefixIndex(**weights(profile))
    for r in ranks:
        ix.report(r, report(**kw))
    return ix


SYSTEM = list(range(100, 100 + 64))  # 4 blocks


def test_longest_cached_prefix_wins():
    ix = index("a", "b")
    ix.routed("a", Prompt(SYSTEM[:32], None))
    ix.routed("b", Prompt(SYSTEM + [1, 2, 3], None))
    assert ix.order(Prompt(SYSTEM + [9] * 20, None), ["a", "b"], {})[0] == "b"  # 4 blocks beat 2
    assert ix.order(Prompt(SYSTEM[:40], None), ["a", "b"], {})[0] == "a"  # a tie (2 each): the least loaded
    assert ix.order(Prompt([7] * 64, None), ["b", "a"], {})[0] == "b"  # nothing cached: the least loaded


def test_a_much_busier_rank_loses_its_prefix_advantage():
    ix = index("a", "b")
    ix.routed("b", Prompt(SYSTEM, None))
    p = Prompt(SYSTEM + [5], None)
    w = weights()
    at = w["busy_factor"] * 3 + w["busy_slack"]
    assert ix.order(p, ["a", "b"], {"a": 3, "b": at})[0] == "b"  # at the threshold: still b
    assert ix.order(p, ["a", "b"], {"a": 3, "b": at + 1})[0] == "a"
    # KV pressure counts as load: b at the threshold with half its KV held is past it
    assert ix.order(p, ["a", "b"], {"a": 3, "b": at}, {"b": 0.5})[0] == "a"
    assert ix.order(p, ["a", "b"], {"a": 3, "b": at - w["pressure_weight"] * 0.5}, {"b": 0.5})[0] == "b"


def test_two_profiles_route_the_same_request_differently():
    """b holds the conversation's prefix and has 4 more requests in flight than a: latency_first balances
    load (a), quality_first follows the cached prefix (b); with KV pressure on b, latency_first leaves it
    sooner than balanced."""
    p = Prompt(SYSTEM + [5], None)
    picks = {}
    for profile in ("latency_first", "balanced", "quality_first"):
        ix = index("a", "b", profile=profile)
        ix.routed("b", Prompt(SYSTEM, None))
        picks[profile] = (ix.order(p, ["a", "b"], {"a": 2, "b": 6})[0],
                          ix.order(p, ["a", "b"], {"a": 1, "b": 1}, {"b": 0.4})[0])
    assert picks == {"latency_first": ("a", "a"), "balanced": ("b", "b"), "quality_first": ("b", "b")}


def test_session_keeps_a_conversation_when_the_prefix_cannot_tell():
    ix = index("a", "b")
    ix.routed("a", Prompt(SYSTEM, None))
    ix.routed("b", Prompt(SYSTEM, None))  # both hold the system prompt
    ix.routed("b", Prompt([1, 2, 3], "conv-1"))  # the session's last rank
    assert ix.order(Prompt(SYSTEM + [8] * 5, "conv-1"), ["a", "b"], {})[0] == "b"
    assert ix.order(Prompt(SYSTEM + [8] * 5, "conv-2"), ["a", "b"], {})[0] == "a"
    # a longer cached prefix elsewhere still wins over the session
    ix.routed("a", Prompt(SYSTEM + list(range(32)), None))
    assert ix.order(Prompt(SYSTEM + list(range(40)), "conv-1"), ["a", "b"], {})[0] == "a"


def test_long_prompts_go_to_the_multi_gpu_rank():
    ix = index("single")
    ix.report("pipe", report(devices=2))
    long_p, short_p = list(range(LONG_PROMPT_TOKENS)), list(range(100))
    assert ix.order(Prompt(long_p, None), ["single", "pipe"], {})[0] == "pipe"
    assert ix.order(Prompt(short_p, None), ["single", "pipe"], {})[0] == "single"
    assert ix.order(Prompt(long_p, None), ["single", "pipe"], {"pipe": 20})[0] == "single"  # much busier


def test_evictions_and_bounds():
    ix = index("a", "b", total=3)
    ix.routed("a", Prompt(SYSTEM, None))  # 4 blocks, a pool of 3: the oldest goes
    assert len(ix.ranks["a"].blocks) == 3
    hs = [int.from_bytes(h[:8], "big") for h in block_hashes(SYSTEM, BS, SEED)]
    ix.routed("a", Prompt(SYSTEM[:48], None))
    assert ix.order(Prompt(SYSTEM[:48], None), ["b", "a"], {})[0] == "a"
    ix.report("a", report(total=3, evicted=[hs[0]]))  # the rank evicted the first block: no prefix left
    assert ix.order(Prompt(SYSTEM[:48], None), ["b", "a"], {})[0] == "b"
    ix.forget("a")
    assert "a" not in ix.ranks


def test_bad_reports_and_prompts_are_harmless():
    ix = PrefixIndex(**weights())
    ix.report("a", {"prefix_seed": "not hex", "block_size": 16})
    ix.report("b", {"block_size": 16})
    assert ix.ranks == {}
    ix = index("a", "b")
    assert ix.order(Prompt([2**70] * 32, None), ["a", "b"], {})[0] == "a"  # not int64 ids: no preference
    assert ix.order(Prompt([], None), ["a"], {}) == ["a"]
