"""Prefix caching and prefix-aware routing end to end: a tree of two CPU ranks of its own (so what other
tests left in a shared tree's caches cannot blur the counts), the official openai client, live rank states."""
from __future__ import annotations

import pytest
from tree import ADMIN, AUTH, Tree


@pytest.fixture(scope="module")
def tree():
    yield from Tree("--ranks", "2", "--admin-key", ADMIN).running()


def test_shared_prefix_is_routed_to_one_rank_and_reused(tree):
    """Requests sharing a long system prompt go to the rank that holds it and reuse its cached blocks; a
    session keeps a conversation on its rank when the prompt cannot tell. Every user message differs, so no
    answer comes from the response cache. (Rank states are read live, not from the lagging load reports.)"""
    system = "You are a careful assistant. " * 60  # several hundred tokens: many whole KV blocks
    client = tree.client()

    def ask(content: str, **kw):
        messages = [{"role": "system", "content": system}] if not kw else []
        return client.chat.completions.create(model="gpt-oss-tiny", max_tokens=2, **kw,
                                              messages=messages + [{"role": "user", "content": content}])

    def ranks() -> dict[str, dict]:
        actors = tree.get("/admin/debug/bundle", headers=AUTH).json()["actors"]
        return {n: actors[n] for n in ("rank-0", "rank-1")}

    def served(before: dict, after: dict) -> list[str]:
        return [n for n in before if after[n]["prefix_queries"] > before[n]["prefix_queries"]]

    prompt_tokens = ask("question 0").usage.prompt_tokens
    before = ranks()
    for i in range(1, 4):
        ask(f"question {i}")
    after = ranks()
    (rank,) = served(before, after)  # all three on the rank holding the system prompt
    hits = after[rank]["prefix_hits"] - before[rank]["prefix_hits"]
    assert hits >= 3 * (prompt_tokens - 40)  # each reused all the system prompt's whole blocks
    assert after[rank]["cached_blocks"] > 0

    session = {"extra_headers": {"X-Session-ID": "s-1"}}
    ask("0 hi", **session)
    before = ranks()
    for i in range(1, 4):
        ask(f"{i} hi", **session)
    assert len(served(before, ranks())) == 1  # a short prompt the prefix cannot place: its session's rank
