"""Every refusal over real HTTP, in OpenAI's error shape, with the status OpenAI clients expect:
400 naming the field, 401 API key, 403 admin key, 404 model/route, 405 method, 413 body size, 429 an API key
at its limit of requests in flight; and the openai client raising the matching exception class.
"""
from __future__ import annotations

import json

import httpx
import openai
import pytest
from tree import ADMIN, AUTH, Tree, wait_for

KEY = "api-secret"
LIMITED, OTHER = "key-limited-1", "key-other-2"  # auth.keys: at most one request in flight / no limit
KEYS = [{"name": "limited", "key": LIMITED, "max_concurrent": 1}, {"name": "other", "key": OTHER}]
M = "gpt-oss-tiny"
USER = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def tree():
    yield from Tree("--ranks", "1", "--api-key", KEY, "--admin-key", ADMIN,
                    config={"auth": {"keys": KEYS}}).running(timeout=240)


def post(tree, path: str, body, key: str | None = KEY) -> httpx.Response:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    return tree.post(path, content=body if isinstance(body, bytes) else json.dumps(body).encode(), headers=headers)


def assert_error(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return err


CHAT_BAD = [
    ({"messages": USER}, "model"),
    ({"model": M}, "messages"),
    ({"model": M, "messages": []}, "messages"),
    ({"model": M, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": M, "messages": [{"role": "user"}]}, "messages[0].content"),
    ({"model": M, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content[0]"),
    ({"model": M, "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"model": M, "messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"model": M, "messages": USER, "temperature": 2.5}, "temperature"),
    ({"model": M, "messages": USER, "temperature": "hot"}, "temperature"),
    ({"model": M, "messages": USER, "top_p": 0}, "top_p"),
    ({"model": M, "messages": USER, "max_tokens": 0}, "max_tokens"),
    ({"model": M, "messages": USER, "max_completion_tokens": 1.5}, "max_completion_tokens"),
    ({"model": M, "messages": USER, "n": 17}, "n"),
    ({"model": M, "messages": USER, "seed": 2**64}, "seed"),
    ({"model": M, "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": M, "messages": USER, "stop": [""]}, "stop"),
    ({"model": M, "messages": USER, "frequency_penalty": 3}, "frequency_penalty"),
    ({"model": M, "messages": USER, "presence_penalty": -2.5}, "presence_penalty"),
    ({"model": M, "messages": USER, "stream": "yes"}, "stream"),
    ({"model": M, "messages": USER, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": M, "messages": USER, "stream": True, "stream_options": {"usage": True}}, "stream_options.usage"),
    ({"model": M, "messages": USER, "logprobs": 1}, "logprobs"),
    ({"model": M, "messages": USER, "top_logprobs": 2}, "top_logprobs"),
    ({"model": M, "messages": USER, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"model": M, "messages": USER, "reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"model": M, "messages": USER, "tools": [{"type": "function", "function": {"name": "bad name"}}]},
     "tools[0].function.name"),
    ({"model": M, "messages": USER, "tools": [TOOL, TOOL]}, "tools"),
    ({"model": M, "messages": USER, "tool_choice": "required"}, "tool_choice"),
    ({"model": M, "messages": USER, "tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
    ({"model": M, "messages": USER, "tools": [TOOL],
      "tool_choice": {"type": "function", "function": {"name": "other"}}}, "tool_choice"),
    ({"model": M, "messages": USER, "parallel_tool_calls": "no"}, "parallel_tool_calls"),
    ({"model": M, "messages": USER, "response_format": {"type": "xml"}}, "response_format.type"),
    ({"model": M, "messages": USER, "response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"model": M, "messages": USER, "user": 5}, "user"),
    ({"model": M, "messages": USER, "ignore_eos": 1}, "ignore_eos"),
    ({"model": M, "messages": USER, "top_k": -1}, "top_k"),
    ({"model": M, "messages": USER, "max_token": 5}, "max_token"),  # a typo is refused, not ignored
]

COMPLETION_BAD = [
    ({"model": M}, "prompt"),
    ({"model": M, "prompt": ""}, "prompt"),
    ({"model": M, "prompt": []}, "prompt"),
    ({"model": M, "prompt": ["ok", 3]}, "prompt[1]"),
    ({"model": M, "prompt": [1, -2]}, "prompt"),
    ({"model": M, "prompt": [99999999]}, "prompt"),  # outside the vocabulary
    ({"model": M, "prompt": "x", "logprobs": True}, "logprobs"),
    ({"model": M, "prompt": "x", "logprobs": 21}, "logprobs"),
    ({"model": M, "prompt": "x", "echo": "yes"}, "echo"),
    ({"model": M, "prompt": "x", "suffix": "y"}, "suffix"),
    ({"model": M, "prompt": "x", "best_of": 2}, "best_of"),
]


@pytest.mark.parametrize("body,param", CHAT_BAD, ids=[p for _, p in CHAT_BAD])
def test_chat_field_errors_name_the_field(tree, body, param):
    assert_error(post(tree, "/v1/chat/completions", body), 400, param=param)


@pytest.mark.parametrize("body,param", COMPLETION_BAD, ids=[p for _, p in COMPLETION_BAD])
def test_completion_field_errors_name_the_field(tree, body, param):
    assert_error(post(tree, "/v1/completions", body), 400, param=param)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_invalid_json(tree, path):
    assert_error(post(tree, path, b"{not json"), 400, "invalid_json")
    assert_error(post(tree, path, b"[1, 2]"), 400, "invalid_json")


def test_context_too_long_names_both_counts(tree):
    client = tree.client(api_key=KEY)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=M, messages=[{"role": "user", "content": "hello " * 5000}])
    err = info.value.body
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages"
    assert "4096" in err["message"] and "tokens" in err["message"]
    r = post(tree, "/v1/completions", {"model": M, "prompt": [1] * 4000, "max_tokens": 200})
    msg = assert_error(r, 400, "context_length_exceeded", "prompt")["message"]
    assert "4000 tokens" in msg and "200 more" in msg and "4096" in msg


def test_body_too_large_is_413(tree):
    assert_error(post(tree, "/v1/chat/completions", b"{" + b" " * (5 << 20) + b"}"), 413)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_unknown_model_is_404(tree, path):
    body = {"model": "nope", "messages": USER, "prompt": "x"}
    body.pop("prompt" if "chat" in path else "messages")
    assert_error(post(tree, path, body), 404, "model_not_found", "model")
    with pytest.raises(openai.NotFoundError):
        tree.client(api_key=KEY).chat.completions.create(model="nope", messages=USER)


def test_unknown_route_404_and_wrong_method_405(tree):
    auth = {"Authorization": f"Bearer {KEY}"}
    assert_error(tree.get("/v1/nothing", headers=auth), 404, "not_found")
    assert_error(tree.get("/v1/chat/completions", headers=auth), 405)
    assert_error(tree.get("/v1/completions", headers=auth), 405)
    assert_error(httpx.delete(tree.url + "/v1/models", headers=auth), 405)


def test_api_key_401(tree):
    assert_error(post(tree, "/v1/chat/completions", {"model": M, "messages": USER}, key=None), 401)
    assert_error(post(tree, "/v1/completions", {"model": M, "prompt": "x"}, key="wrong"), 401)
    assert_error(tree.get("/v1/models"), 401)
    with pytest.raises(openai.AuthenticationError):
        tree.client(api_key="wrong").models.list()
    assert tree.client(api_key=KEY).models.list().data[0].id == M
    assert tree.get("/health").status_code == 200  # only /v1/* needs the API key


def test_admin_key_403(tree):
    assert_error(tree.get("/admin/actors"), 403)
    assert_error(tree.get("/admin/actors", headers={"Authorization": f"Bearer {KEY}"}), 403)  # API key is not enough
    assert tree.get("/admin/actors", headers=AUTH).status_code == 200


def test_openai_client_raises_bad_request_with_param(tree):
    with pytest.raises(openai.BadRequestError) as info:
        tree.client(api_key=KEY).chat.completions.create(model=M, messages=USER, temperature=5)
    assert info.value.body["param"] == "temperature"


def test_an_api_key_at_its_limit_gets_429_before_the_stream_and_every_end_gives_its_slot_back(tree):
    long = {"model": M, "prompt": "x", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    auth = {"Authorization": f"Bearer {LIMITED}"}
    with httpx.stream("POST", tree.url + "/v1/completions", json=long, headers=auth, timeout=30) as r:
        lines = (line for line in r.iter_lines() if line)  # kept: a dropped iterator closes the stream
        assert r.status_code == 200 and next(lines).startswith("data: ")  # admitted, streaming
        refused = post(tree, "/v1/completions", {"model": M, "prompt": "x", "max_tokens": 2}, key=LIMITED)
        err = assert_error(refused, 429, "key_limit")
        assert refused.headers["Retry-After"] == "1" and "limited" in err["message"] and LIMITED not in err["message"]
        for key in (OTHER, KEY):  # other keys are not held back by it
            assert post(tree, "/v1/completions", {"model": M, "prompt": "x", "max_tokens": 2}, key=key).status_code == 200
        assert '"finish_reason":null' in next(lines)  # still streaming: the refusal was not a race with its end
    # the client went away mid-stream: its slot comes back (once the front notices, at its next write)
    ok = {"model": M, "prompt": "x", "max_tokens": 2}
    wait_for(lambda: post(tree, "/v1/completions", ok, key=LIMITED).status_code == 200, 10, "slot after disconnect")
    assert post(tree, "/v1/completions", ok, key=LIMITED).status_code == 200  # after a finish too
    assert_error(post(tree, "/v1/completions", {**ok, "n": 2}, key=LIMITED), 429, "key_limit")  # each choice counts
    # a background response holds the slot until it ends; cancelling it gives it back
    bg = post(tree, "/v1/responses", {"model": M, "input": "x", "background": True, "max_output_tokens": 2000,
                                      "ignore_eos": True}, key=LIMITED).json()
    assert_error(post(tree, "/v1/completions", ok, key=LIMITED), 429, "key_limit")
    cancel = tree.post(f"/v1/responses/{bg['id']}/cancel", headers=auth)
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
    assert post(tree, "/v1/completions", ok, key=LIMITED).status_code == 200
