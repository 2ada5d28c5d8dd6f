"""The rank's table of the prefix blocks each session registered: what an eviction may free, and its bound."""
from __future__ import annotations

from gptoss.actors.rank.session_blocks import SessionBlocks


def test_a_session_takes_only_the_hashes_no_live_session_shares():
    t = SessionBlocks(limit=100)
    t.record("a", [b"sys", b"a1"])
    t.record("b", [b"sys", b"b1"])
    t.record("a", [b"sys", b"a1", b"a2"])  # its next turn extends the conversation
    assert t.take("a") == [b"a1", b"a2"]  # the shared system prompt stays for b
    assert t.take("a") == [] and len(t) == 1
    assert sorted(t.take("b")) == [b"b1", b"sys"]
    assert t.size == 0 and t.holders == {}


def test_bounded_over_all_sessions_least_recently_used_first():
    t = SessionBlocks(limit=4)
    t.record("old", [b"1", b"2"])
    t.record("new", [b"3", b"4"])
    t.record("old", [b"1"])  # used again: now the most recent
    t.record("third", [b"5"])
    assert "new" not in t.sessions and t.size == 3  # "new" was the least recently used
    assert t.take("new") == []
