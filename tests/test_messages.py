"""The wire codec (ipc/messages.py) and the run directory (ipc/endpoints.py).

The contract under test: every message type round-trips; `decode` turns *any* bad frame into a
`MessageError` (never another exception type, never a crash), so an actor can log-and-drop it.
"""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import msgpack
import pytest
from gptoss.ipc import endpoints
from gptoss.ipc.messages import (
    MAX_FRAME_BYTES,
    SCHEMAS,
    VERSION,
    Message,
    MessageError,
    decode,
    encode,
    make,
)

# A value of each accepted python type, to build a valid body for any schema (so a new message type added
# to SCHEMAS is covered without touching this file).
_SAMPLE = {
    int: 7,
    float: 0.25,
    str: "rank-0",
    dict: {"k": [1, "two", 3.5, None, True], "nested": {"a": 1}},
    list: [1, 2, 3, 200_000],
    bool: True,
    type(None): None,
}
# The load message's KV and throughput fields, for tests that build one by hand.
_KV = {"kv_blocks_used": 0, "kv_blocks_total": 64, "tokens_per_s": 0.0}
# Candidate wrong values: for each field we try every one its schema does not accept.
_CANDIDATES = [True, False, 3, 2.5, "s", b"bytes", {"a": 1}, [1], None]


# Fields whose sample must also be in range (ipc.messages.RANGES).
_IN_RANGE = {"failed": {"status": 500}, "reject": {"status": 429}, "pressure": {"host_used_frac": 0.5},
             "metrics": {"counters": {"requests_total": 3}, "gauges": {"rss_bytes": 1.5e8}}}


def _valid_body(mtype: str) -> dict:
    return {**{name: _SAMPLE[types[0]] for name, types in SCHEMAS[mtype].items()}, **_IN_RANGE.get(mtype, {})}


def _accepted(value, types) -> bool:
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def _envelope(**over) -> dict:
    env = {"v": VERSION, "t": "ping", "id": "abc", "src": "supervisor", "ts": 1700000000.5, "tc": {},
           "b": {"seq": 1}}
    env.update(over)
    return env


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _rejects(frame: bytes, match: str | None = None) -> MessageError:
    """decode must raise MessageError and nothing else."""
    try:
        decode(frame)
    except MessageError as exc:
        if match is not None:
            assert match in str(exc), f"{exc!r} does not mention {match!r}"
        return exc
    except Exception as exc:  # noqa: BLE001 - the point is that nothing else escapes
        pytest.fail(f"decode raised {type(exc).__name__} instead of MessageError: {exc}")
    pytest.fail(f"decode accepted a bad frame: {frame[:80]!r}")


# ---- round trips ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mtype", sorted(SCHEMAS))
def test_round_trip_every_type(mtype):
    body = _valid_body(mtype)
    msg = make(mtype, "front", trace={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}, **body)
    out = decode(encode(msg))
    assert isinstance(out, Message)
    assert (out.type, out.body, out.src, out.id, out.ts, out.trace) == (
        msg.type, body, "front", msg.id, msg.ts, msg.trace)


def test_round_trip_realistic_messages():
    cases = [
        make("generate", "front", req_id="req-1", prompt_ids=list(range(4096)),
             params={"temperature": 0.7, "top_p": 1.0, "max_tokens": 64, "stop": ["<|return|>"]}),
        make("tokens", "rank-1", items=[["req-1", [200005, 17, 3], None], ["req-2", [], "stop"]]),
        # an item's optional 4th element, logprobs: one [chosen, [[id, logprob], ...]] per id
        make("tokens", "rank-1", items=[["req-1", [17, 3], None, [[-0.25, [[17, -0.25], [9, -1.5]]], [-3.0, []]]]]),
        make("generate", "front", req_id="req-2", prompt_ids=[1, 2],
             params={"temperature": 0.0, "top_k": 40, "frequency_penalty": 0.5, "presence_penalty": -1.0,
                     "logprobs": 5}),
        make("generate", "front", req_id="req-3", prompt_ids=[1], params={"logprobs": None}),
        make("load", "rank-0", rank="rank-0", running=3, waiting=1, draining=False, kv_blocks_used=12,
             kv_blocks_total=4096, tokens_per_s=812.5),
        make("load", "rank-0", rank="rank-0", running=0, waiting=0, draining=False, kv_blocks_used=0,
             kv_blocks_total=4096, tokens_per_s=0),  # an idle rank may report an int rate
        make("ctl_rep", "supervisor", ok=False, result={}, error="no such rank"),
        make("pressure", "memory_guard", level="elevated", host_used_frac=1, ranks={}, sessions={}, evict={}),  # int: a number
        make("reject", "router", req_id="r", status=429, message="overloaded", code="rate_limit_exceeded"),
        make("state_req", "supervisor"),
        make("hello", "cache", id="fixed-id", name="cache", pid=os.getpid()),
    ]
    for msg in cases:
        out = decode(encode(msg))
        assert out == msg
    assert cases[-1].id == "fixed-id"


def test_extra_body_fields_are_kept():
    # Forward compatibility: a newer peer may add optional fields.
    msg = make("ping", "supervisor", seq=3, sent_at=12.5)
    assert decode(encode(msg)).body == {"seq": 3, "sent_at": 12.5}


def test_decode_accepts_an_int_timestamp_as_float():
    out = decode(_pack(_envelope(ts=1700000000)))
    assert out.ts == 1700000000.0 and isinstance(out.ts, float)


# ---- ranges: schema-valid values that would hurt the receiver --------------------------------------------

_GEN = {"req_id": "r", "prompt_ids": [1, 2]}


def _nested(depth: int) -> list:
    v: list = [1]
    for _ in range(depth):
        v = [v]
    return v

_LOAD = {"rank": "rank-0", "running": 1, "waiting": 0, "draining": False, **_KV}


@pytest.mark.parametrize("mtype,body,match", [
    ("generate", {**_GEN, "params": {"logprobs": float("inf")}}, "logprobs"),
    ("generate", {**_GEN, "params": {"logprobs": 21}}, "logprobs"),
    ("generate", {**_GEN, "params": {"temperature": float("nan")}}, "temperature"),
    ("generate", {**_GEN, "params": {"temperature": float("inf")}}, "temperature"),
    ("generate", {**_GEN, "params": {"top_p": -0.5}}, "top_p"),
    ("generate", {**_GEN, "params": {"frequency_penalty": 1e308 * 10}}, "frequency_penalty"),
    ("generate", {**_GEN, "params": {"max_tokens": 2**62}}, "max_tokens"),
    ("generate", {**_GEN, "params": {"max_tokens": True}}, "max_tokens"),
    ("generate", {**_GEN, "params": {"top_k": -1}}, "top_k"),
    ("generate", {**_GEN, "params": {"seed": 2.5}}, "seed"),
    ("generate", {**_GEN, "params": {"stop_token_ids": [-1]}}, "stop_token_ids"),
    ("generate", {**_GEN, "params": {"stop_token_ids": list(range(2000))}}, "stop_token_ids"),
    ("generate", {**_GEN, "params": {"ignore_eos": "yes"}}, "ignore_eos"),
    ("generate", {"req_id": "r", "prompt_ids": [], "params": {}}, "empty"),
    ("generate", {"req_id": "r", "prompt_ids": [2**40], "params": {}}, "prompt_ids"),
    ("generate", {"req_id": "r", "prompt_ids": [1, "2"], "params": {}}, "prompt_ids"),
    ("generate", {"req_id": "r", "prompt_ids": [1, 2.0], "params": {}}, "prompt_ids"),
    ("load", {**_LOAD, "running": -1}, "running"),
    ("load", {**_LOAD, "kv_blocks_total": 2**60}, "kv_blocks_total"),
    ("load", {**_LOAD, "tokens_per_s": float("nan")}, "tokens_per_s"),
    ("reject", {"req_id": "r", "status": 200, "message": "m", "code": "c"}, "status"),
    ("failed", {"req_id": "r", "status": 2**63, "message": "m", "code": "c"}, "status"),
    ("ping", {"seq": -5}, "seq"),
    ("pong", {"seq": 1, "load": {"x": float("nan")}}, "non-finite"),
    ("pong", {"seq": 1, "load": {"x": "y" * (70 << 10)}}, "load map"),
    ("pressure", {"level": "ok", "host_used_frac": float("inf"), "ranks": {}, "sessions": {}, "evict": {}},
     "host_used_frac"),
    ("tokens", {"items": [["r", [1], None]] * 5000}, "items"),
    ("metrics", {"counters": {"a": "x"}, "gauges": {}}, "counters"),
    ("metrics", {"counters": {}, "gauges": {f"g{i}": 1 for i in range(10_001)}}, "gauges"),
    ("cache_put", {"key": "k", "value": {"b": b"bytes"}}, "bytes"),
    ("cache_put", {"key": "k", "value": {"f": float("nan")}}, "non-finite"),
    ("cache_put", {"key": "k", "value": {"x": _nested(40)}}, "nested"),
    ("cache_rep", {"key": "k", "hit": True, "value": {"b": b"bytes"}}, "bytes"),
])
def test_out_of_range_values_are_rejected_on_decode_and_make(mtype, body, match):
    _rejects(_pack(_envelope(t=mtype, b=body)), match)
    with pytest.raises(MessageError, match=match):
        make(mtype, "front", **body)


def test_in_range_edge_values_pass():
    for params in ({"logprobs": 20, "top_p": 1, "temperature": 0, "seed": -(2**63), "max_tokens": 1,
                    "stop_token_ids": [0, 2**31 - 1], "frequency_penalty": -2, "presence_penalty": 2},
                   {"seed": 2**64 - 1, "logprobs": None, "top_k": None}):
        decode(encode(make("generate", "front", req_id="r", prompt_ids=[0, 2**31 - 1], params=params)))
    decode(encode(make("metrics", "front", counters={"a": 1}, gauges={"b": float("nan")})))  # Prometheus has NaN
    decode(encode(make("pong", "rank-0", seq=1, load={"running": 1, "gpu": {"0": {"free": 2.5e9}}})))


# ---- garbage ----------------------------------------------------------------------------------------------

def test_random_garbage_is_rejected():
    rng = random.Random(20240805)
    for _ in range(3000):
        n = rng.choice((0, 1, 2, 3, rng.randrange(4, 64), rng.randrange(64, 2048)))
        _rejects(rng.randbytes(n))


def test_every_truncation_of_a_valid_frame_is_rejected():
    frame = encode(make("generate", "front", req_id="r-1", prompt_ids=[1, 300, 70000, 2**31 - 1],
                        params={"temperature": 0.5, "stop": ["x"]}))
    decode(frame)  # the whole frame is fine
    for n in range(len(frame)):
        _rejects(frame[:n])


def test_trailing_bytes_after_a_valid_frame_are_rejected():
    _rejects(encode(make("ping", "s", seq=1)) + b"\x00")


def test_mutated_frames_decode_or_raise_message_error_only():
    base = encode(make("load", "rank-0", rank="rank-0", running=3, waiting=0, draining=False, **_KV))
    rng = random.Random(7)
    outcomes = {"ok": 0, "rejected": 0}
    for _ in range(3000):
        frame = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        try:
            out = decode(bytes(frame))
        except MessageError:
            outcomes["rejected"] += 1
            continue
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"{type(exc).__name__} escaped decode for {bytes(frame)!r}: {exc}")
        # Whatever got through passed validation: its body matches the schema.
        assert out.type in SCHEMAS
        for name, types in SCHEMAS[out.type].items():
            assert _accepted(out.body[name], types)
        outcomes["ok"] += 1
    assert outcomes["rejected"] > 0


def test_deeply_nested_frames_are_rejected_not_recursion_errors():
    _rejects(b"\x91" * 200_000 + b"\xc0")  # [[[[...nil...]]]]
    _rejects(b"\x81\xa1a" * 200_000 + b"\xc0")  # {"a": {"a": ...}}


@pytest.mark.parametrize("obj", [[1, 2, 3], "a string", 42, 1.5, None, True, b"bytes", []],
                         ids=repr)
def test_non_map_frames_are_rejected(obj):
    _rejects(_pack(obj), "not a map")


def test_non_string_map_keys_are_rejected():
    _rejects(_pack({1: "x", "v": VERSION}))
    body_with_int_key = _envelope(b={"seq": 1, 5: "x"})
    _rejects(_pack(body_with_int_key))


# ---- envelope ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [0, 2, -1, "1", None, [1], 1.5])
def test_wrong_version_is_rejected(version):
    _rejects(_pack(_envelope(v=version)), "version")


def test_missing_version_is_rejected():
    env = _envelope()
    del env["v"]
    _rejects(_pack(env), "version")


def test_bool_version_is_rejected():
    _rejects(_pack(_envelope(v=True)), "version")


@pytest.mark.parametrize("mtype", ["nope", "", "PING", 5, None, ["ping"]], ids=repr)
def test_unknown_type_is_rejected(mtype):
    _rejects(_pack(_envelope(t=mtype)), "type")


def test_missing_type_is_rejected():
    env = _envelope()
    del env["t"]
    _rejects(_pack(env), "type")


_BAD_ENVELOPE = {
    "id": [5, None, b"raw", ["a"]],
    "src": [5, None, b"raw", {}],
    "ts": ["now", None, [1.0], {}],
    "tc": [[], "00-abc", None, 3],
    "b": [[], "body", None, 1],
}


@pytest.mark.parametrize("key", sorted(_BAD_ENVELOPE))
def test_envelope_field_missing_or_wrong_type_is_rejected(key):
    env = _envelope()
    del env[key]
    _rejects(_pack(env), repr(key))
    for bad in _BAD_ENVELOPE[key]:
        _rejects(_pack(_envelope(**{key: bad})), repr(key))


def test_bool_timestamp_is_rejected():
    _rejects(_pack(_envelope(ts=True)))


# ---- body -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mtype", sorted(t for t in SCHEMAS if SCHEMAS[t]))
def test_missing_body_field_is_rejected(mtype):
    for name in SCHEMAS[mtype]:
        body = _valid_body(mtype)
        del body[name]
        _rejects(_pack(_envelope(t=mtype, b=body)), repr(name))
        with pytest.raises(MessageError, match=repr(name)):
            make(mtype, "x", **body)


@pytest.mark.parametrize("mtype", sorted(t for t in SCHEMAS if SCHEMAS[t]))
def test_wrong_typed_body_field_is_rejected(mtype):
    tried = 0
    for name, types in SCHEMAS[mtype].items():
        for bad in _CANDIDATES:
            if _accepted(bad, types):
                continue
            body = {**_valid_body(mtype), name: bad}
            _rejects(_pack(_envelope(t=mtype, b=body)), repr(name))
            with pytest.raises(MessageError):
                make(mtype, "x", **body)
            tried += 1
    assert tried > 0


@pytest.mark.parametrize("mtype,field", [("ping", "seq"), ("hello", "pid"), ("load", "running"),
                                         ("load", "kv_blocks_used"), ("load", "kv_blocks_total"),
                                         ("reject", "status"), ("failed", "status")])
def test_bool_is_not_an_int(mtype, field):
    assert SCHEMAS[mtype][field] == (int,)
    body = {**_valid_body(mtype), field: True}
    _rejects(_pack(_envelope(t=mtype, b=body)), repr(field))
    with pytest.raises(MessageError, match="bool"):
        make(mtype, "x", **body)
    msg = Message(type=mtype, body=body, src="x")  # bypassing make(): encode still checks
    with pytest.raises(MessageError):
        encode(msg)


def test_bool_is_accepted_where_the_schema_says_bool():
    out = decode(encode(make("load", "rank-0", rank="rank-0", running=0, waiting=0, draining=True, **_KV)))
    assert out.body["draining"] is True
    with pytest.raises(MessageError):
        make("load", "rank-0", rank="rank-0", running=0, waiting=0, draining=1, **_KV)  # an int is not a bool


def test_encode_and_make_reject_unknown_types():
    with pytest.raises(MessageError):
        make("nope", "x")
    with pytest.raises(MessageError):
        encode(Message(type="nope", body={}))


# ---- size -------------------------------------------------------------------------------------------------

def _frame_of_exact_size(size: int) -> bytes:
    """A valid `cache_put` frame of exactly `size` bytes (padding in a str32, whose header size is fixed)."""
    def build(n: int) -> Message:
        return Message(type="cache_put", body={"key": "k", "value": {"pad": "x" * n}}, src="front",
                       id="0" * 32, ts=1.0)
    probe = 1 << 20
    overhead = len(encode(build(probe))) - probe
    msg = build(size - overhead)
    return msg


def test_frame_at_the_limit_passes_and_one_byte_more_fails():
    at_limit = _frame_of_exact_size(MAX_FRAME_BYTES)
    frame = encode(at_limit)
    assert len(frame) == MAX_FRAME_BYTES
    assert decode(frame).body == at_limit.body

    over = _frame_of_exact_size(MAX_FRAME_BYTES + 1)
    with pytest.raises(MessageError, match="exceeds"):
        encode(over)
    # The same frame, packed by hand (a hostile or buggy peer), is refused on decode.
    raw = _pack({"v": VERSION, "t": over.type, "id": over.id, "src": over.src, "ts": over.ts, "tc": {},
                 "b": over.body})
    assert len(raw) == MAX_FRAME_BYTES + 1
    _rejects(raw, "exceeds")


def test_oversized_garbage_is_rejected_before_parsing():
    _rejects(b"\x00" * (MAX_FRAME_BYTES + 1), "exceeds")


def test_oversized_generate_cannot_be_encoded():
    with pytest.raises(MessageError, match="exceeds"):
        encode(make("generate", "front", req_id="r", prompt_ids=[1], params={"pad": "x" * MAX_FRAME_BYTES}))


def test_declared_length_beyond_the_frame_is_rejected():
    # str32 header claiming 4 GiB with 3 bytes behind it: msgpack must not allocate, we must not crash.
    _rejects(b"\xdb\xff\xff\xff\xffabc")
    _rejects(b"\xdd\xff\xff\xff\xff")  # array32 of 4G elements
    _rejects(b"\xdf\xff\xff\xff\xff")  # map32 of 4G pairs


# ---- ext types --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [0, 5, 127])
def test_ext_types_are_rejected(code):
    ext = msgpack.ExtType(code, b"\x01\x02\x03")
    _rejects(_pack(_envelope(b={"seq": 1, "x": ext})), "ext")
    _rejects(_pack(_envelope(tc={"x": ext})), "ext")
    _rejects(_pack(ext), "ext")


@pytest.mark.parametrize("code", [-2, -5, -128])
def test_reserved_negative_ext_types_are_rejected(code):
    # msgpack.ExtType refuses negative codes, so splice a raw fixext1 (0xd4, code, 1 byte) into a frame.
    ext = b"\xd4" + code.to_bytes(1, "big", signed=True) + b"\x01"
    frame = _pack(_envelope(b={"seq": 1, "x": "MARK"}))
    assert frame.count(b"\xa4MARK") == 1
    _rejects(frame.replace(b"\xa4MARK", ext), "ext")
    _rejects(ext, "ext")


def test_timestamp_ext_is_rejected():
    ts = msgpack.Timestamp(1, 0)
    _rejects(_pack(_envelope(t="generate", b={"req_id": "r", "prompt_ids": [1], "params": {"temperature": ts}})))


def test_timestamp_ext_in_a_typed_field_is_rejected():
    # Where the schema names a type, a Timestamp cannot pass as it.
    _rejects(_pack(_envelope(ts=msgpack.Timestamp(1, 0))))
    _rejects(_pack(_envelope(b={"seq": msgpack.Timestamp(1, 0)})))


# ---- endpoints --------------------------------------------------------------------------------------------

def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_prepare_run_dir_creates_a_private_dir(tmp_path):
    run = endpoints.prepare_run_dir(tmp_path / "run")
    assert run.is_dir()
    assert _mode(run) == 0o700
    assert run == (tmp_path / "run").absolute()


def test_prepare_run_dir_fixes_an_open_dir(tmp_path):
    run = tmp_path / "open"
    run.mkdir()
    os.chmod(run, 0o755)
    assert _mode(run) == 0o755
    endpoints.prepare_run_dir(run)
    assert _mode(run) == 0o700


def test_prepare_run_dir_is_idempotent(tmp_path):
    first = endpoints.prepare_run_dir(tmp_path / "r")
    (first / "marker").write_text("x")
    second = endpoints.prepare_run_dir(tmp_path / "r")
    assert second == first and (second / "marker").read_text() == "x" and _mode(second) == 0o700


def test_prepare_run_dir_rejects_a_path_too_long_for_sun_path(tmp_path):
    longest_name = max(endpoints.SOCKETS.values(), key=len)
    fits = endpoints.SUN_PATH_MAX - len(longest_name) - 1  # "/" between dir and socket file
    base = str(tmp_path.absolute())
    ok_dir = Path(base + "/" + "a" * (fits - len(base) - 1))
    assert len(str(ok_dir / longest_name)) == endpoints.SUN_PATH_MAX
    endpoints.prepare_run_dir(ok_dir)
    too_long = Path(str(ok_dir) + "b")
    with pytest.raises(ValueError, match="too long"):
        endpoints.prepare_run_dir(too_long)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to make a directory owned by someone else")
def test_prepare_run_dir_refuses_a_dir_owned_by_another_user(tmp_path):
    run = tmp_path / "theirs"
    run.mkdir(mode=0o700)
    os.chown(run, 54321, 54321)
    with pytest.raises(PermissionError):
        endpoints.prepare_run_dir(run)


def test_endpoints_name_ipc_paths_in_the_run_dir(tmp_path):
    for name, fname in endpoints.SOCKETS.items():
        assert endpoints.path(tmp_path, name) == tmp_path / fname
        assert endpoints.endpoint(tmp_path, name) == f"ipc://{tmp_path / fname}"
    assert len(set(endpoints.SOCKETS.values())) == len(endpoints.SOCKETS)
    with pytest.raises(KeyError):
        endpoints.endpoint(tmp_path, "nope")
