"""Every message that crosses a socket in the tree, and the one codec for them.

A frame is a msgpack map, the versioned envelope:
    {"v": 1, "t": type, "id": str, "src": actor, "ts": unix time, "tc": trace context map, "b": body map}
`tc` carries a request's W3C `traceparent` and `rid` (the front's request id) from front to router to rank
(ipc.tracing); it is empty on messages that belong to no request.
`decode` validates the whole frame (size, version, type, body field types, and the ranges of the values that
could hurt a receiver: non-finite floats, counts that allocate, ids outside what a tensor holds) before
anyone sees it, so an actor can treat any `MessageError` as "log and drop" and keep serving. msgpack never executes anything on
decode (unlike pickle), and we turn off ext types and cap container sizes so a hostile frame cannot blow up
memory.
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgpack

VERSION = 1
MAX_FRAME_BYTES = 8 * 1024 * 1024  # a 128k-token prompt of ints packs to ~640 KB; 8 MB leaves headroom

# Body schemas: field -> accepted python types. Fields listed are required; extra fields are allowed so a
# newer actor can add optional data without breaking an older peer (the version bumps for breaking changes).
_INT = (int,)
_NUM = (int, float)
_STR = (str,)
_MAP = (dict,)
_LIST = (list,)
_BOOL = (bool,)
_OPT_STR = (str, type(None))

SCHEMAS: dict[str, dict[str, tuple[type, ...]]] = {
    # actor <-> supervisor (supervisor ROUTER, actor DEALER with identity = actor name)
    "hello": {"name": _STR, "pid": _INT},
    "ready": {"name": _STR},
    "ping": {"seq": _INT},
    "pong": {"seq": _INT, "load": _MAP},
    "state_req": {},
    "state": {"state": _MAP},
    # control clients (gptoss-ctl, front's /admin) -> supervisor; a refused ctl_rep may carry `code` (str):
    # "busy" when another control operation is running (one at a time), "invalid" for a bad command
    "ctl": {"op": _STR, "args": _MAP},
    "ctl_rep": {"ok": _BOOL, "result": _MAP, "error": _OPT_STR},
    # supervisor -> actor after a config reload rolled the ranks: the new effective config; the actor applies
    # what it can change live and answers with the dotted keys it applied (or why it could not)
    "config_update": {"config": _MAP},
    "config_applied": {"applied": _LIST, "error": _OPT_STR},
    # supervisor PUB -> everyone: the whole tree's state, on every change and every heartbeat
    "tree": {"actors": _MAP, "stopping": _BOOL},
    # front -> router -> rank. params keys (all optional; the rank re-checks them): max_tokens, temperature,
    # top_p, top_k (int), seed, stop_token_ids, ignore_eos, frequency_penalty and presence_penalty (floats,
    # -2..2), logprobs (int 0..20 top alternatives per token, or None for no logprobs), logit_bias
    # ([[token_id, bias -100..100], ...]), grammar (Lark text, actors/rank/grammar.py). Optional `session`
    # (str, absent when none): the request's session (actors/front/session.py), for affinity, accounting and
    # evicting its prefix on the rank (actors/rank/session_blocks.py).
    "generate": {"req_id": _STR, "prompt_ids": _LIST, "params": _MAP},
    "abort": {"req_id": _STR},
    # router -> front; a reject may carry `retry_after` (int seconds, the Retry-After to give)
    "routed": {"req_id": _STR, "rank": _STR},
    "reject": {"req_id": _STR, "status": _INT, "message": _STR, "code": _STR},
    # rank -> front (PUSH/PULL, straight, no hop through the router): ONE message per engine step carrying
    # every request's new tokens, `items` = [[req_id, ids, finish or None], ...]; an item has a 4th element,
    # logprobs, only when its request asked: one entry per id, [chosen_logprob, [[token_id, logprob], ...]].
    # A request's last item (finish stop/length) has 5: [req_id, ids, finish, logprobs or None, cached], cached
    # = its prompt tokens the prefix cache supplied (usage's cached_tokens).
    # One envelope per step instead of one per request per step: at 32+ streams the per-message cost (encode,
    # send, receive, decode) was a real share of both processes' time.
    "tokens": {"items": _LIST},
    # rank -> front, on the same PUSH as its tokens (so it always comes first): the rank's queue took the
    # request. The front commits a 200 stream only after this (admission before the stream).
    "accepted": {"req_id": _STR},
    "failed": {"req_id": _STR, "status": _INT, "message": _STR, "code": _STR},
    # rank -> router. Also (optional): cached_blocks, prefix_queries, prefix_hits (tokens, cumulative),
    # prefix_seed (hex) and block_size (what the router's prefix index hashes prompts with), devices (GPUs
    # the rank spans) and evicted (64-bit hash prefixes of the blocks evicted from its prefix cache since
    # the last report).
    "load": {"rank": _STR, "running": _INT, "waiting": _INT, "draining": _BOOL,
             "kv_blocks_used": _INT, "kv_blocks_total": _INT, "tokens_per_s": _NUM},
    "finished": {"req_id": _STR},
    # memory guard PUB -> router, front, ranks, every interval and on every change (actors/memory_guard.py):
    # level = the tree's worst, ranks = {rank: {level, kv_used_frac, ...}}, sessions = {id: {tokens, rank,
    # idle_s, active}} (the largest, bounded), evict = {rank: [session ids whose cached prefix that rank frees]}
    "pressure": {"level": _STR, "host_used_frac": _NUM, "ranks": _MAP, "sessions": _MAP, "evict": _MAP},
    # front -> memory guard, when a request of a session ends: what it holds (prompt + output tokens) and where
    "session_use": {"session": _STR, "rank": _OPT_STR, "tokens": _INT, "active": _INT},
    # front <-> cache (request/reply, bounded by a timeout on the front side; a reply carries the ask's id)
    "cache_get": {"key": _STR},
    "cache_put": {"key": _STR, "value": _MAP},
    "cache_rep": {"key": _STR, "hit": _BOOL, "value": _MAP},
    # front <-> cache: the durable /v1/responses store; owner = pid of the front that may still finish it
    "store_put": {"response": _MAP, "messages": _LIST, "owner": _INT},
    "store_get": {"response_id": _STR},
    "store_delete": {"response_id": _STR},
    "store_rep": {"found": _BOOL, "response": _MAP, "messages": _LIST, "error": _OPT_STR},
    # every actor -> telemetry, once a second. counters/gauges: {series key: number} (ipc.instruments.key);
    # optional: hists {series key: [count per bucket..., sum, count]}, spans (ipc.tracing.to_wire lists),
    # pid (the reporting process, so telemetry tells a restarted actor's reports from its predecessor's)
    "metrics": {"counters": _MAP, "gauges": _MAP},
    # front <-> telemetry (ROUTER "telemetry_q"): /metrics text and the actors' last reports for /stats
    "scrape": {},
    "scrape_rep": {"text": _STR, "sources": _MAP},
}


class MessageError(ValueError):
    """A frame that is malformed, oversized, of an unknown version or type, or with a bad body."""


@dataclass(slots=True)
class Message:
    type: str
    body: dict[str, Any]
    src: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    ts: float = field(default_factory=time.time)
    trace: dict[str, Any] = field(default_factory=dict)


def make(type: str, src: str, trace: dict[str, Any] | None = None, id: str | None = None, **body: Any) -> Message:
    msg = Message(type=type, body=body, src=src, trace=trace or {})
    if id is not None:
        msg.id = id
    _check_body(type, body)
    return msg


def encode(msg: Message) -> bytes:
    _check_body(msg.type, msg.body)
    try:
        frame = msgpack.packb(
            {"v": VERSION, "t": msg.type, "id": msg.id, "src": msg.src, "ts": msg.ts, "tc": msg.trace, "b": msg.body},
            use_bin_type=True,
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise MessageError(f"{msg.type}: body cannot be packed: {exc}") from None
    if len(frame) > MAX_FRAME_BYTES:
        raise MessageError(f"{msg.type} frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}")
    return frame


def decode(frame: bytes) -> Message:
    if len(frame) > MAX_FRAME_BYTES:
        raise MessageError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        raw = msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=True,
            ext_hook=_no_ext,
            # msgpack turns ext -1 into a Timestamp without asking ext_hook; refuse it wherever it hides
            object_hook=_no_timestamp,
            list_hook=_no_timestamp,
        )
    except MessageError:
        raise
    except Exception as exc:  # noqa: BLE001 - msgpack raises several unrelated types for bad bytes
        raise MessageError(f"undecodable frame: {type(exc).__name__}: {exc}") from None
    if not isinstance(raw, dict):
        raise MessageError("frame is not a map")
    if type(raw.get("v")) is not int or raw["v"] != VERSION:
        raise MessageError(f"unknown version {raw.get('v')!r}")
    mtype = raw.get("t")
    if not isinstance(mtype, str) or mtype not in SCHEMAS:
        raise MessageError(f"unknown message type {mtype!r}")
    for key, types in (("id", _STR), ("src", _STR), ("ts", _NUM), ("tc", _MAP), ("b", _MAP)):
        if not isinstance(raw.get(key), types) or isinstance(raw.get(key), bool):
            raise MessageError(f"{mtype}: envelope field {key!r} missing or of wrong type")
    _check_body(mtype, raw["b"])
    return Message(type=mtype, body=raw["b"], src=raw["src"], id=raw["id"], ts=float(raw["ts"]), trace=raw["tc"])


def _check_body(mtype: str, body: dict[str, Any]) -> None:
    schema = SCHEMAS.get(mtype)
    if schema is None:
        raise MessageError(f"unknown message type {mtype!r}")
    for name, types in schema.items():
        value = body.get(name, _MISSING)
        if value is _MISSING:
            raise MessageError(f"{mtype}: body field {name!r} missing")
        # bool is an int subclass: an int field must not accept True/False silently.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise MessageError(f"{mtype}: body field {name!r} has type {type(value).__name__}")
    check = RANGES.get(mtype)
    if check is not None:
        try:
            check(body)
        except MessageError as exc:
            raise MessageError(f"{mtype}: {exc}") from None


# ---- ranges: a value of the right type can still hurt (inf in a sampler, 2**63 as a tensor index, a map
# that allocates without bound). One check per type that carries such values; the hot path (`tokens`) only
# gets its length checked here, the front checks each item alone so a bad one costs only itself.
MAX_IDS = 1 << 18            # prompt ids of one request (a 256k context); the frame limit binds first in practice
MAX_TOKEN_ID = (1 << 31) - 1  # token ids index an int32-sized vocabulary
MAX_ITEMS = 4096             # items of one tokens message (one per running request of a rank)
MAX_METRICS = 10_000         # entries of a counters or gauges map
MAX_LOAD_BYTES = 64 << 10    # a pong's load map, republished to every actor in each tree state
MAX_COUNT = 1 << 53          # counts in load reports and ids in sequence numbers: exact in a float
MAX_DEPTH = 32               # nesting of an opaque value (a cached response) that is JSON-encoded later


def _number(v: Any, name: str, lo: float, hi: float, integer: bool = False) -> None:
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if not ok or isinstance(v, bool) or not (math.isfinite(v) and lo <= v <= hi):
        raise MessageError(f"{name}={v!r} is not {'an integer' if integer else 'a number'} in [{lo}, {hi}]")


def _opt(params: dict[str, Any], name: str, lo: float, hi: float, integer: bool = False) -> None:
    if params.get(name) is not None:
        _number(params[name], f"params.{name}", lo, hi, integer)


def _ids(v: Any, name: str, most: int) -> None:
    if not isinstance(v, list) or len(v) > most or not all(
            type(t) is int and 0 <= t <= MAX_TOKEN_ID for t in v):
        raise MessageError(f"{name} must be at most {most} token ids in [0, {MAX_TOKEN_ID}]")


def _generate(b: dict[str, Any]) -> None:
    if not b["prompt_ids"]:
        raise MessageError("prompt_ids is empty")
    _ids(b["prompt_ids"], "prompt_ids", MAX_IDS)
    p = b["params"]
    _opt(p, "max_tokens", 1, MAX_IDS, integer=True)
    _opt(p, "temperature", 0, 100)
    _opt(p, "top_p", 0, 1)
    _opt(p, "top_k", 0, MAX_TOKEN_ID, integer=True)
    _opt(p, "seed", -(1 << 63), (1 << 64) - 1, integer=True)
    _opt(p, "frequency_penalty", -2, 2)
    _opt(p, "presence_penalty", -2, 2)
    _opt(p, "logprobs", 0, 20, integer=True)
    if p.get("stop_token_ids") is not None:
        _ids(p["stop_token_ids"], "params.stop_token_ids", 1024)
    if p.get("ignore_eos") is not None and not isinstance(p["ignore_eos"], bool):
        raise MessageError("params.ignore_eos must be a boolean")


def _status(b: dict[str, Any]) -> None:
    _number(b["status"], "status", 400, 599, integer=True)


def _load(b: dict[str, Any]) -> None:
    for name in ("running", "waiting", "kv_blocks_used", "kv_blocks_total"):
        _number(b[name], name, 0, MAX_COUNT, integer=True)
    _number(b["tokens_per_s"], "tokens_per_s", 0, MAX_COUNT)


def _numbers(v: dict[str, Any], name: str) -> None:
    """A metrics map: names to numbers (NaN allowed: Prometheus has it), bounded in size."""
    if len(v) > MAX_METRICS or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v.values()):
        raise MessageError(f"{name} must map at most {MAX_METRICS} names to numbers")


def _json_safe(v: Any, depth: int = 0) -> None:
    """An opaque value that will be JSON-encoded (orjson): no bytes, no non-finite floats, bounded nesting."""
    if depth > MAX_DEPTH:
        raise MessageError(f"value nested deeper than {MAX_DEPTH}")
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise MessageError("value has a non-string key")
            _json_safe(x, depth + 1)
    elif isinstance(v, list):
        for x in v:
            _json_safe(x, depth + 1)
    elif isinstance(v, float):
        if not math.isfinite(v):
            raise MessageError("value holds a non-finite float")
    elif isinstance(v, int) and not isinstance(v, bool):
        if not -(1 << 63) <= v < (1 << 64):
            raise MessageError("value holds an integer beyond 64 bits")
    elif not isinstance(v, (str, bool, type(None))):
        raise MessageError(f"value holds a {type(v).__name__}")


def _ping(b: dict[str, Any]) -> None:
    _number(b["seq"], "seq", 0, MAX_COUNT, integer=True)


def _pressure(b: dict[str, Any]) -> None:
    _number(b["host_used_frac"], "host_used_frac", 0, 1)


def _tokens(b: dict[str, Any]) -> None:
    if len(b["items"]) > MAX_ITEMS:
        raise MessageError(f"more than {MAX_ITEMS} items")


def _metrics(b: dict[str, Any]) -> None:
    _numbers(b["counters"], "counters")
    _numbers(b["gauges"], "gauges")


def _pong(b: dict[str, Any]) -> None:
    _ping(b)
    _json_safe(b["load"])
    if len(msgpack.packb(b["load"])) > MAX_LOAD_BYTES:
        raise MessageError(f"load map over {MAX_LOAD_BYTES} bytes")


def _session_use(b: dict[str, Any]) -> None:
    if len(b["session"]) > 512:  # the front's own bound on a session id
        raise MessageError("session id longer than 512")
    _number(b["tokens"], "tokens", 0, MAX_COUNT, integer=True)
    _number(b["active"], "active", 0, MAX_COUNT, integer=True)


RANGES: dict[str, Any] = {
    "session_use": _session_use,
    "generate": _generate,
    "reject": _status,
    "failed": _status,
    "load": _load,
    "ping": _ping,
    "pong": _pong,
    "pressure": _pressure,
    "tokens": _tokens,
    "metrics": _metrics,
    "cache_put": lambda b: _json_safe(b["value"]),
    "config_update": lambda b: _json_safe(b["config"]),
    "cache_rep": lambda b: _json_safe(b["value"]),
}


_MISSING = object()


def _no_ext(code: int, data: bytes) -> Any:
    raise MessageError(f"msgpack ext type {code} is not allowed")


def _no_timestamp(obj: Any) -> Any:
    values = obj.values() if isinstance(obj, dict) else obj
    if any(isinstance(v, msgpack.Timestamp) for v in values):
        raise MessageError("msgpack timestamps are not allowed")
    return obj
