"""Session ids: the one rule (header, then prompt_cache_key, then user) and its way onto the generate message."""
from __future__ import annotations

import pytest

from gptoss.actors.front.errors import APIError
from gptoss.actors.front.session import session_id
from gptoss.actors.front.streams import Streams


def test_header_wins_then_prompt_cache_key_then_user():
    body = {"prompt_cache_key": "pck", "user": "u"}
    assert session_id({"X-Session-ID": " s1 "}, body) == "s1"
    assert session_id({}, body) == "pck"
    assert session_id({}, {"user": "u"}) == "u"
    assert session_id({}, {}) is None
    assert session_id({}, {"user": ""}) is None


@pytest.mark.parametrize("bad", ["", "   ", "x" * 257])
def test_bad_header_is_a_400_naming_it(bad):
    with pytest.raises(APIError) as exc:
        session_id({"X-Session-ID": bad}, {})
    assert exc.value.status == 400 and exc.value.param == "X-Session-ID"


def test_streams_hand_the_session_to_the_generate_sender():
    sent = []
    streams = Streams(lambda *a: sent.append(a) or True, lambda req_id: None, 10.0, 10.0)
    streams.submit([1, 2], {}, "conv-7")
    streams.submit([1, 2], {})
    assert [a[3] for a in sent] == ["conv-7", None]
