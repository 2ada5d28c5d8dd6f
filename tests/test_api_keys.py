"""API keys and their limits on requests in flight (pure parts; tests/test_api_validation.py has them over
real HTTP): lookup by digest, 401, the limit, counts that survive a config reload, and the keys table's checks."""
from __future__ import annotations

import pytest

from gptoss.actors.front.api_keys import ApiKeys
from gptoss.actors.front.errors import APIError
from gptoss.supervisor.config import check_keys

AUTH = {"api_key": "single-key", "admin_key": None,
        "keys": [{"name": "team", "key": "team-key-1", "max_concurrent": 2}, {"name": "free", "key": "free-key-2"}]}


def test_keys_are_checked_and_limited_by_name():
    keys = ApiKeys()
    assert keys.check({"api_key": None, "keys": []}, "") is None  # none configured: open
    team = keys.check(AUTH, "Bearer team-key-1")
    assert team.name == "team" and keys.check(AUTH, "Bearer single-key").name == "api_key"
    for bad in ("", "Bearer ", "Bearer team-key-", "team-key-1"):
        with pytest.raises(APIError) as exc:
            keys.check(AUTH, bad)
        assert exc.value.status == 401
    keys.take(team, 2)
    with pytest.raises(APIError) as exc:
        keys.take(team, 1)
    assert exc.value.status == 429 and exc.value.retry_after == 1 and "team-key-1" not in exc.value.message
    keys.take(keys.check(AUTH, "Bearer free-key-2"), 100)  # no limit
    keys.give_back(team)
    reloaded = {**AUTH, "keys": [{**AUTH["keys"][0], "max_concurrent": 1}]}
    team = keys.check(reloaded, "Bearer team-key-1")  # a reload keeps the count in flight, by name
    with pytest.raises(APIError):
        keys.take(team, 1)
    keys.give_back(team)
    keys.take(team, 1)
    with pytest.raises(APIError):
        keys.check(reloaded, "Bearer free-key-2")  # dropped from the config: refused at once


@pytest.mark.parametrize("bad", [
    {"name": "x"}, [{"name": "", "key": "12345678"}], [{"name": "x", "key": "short"}],
    [{"name": "x", "key": "12345678", "max_concurrent": -1}], [{"name": "x", "key": "12345678", "max_concurrent": True}],
    [{"name": "x", "key": "12345678", "other": 1}],
    [{"name": "x", "key": "12345678"}, {"name": "x", "key": "87654321"}],
    [{"name": "x", "key": "12345678"}, {"name": "y", "key": "12345678"}],
])
def test_bad_key_tables_are_refused_without_showing_a_key(bad):
    with pytest.raises(ValueError) as exc:
        check_keys(bad)
    assert "12345678" not in str(exc.value) and "87654321" not in str(exc.value)
