"""Every message that crosses a socket in the tree, and the one codec for them.

A frame is a msgpack map, the versioned envelope:
    {"v": 1, "t": type, "id": str, "src": actor, "ts": unix time, "tc": trace context map, "b": body map}
`decode` validates the whole frame (size, version, type, body field types) before anyone sees it, so an
actor can treat any `MessageError` as "log and drop" and keep serving. msgpack never executes anything on
decode (unlike pickle), and we turn off ext types and cap container sizes so a hostile frame cannot blow up
memory.
"""
from __future__ import annotations

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
    # control clients (gptoss-ctl, front's /admin) -> supervisor
    "ctl": {"op": _STR, "args": _MAP},
    "ctl_rep": {"ok": _BOOL, "result": _MAP, "error": _OPT_STR},
    # supervisor PUB -> everyone: the whole tree's state, on every change and every heartbeat
    "tree": {"actors": _MAP, "stopping": _BOOL},
    # front -> router -> rank. params keys (all optional; the rank re-checks them): max_tokens, temperature,
    # top_p, top_k (int), seed, stop_token_ids, ignore_eos, frequency_penalty and presence_penalty (floats,
    # -2..2), logprobs (int 0..20 top alternatives per token, or None for no logprobs). Optional `session`
    # (str, absent when none): the request's session (actors/front/session.py), for affinity and accounting.
    "generate": {"req_id": _STR, "prompt_ids": _LIST, "params": _MAP},
    "abort": {"req_id": _STR},
    # router -> front; a reject may carry `retry_after` (int seconds, the Retry-After to give)
    "routed": {"req_id": _STR, "rank": _STR},
    "reject": {"req_id": _STR, "status": _INT, "message": _STR, "code": _STR},
    # rank -> front (PUSH/PULL, straight, no hop through the router): ONE message per engine step carrying
    # every request's new tokens, `items` = [[req_id, ids, finish or None], ...]; an item has a 4th element,
    # logprobs, only when its request asked: one entry per id, [chosen_logprob, [[token_id, logprob], ...]].
    # One envelope per step instead of one per request per step: at 32+ streams the per-message cost (encode,
    # send, receive, decode) was a real share of both processes' time.
    "tokens": {"items": _LIST},
    "failed": {"req_id": _STR, "status": _INT, "message": _STR, "code": _STR},
    # rank -> router
    "load": {"rank": _STR, "running": _INT, "waiting": _INT, "draining": _BOOL,
             "kv_blocks_used": _INT, "kv_blocks_total": _INT, "tokens_per_s": _NUM},
    "finished": {"req_id": _STR},
    # memory guard PUB -> router, front, ranks, every interval and on every change (actors/memory_guard.py):
    # level = the tree's worst, ranks = {rank: {level, kv_used_frac, ...}}, sessions = {id: {tokens, rank,
    # idle_s, active}} (the largest, bounded), evict = {rank: [session ids whose cached prefix to drop]}
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


_MISSING = object()


def _no_ext(code: int, data: bytes) -> Any:
    raise MessageError(f"msgpack ext type {code} is not allowed")


def _no_timestamp(obj: Any) -> Any:
    values = obj.values() if isinstance(obj, dict) else obj
    if any(isinstance(v, msgpack.Timestamp) for v in values):
        raise MessageError("msgpack timestamps are not allowed")
    return obj
